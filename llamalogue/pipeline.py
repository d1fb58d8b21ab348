"""A pipeline of stages, each one command line a user would type: run in order, each skipped when its output is
complete, resumed when its folder holds a checkpoint, stopped cleanly by Ctrl-C. What scripts/paper_pipeline.py
(the paper's whole pipeline) and scripts/replication.py (the poster's table from the shared base) share.

Complete means, by what each stage already writes (no marker file of the pipeline's own):

    corpus        DATA/stats.json is there (the build deletes it first and writes it last)
    corpus part   DATA/part.json is there (scripts/corpus_part.py builds the folder beside it and renames it last)
    pretraining   the checkpoint's step is the run's total_steps (config.json)
    DPO           the last record of summary.jsonl, written after the last checkpoint, is at the run's total steps
    RL            summary.json (written when a run stops, but not by Ctrl-C) counts every step asked for
    evaluation    results.json parses (milestones.csv is not empty) and is newer than every model it scored
"""

import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llamalogue.checkpoint import load_state
from llamalogue.run_dir import CHECKPOINT, RunError, StopOnCtrlC, read_record

REPO = Path(__file__).resolve().parent.parent  # the stages' scripts run from the repository's root


# ----------------------------------------------------------------------------------------------------------------
# When a stage is complete: the rules in the module docstring, one function each.


def corpus_complete(data: Path) -> bool:
    return (data / "stats.json").is_file()


def corpus_part_complete(data: Path) -> bool:
    return (data / "part.json").is_file()


def pretraining_complete(run: Path) -> bool:
    record = read_record(run)
    try:
        return record is not None and load_state(run)["step"] >= record["total_steps"]
    except (RunError, KeyError):  # no checkpoint yet, or a damaged one: --resume says which in one line
        return False


def dpo_complete(run: Path) -> bool:
    try:
        last = json.loads((run / "summary.jsonl").read_text().splitlines()[-1])
        return last["step"] == last["total_steps"]
    except (OSError, IndexError, ValueError, KeyError, TypeError):  # none yet, or a line torn by a kill
        return False


def ppo_complete(run: Path, steps: int | None = None) -> bool:
    """steps: those the stage asks for (its --max-steps); None: every step of the run's episodes."""
    record = read_record(run)
    try:
        done = json.loads((run / "summary.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return False
    return record is not None and done == (steps or math.ceil(record["train"]["total_prompts"] /
                                                               record["train"]["batch_size"]))


def interaction_complete(run: Path) -> bool:
    """Every round done: the run's summary.json says so (a run stopped by Ctrl-C or --max-rounds writes none)."""
    record = read_record(run)
    try:
        done = json.loads((run / "summary.json").read_text())["rounds_done"]
    except (OSError, ValueError, KeyError):
        return False
    return record is not None and done == record["train"]["rounds"]


def evaluation_complete(results: Path, models: list[Path]) -> bool:
    """results: the evaluation's results.json, or the milestones.csv of evaluate.py --milestones."""
    try:
        if results.suffix == ".json":
            json.loads(results.read_text())
        elif not results.read_text().strip():
            return False
        return all(results.stat().st_mtime >= (model / CHECKPOINT).stat().st_mtime for model in models)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# The stages.


@dataclass
class Stage:
    name: str
    folder: Path  # what it writes
    command: list[str]  # a new run
    resume: list[str] | None  # the command that goes on from the folder's checkpoint; None: the stage starts over
    is_complete: Callable[[], bool]


def run_stage(command: list[str], log: Path) -> tuple[int, bool]:
    """Run the command in this folder, its output appended to the log; (exit code, whether Ctrl-C was pressed).

    The first Ctrl-C reaches the stage too (the terminal signals the whole process group; torchrun passes it on to
    its processes): the stage saves and stops, and the pipeline waits for it rather than killing it mid-save. A
    second Ctrl-C stops both at once."""
    with log.open("a", encoding="utf-8") as output:
        output.write(f"\n$ {shlex.join(command)}    # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        output.flush()
        with StopOnCtrlC() as ctrl_c:
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the log as it happens
            return process.wait(), ctrl_c.requested


def absolute(text: str) -> Path:
    """argparse type: a path made absolute, since the stages run in this folder, wherever the pipeline starts."""
    return Path(text).resolve()


def run_in(plan: Callable[[], list[Stage]], logs: Path, heading: Callable[[list[Stage]], str]) -> int:
    """The command line's whole run: the plan made (a bad option: one line `error: ...`, exit 2), its heading
    printed, each stage run (run); a second Ctrl-C while a stage saves, or one between stages, exits 130."""
    try:
        try:
            stages = plan()
            logs.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(heading(stages), flush=True)
        return run(stages, logs)
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; run the same command again to go on", file=sys.stderr)
        return 130


def run(plan: list[Stage], logs: Path) -> int:
    """Each stage in turn: skipped when complete, else run (resumed when its folder holds a checkpoint); the exit
    code of the pipeline: 0, 130 after a Ctrl-C, or the failing stage's."""
    started = time.time()
    for number, stage in enumerate(plan, 1):
        label = f"[{number}/{len(plan)}] {stage.name}"
        if stage.is_complete():
            print(f"{label}: complete, skipped ({stage.folder})", flush=True)
            continue
        resuming = stage.resume is not None and (stage.folder / CHECKPOINT).is_file()
        command = stage.resume if resuming else stage.command
        log = logs / f"{number}-{stage.name}.log"
        print(f"{label}: {'resuming: ' if resuming else ''}{shlex.join(command)}", flush=True)
        stage_start = time.time()
        code, interrupted = run_stage(command, log)
        seconds = time.time() - stage_start
        if interrupted:
            print(f"{label}: interrupted after {seconds:.0f} s; run the same command again to go on (log: {log})",
                  flush=True)
            return 130
        if code != 0 or not stage.is_complete():
            why = (f"exit code {code}" if code > 0 else f"killed by signal {-code}" if code < 0
                   else "exit code 0, but its run is not complete")
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            print(f"{label}: FAILED ({why}) after {seconds:.0f} s; its output: {log}"
                  + (f"\n    last line: {last[0][-300:]}" if last else ""), flush=True)
            return code if code > 0 else 1
        print(f"{label}: done in {seconds:.0f} s", flush=True)
    print(f"all {len(plan)} stages complete in {time.time() - started:.0f} s; the poster's table: "
          f"{plan[-1].folder / 'results.md'}")
    return 0


