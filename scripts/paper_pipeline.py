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
checkpoint goes on with --resume, any other starts afresh (llamalogue.pipeline says when a stage is complete).

A Ctrl-C reaches the running stage too: a training stage saves its checkpoint and stops (its run is then not
complete by these rules), the corpus and the evaluation stop where they are (and start afresh next time); the
pipeline waits for the stage, then stops with exit code 130. A new --childes, pairs file or preset needs a new --out:
a complete stage is never run again with other inputs.

Several GPUs (--gpus K, default: all that torch sees): pretraining runs under torchrun as K DistributedDataParallel
processes, each with 1/K of the preset's batch, so that it trains as one process would; DPO, PPO and evaluation
have no multi-process mode and run on the first GPU.
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.cli import positive_int
from llamalogue.pipeline import (REPO, Stage, absolute, corpus_complete, dpo_complete, evaluation_complete,
                                 ppo_complete, pretraining_complete, run_in)
from llamalogue.pretraining.config import PRESETS
PPO_REWARDS = ("confidence", "bleu", "semsim", "llm")  # confidence first: its cache serves bleu and semsim
POSTER_ORDER = ("dpo-natural", "dpo-synthetic", "ppo-bleu", "ppo-semsim", "ppo-llm", "ppo-confidence")

# What the tiny preset adds so that each stage takes seconds on one CPU thread: PPO's episodes come from 4 prompts
# (the teacher answers only those), and the evaluation runs one task with fewer bootstrap replicates.
TINY_OPTIONS = {"ppo": ["--max-prompts", "4"], "evaluation": ["--tasks", "dialogue_words", "--bootstrap", "100"]}


# ----------------------------------------------------------------------------------------------------------------
# The stages (llamalogue.pipeline runs them).


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


def main(argv=None) -> int:
    args = parse_args(argv)
    gpus = args.gpus or torch.cuda.device_count()
    return run_in(lambda: stages(args, gpus), args.out / "logs",
                  lambda plan: f"paper pipeline, preset {args.preset}, {gpus or 'no'} GPU(s)"
                               f"{' (pretraining under torchrun)' if gpus > 1 else ''}: {len(plan)} stages into "
                               f"{args.out}")


if __name__ == "__main__":
    sys.exit(main())
