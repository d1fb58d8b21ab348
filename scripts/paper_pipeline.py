"""The paper's whole pipeline in one command, every stage at the `paper` preset: corpus -> pretraining -> DPO on
natural and on synthetic pairs -> PPO with each of the paper's four rewards -> evaluation with the poster's table.

    python scripts/paper_pipeline.py --childes ../shared/data/childes/xml --eval-data ../shared/data \\
        --natural-pairs ../shared/data/paper/dpo/huggingface_dpo_format.json --out runs/paper
    python scripts/paper_pipeline.py --preset tiny --out /tmp/paper-tiny --threads 1    # the CPU smoke run: seconds a stage

The stages, in order, each the command line a user would type (printed before it runs, run in this folder, its
output in OUT/logs/N-STAGE.log), each writing one folder of OUT:

    1 corpus          python -m llamalogue.corpus            -> OUT/data
    2 pretraining     train_lm.py --milestones (10 epochs)   -> OUT/lm-PRESET  (milestones: the AoA row)
    3 dpo-natural     train_dpo.py --pairs natural           -> OUT/dpo-natural
    4 dpo-synthetic   train_dpo.py --pairs synthetic         -> OUT/dpo-synthetic
    5-8 ppo-REWARD    train_ppo.py --reward R, R = confidence, bleu, semsim, llm (the paper's episodes per reward;
                      confidence first: its cache of 10 teacher replies per prompt, OUT/ppo-teacher.jsonl, serves
                      bleu and semsim)                       -> OUT/ppo-R
    9 evaluation      evaluate.py --paper (the paper's protocol and numbers beside ours) -> OUT/eval/results.md

Run the same command again after a failure or a Ctrl-C: a complete stage is skipped, a stage whose folder holds a
checkpoint goes on with --resume, any other starts afresh. Complete means, by what each stage already writes (no
marker file of the pipeline's own):

    corpus        DATA/stats.json is there (the build deletes it first and writes it last)
    pretraining   the checkpoint's step is the run's total_steps (config.json)
    DPO           the last record of summary.jsonl, written after the last checkpoint, is at the run's total steps
    PPO           summary.json (written when a run stops, but not by Ctrl-C) counts every step of its episodes
    evaluation    results.json parses and is newer than the checkpoint of every model it scored

A Ctrl-C reaches the running stage too: a training stage saves its checkpoint and stops (its run is then not
complete by these rules), the corpus and the evaluation stop where they are (and start afresh next time); the
pipeline waits for the stage, then stops with exit code 130. A new --childes, pairs file or preset needs a new --out:
a complete stage is never run again with other inputs.

Several GPUs (--gpus K, default: all that torch sees): pretraining runs under torchrun as K DistributedDataParallel
processes, each with 1/K of the preset's batch, so that it trains as one process would; DPO, PPO and evaluation
have no multi-process mode and run on the first GPU.
"""

import argparse
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

import torch

from llamalogue.checkpoint import load_state
from llamalogue.cli import positive_int
from llamalogue.pretraining.training import PRESETS
from llamalogue.run_dir import CHECKPOINT, RunError, StopOnCtrlC, read_record

REPO = Path(__file__).resolve().parent.parent  # the stages' scripts run from the repository's root
PPO_REWARDS = ("confidence", "bleu", "semsim", "llm")  # confidence first: its cache serves bleu and semsim
POSTER_ORDER = ("dpo-natural", "dpo-synthetic", "ppo-bleu", "ppo-semsim", "ppo-llm", "ppo-confidence")

# What the tiny preset adds so that each stage takes seconds on one CPU thread: PPO's episodes come from 4 prompts
# (the teacher answers only those), and the evaluation runs one task with fewer bootstrap replicates.
TINY_OPTIONS = {"ppo": ["--max-prompts", "4"], "evaluation": ["--tasks", "dialogue_words", "--bootstrap", "100"]}


# ----------------------------------------------------------------------------------------------------------------
# When a stage is complete: the rules in the module docstring, one function each.


def corpus_complete(data: Path) -> bool:
    return (data / "stats.json").is_file()


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


def ppo_complete(run: Path) -> bool:
    record = read_record(run)
    try:
        steps = json.loads((run / "summary.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return False
    return record is not None and steps == math.ceil(record["train"]["total_prompts"] / record["train"]["batch_size"])


def evaluation_complete(results: Path, models: list[Path]) -> bool:
    try:
        json.loads(results.read_text())
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


def pretraining_launcher(preset: str, gpus: int) -> tuple[list[str], list[str]]:
    """(the command that starts train_lm.py, the batch option): one process, or torchrun with one process per GPU.
    K processes with batch B train like one process with batch K*B, so each takes 1/K of the preset's batch."""
    if gpus <= 1:
        return [sys.executable], []
    batch = PRESETS[preset]["batch_size"]
    if batch % gpus:
        raise ValueError(f"--gpus {gpus}: must divide the {preset} preset's batch of {batch} windows")
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"],
            ["--batch-size", str(batch // gpus)])


def stages(args, gpus: int) -> list[Stage]:
    """The pipeline's stages with their command lines; every path absolute, since they run in this folder."""
    python, out, preset = sys.executable, args.out, ["--preset", args.preset]
    threads = ["--threads", str(args.threads)] if args.threads else []
    teacher = ["--teacher", args.teacher] if args.teacher else []
    tiny = TINY_OPTIONS if args.preset == "tiny" else {}
    data, lm, evaluation = out / "data", out / f"lm-{args.preset}", out / "eval"

    childes = ["--childes", *map(str, args.childes)] if args.childes else []
    workers = ["--workers", str(args.threads)] if args.threads else []
    plan = [Stage("corpus", data, [python, "-m", "llamalogue.corpus", *childes, "--out", str(data), *workers],
                  None, lambda: corpus_complete(data))]

    launcher, batch = pretraining_launcher(args.preset, gpus)
    plan.append(Stage("pretraining", lm,
                      [*launcher, "train_lm.py", *preset, "--milestones", "--data", str(data), "--out", str(lm),
                       *batch, *threads],
                      [*launcher, "train_lm.py", "--resume", "--out", str(lm), *threads],
                      lambda: pretraining_complete(lm)))

    # synthetic pairs: the file given, else the corpus's pairs with the teacher's reply as the appropriate one
    synthetic = ["--pairs-file", str(args.synthetic_pairs)] if args.synthetic_pairs else teacher
    for kind, pairs in (("natural", ["--pairs-file", str(args.natural_pairs)]), ("synthetic", synthetic)):
        run = out / f"dpo-{kind}"
        plan.append(Stage(f"dpo-{kind}", run,
                          [python, "train_dpo.py", *preset, "--init", str(lm), "--data", str(data), "--pairs", kind,
                           *pairs, "--out", str(run), *threads],
                          [python, "train_dpo.py", "--resume", "--out", str(run), *threads],
                          lambda run=run: dpo_complete(run)))

    for reward in PPO_REWARDS:
        run = out / f"ppo-{reward}"
        plan.append(Stage(f"ppo-{reward}", run,
                          [python, "train_ppo.py", *preset, "--reward", reward, "--init", str(lm), "--data", str(data),
                           *teacher, *tiny.get("ppo", []), "--out", str(run), *threads],
                          [python, "train_ppo.py", "--resume", "--out", str(run), *threads],
                          lambda run=run: ppo_complete(run)))

    models = [lm, *(out / name for name in POSTER_ORDER)]
    eval_data = ["--eval-data", str(args.eval_data)] if args.eval_data else []
    plan.append(Stage("evaluation", evaluation,
                      [python, "evaluate.py", *(part for model in models for part in ("--model", str(model))),
                       "--paper", *eval_data, *tiny.get("evaluation", []), "--out", str(evaluation), *threads],
                      None, lambda: evaluation_complete(evaluation / "results.json", models)))
    return plan


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


def teacher_source(text: str) -> str:
    """argparse type: a teacher's folder or file made absolute; a hub id as it is."""
    return str(absolute(text)) if Path(text).exists() else text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper",
                        help="paper (default): the paper's settings at every stage (a GPU, no time limit); tiny: the "
                             "CPU smoke run, the same stages in seconds each")
    parser.add_argument("--out", type=absolute, default="runs/paper",
                        help="folder of every stage's output (default: runs/paper)")
    parser.add_argument("--childes", nargs="+", type=absolute, metavar="PATH",
                        help="CHILDES transcripts or folders (default: the embedded sample data/childes; the paper: "
                             "the full corpus, e.g. ../shared/data/childes/xml)")
    parser.add_argument("--natural-pairs", type=absolute, default=REPO / "data/paper_dpo/huggingface_dpo_format.json",
                        help="DPO natural's pairs, the paper's 18,000 in huggingface_dpo_format.json (default: the "
                             "3,000 of them in data/paper_dpo); the evaluation file beside it is the held-out set")
    parser.add_argument("--synthetic-pairs", type=absolute,
                        help="DPO synthetic's pairs, e.g. the paper's synthetic_dpo_format.json (default: the corpus's "
                             "pairs with the teacher's reply as the appropriate one)")
    parser.add_argument("--teacher", type=teacher_source,
                        help="the teacher of synthetic DPO and the PPO rewards: HF folder, .gguf or hub id (default: "
                             "the stages' own, SmolLM2-135M-Instruct)")
    parser.add_argument("--eval-data", type=absolute,
                        help="the evaluation suites' root, e.g. ../shared/data (default: the embedded samples in "
                             "data/eval)")
    parser.add_argument("--gpus", type=positive_int,
                        help="processes of the pretraining stage under torchrun, one per GPU (default: the GPUs "
                             "torch sees; 1: no torchrun)")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads of each stage (its --threads, and the corpus's --workers; default: each "
                             "stage's own)")
    return parser.parse_args(argv)


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


def main(argv=None) -> int:
    args = parse_args(argv)
    gpus = args.gpus or torch.cuda.device_count()
    try:
        plan = stages(args, gpus)
        logs = args.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"paper pipeline, preset {args.preset}, {gpus or 'no'} GPU(s)"
          f"{' (pretraining under torchrun)' if gpus > 1 else ''}: {len(plan)} stages into {args.out}", flush=True)
    return run(plan, logs)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a second Ctrl-C while a stage saves, or one between stages
        print("stopped by Ctrl-C; run the same command again to go on", file=sys.stderr)
        sys.exit(130)
