#!/usr/bin/env bash
# Prepare what scripts/gpu_run.sh needs on the GPU machine (which has no network and no ../shared): the full CHILDES
# pretraining split, tokenized (train.bin/val.bin, uint16), its tokenizer and prompts, and the evaluation files, in
# gpu_carry/ (git-ignored; the GPU machine's checkout needs it at the same place, or GPU_CARRY pointing at it).
#
#   scripts/gpu_prepare.sh ../shared/data          # builds runs/data-full first if missing (CPU, several minutes)
#
# GPU_PREPARE_CHILDES (default SHARED/childes/xml) and GPU_PREPARE_DATA (default runs/data-full) change the inputs,
# GPU_CARRY (default gpu_carry) the output; the smoke test of gpu_run.sh uses them with the embedded sample.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:?usage: scripts/gpu_prepare.sh SHARED_DATA_DIR (e.g. ../shared/data)}
DATA=${GPU_PREPARE_DATA:-runs/data-full}
CHILDES=${GPU_PREPARE_CHILDES:-$SHARED/childes/xml}
PY=${PYTHON:-.venv/bin/python}
CARRY=${GPU_CARRY:-gpu_carry}

"$PY" train_lm.py --data "$DATA" --childes "$CHILDES" --prepare-only
rm -rf "$CARRY"
mkdir -p "$CARRY/data"
cp "$DATA"/{train.bin,val.bin,tokenizer.model,stats.json} "$CARRY/data/"
head -n 200 "$DATA/prompts.txt" > "$CARRY/data/prompts.txt"  # the runs print replies to the first few
# The paper's dialogue minimal pairs (words and tokens), BLiMP and Zorro, in the layout evaluate.py --eval-data reads.
eval_files=(paper/dpo/huggingface_dpo_format_eval.json paper/dpo/tok_pairs_no_overlap_1.csv
            eval/babylm2025/blimp_filtered eval/zorro)
present=()
for f in "${eval_files[@]}"; do [ -e "$SHARED/$f" ] && present+=("$f"); done
[ ${#present[@]} -gt 0 ] && tar czf "$CARRY/shared.tar.gz" -C "$SHARED" "${present[@]}"
[ "$CARRY" = gpu_carry ] && { grep -qx '/gpu_carry/' .git/info/exclude 2>/dev/null || echo '/gpu_carry/' >> .git/info/exclude; }
du -sh "$CARRY"/data/* "$CARRY"/*.tar.gz; du -sh "$CARRY"
