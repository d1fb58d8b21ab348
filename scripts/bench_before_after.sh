#!/bin/bash
# Every speed benchmark at an earlier commit and on the working tree, in turn, alone on the machine:
#     bash scripts/bench_before_after.sh COMMIT > runs/bench.txt
# The earlier commit is checked out in a temporary worktree that shares this checkout's .venv and runs/ (the
# benchmarks read runs/lm-small and runs/data); it is removed at the end.
set -euo pipefail
before=${1:?usage: bash scripts/bench_before_after.sh COMMIT}
here=$(pwd)
tree=$(mktemp -d)/before
git worktree add -q --detach "$tree" "$before"
trap 'git -C "$here" worktree remove --force "$tree"' EXIT
ln -s "$here/.venv" "$tree/.venv"
ln -s "$here/runs" "$tree/runs"
for side in before after; do
  dir=$here; [ "$side" = before ] && dir=$tree
  for bench in "decode" "score" "teacher" "train --presets small --loss-steps 0 --rounds 8"; do
    echo "== $side ($(git -C "$dir" log --oneline -1 | cut -c1-7)): python -m benchmarks $bench"
    (cd "$dir" && PYTHONPATH=. .venv/bin/python -m benchmarks $bench 2>&1 | grep -v -e Converting -e "Loading weights" | tail -9)
  done
done
