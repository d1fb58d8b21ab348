"""scripts/paper_pipeline.py end to end at the tiny preset: a Ctrl-C stops it with the running stage resumable, the next run
goes on from there and completes every stage with the poster's table, a third run skips them all, and a failing
stage stops it in one line naming the stage and its log."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_childes_files
from scripts.paper_pipeline import (corpus_complete, dpo_complete, evaluation_complete, ppo_complete,
                                    pretraining_complete)

STAGES = ["corpus", "pretraining", "dpo-natural", "dpo-synthetic", "ppo-confidence", "ppo-bleu", "ppo-semsim",
          "ppo-llm", "evaluation"]


@pytest.fixture(scope="module")
def teacher(tiny_runs, tmp_path_factory):
    """An untrained tiny llamalogue with the 400-piece tokenizer, exported as the Hugging Face folder that --teacher
    takes: every teacher code path (sampling, log-likelihoods, the judge's digits) in a fraction of a second, where
    SmolLM2 takes half a minute to load in each stage."""
    from llamalogue.hf import export

    return export(tiny_runs[0], tmp_path_factory.mktemp("teacher") / "hf")


def pipeline(out, teacher, *options) -> list[str]:
    return [sys.executable, "scripts/paper_pipeline.py", "--preset", "tiny", "--out", str(out), "--threads", "1",
            "--teacher", str(teacher), *options]


def test_interrupted_resumed_completed_then_skipped(tmp_path, teacher):
    out = tmp_path / "paper"
    command = pipeline(out, teacher, "--childes", *map(str, small_childes_files()))
    lm = out / "lm-tiny"

    # Ctrl-C as a terminal sends it, to the pipeline and its stage, once pretraining has saved its first checkpoint
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (lm / "checkpoint.pt").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "[2/9] pretraining: interrupted" in output and "[3/9]" not in output
    assert "interrupted: checkpoint at step" in (out / "logs" / "2-pretraining.log").read_text()  # it saved, then
    assert (lm / "checkpoint.pt").is_file() and not pretraining_complete(lm)  # stopped: not taken as complete

    # the same command again: the corpus is skipped, pretraining resumed, every later stage run
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"[1/9] corpus: complete, skipped ({out / 'data'})" in lines
    assert any(line.startswith("[2/9] pretraining: resuming: ") and "--resume" in line for line in lines)
    for number, name in enumerate(STAGES[2:], 3):
        assert f"[{number}/9] {name}: done in " in done.stdout
    models = [lm, *(out / name for name in STAGES[2:8])]
    assert corpus_complete(out / "data") and pretraining_complete(lm)
    assert all(dpo_complete(run) for run in models[1:3]) and all(ppo_complete(run) for run in models[3:])
    assert evaluation_complete(out / "eval" / "results.json", models)
    table = (out / "eval" / "results.md").read_text()
    assert "paper: llamalogue" in table and "ppo-confidence" in table  # the poster's columns beside ours
    assert sorted(path.name for path in (out / "logs").iterdir()) == sorted(
        f"{number}-{name}.log" for number, name in enumerate(STAGES, 1))

    # and again: nothing left to do
    started = time.time()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    for number, name in enumerate(STAGES, 1):
        assert f"[{number}/9] {name}: complete, skipped" in again.stdout
    assert time.time() - started < 30

    # what DPO and PPO leave when stopped by a Ctrl-C is not complete either: DPO's last summary is where it stopped,
    # PPO writes none
    with (out / "dpo-natural" / "summary.jsonl").open("a") as summary:
        summary.write('{"step": 3, "total_steps": 8, "interrupted": true}\n')
    (out / "ppo-llm" / "summary.json").unlink()
    assert not dpo_complete(out / "dpo-natural") and not ppo_complete(out / "ppo-llm")


def test_a_failing_stage_stops_the_pipeline_naming_its_log(tmp_path, teacher):
    out = tmp_path / "paper"
    failed = subprocess.run(pipeline(out, teacher, "--childes", str(tmp_path / "no-such-folder")), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    log = out / "logs" / "1-corpus.log"
    assert "[1/9] corpus: FAILED (exit code 2) after" in failed.stdout and f"its output: {log}" in failed.stdout
    assert "no-such-folder" in failed.stdout  # the stage's own one-line error, from its log
    assert "[2/9]" not in failed.stdout and not (out / "lm-tiny").exists()
