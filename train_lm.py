"""Pretrain llamalogue on child-caregiver dialogue triplets (see llamalogue/pretraining/training.py).

    python train_lm.py                                   # `small` on the embedded sample -> runs/lm-small
    python train_lm.py --preset paper --data DIR --out runs/lm-paper --epochs 10
    torchrun --nproc_per_node=4 train_lm.py --preset paper ...     # several GPUs (DistributedDataParallel)
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.cli import INTERRUPTED, USER_ERRORS, fail, positive_int
from llamalogue.model import PRESETS as MODEL_PRESETS
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.pretraining.config import PRESETS, TrainConfig
from llamalogue.pretraining.data import DEFAULT_DATA, PretrainingInputs, corpus_source, prepare_data
from llamalogue.pretraining.milestones import parse_milestones
from llamalogue.pretraining.training import train
from llamalogue.run_shell import RunFolder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    small, paper = TrainConfig.from_preset("small"), TrainConfig.from_preset("paper")

    def presets_say(name: str) -> str:  # a setting's default in the two presets a user runs, read from them
        return f"(small: {getattr(small, name):g}; paper: {getattr(paper, name):g})"

    parser.add_argument("--preset", choices=list(PRESETS),
                        help=f"training preset, and the model's unless --model (default: {DEFAULT_PRESET})")
    parser.add_argument("--model", choices=list(MODEL_PRESETS),
                        help="the model's size, when not --preset's: e.g. `--preset small --model paper`, the larger "
                             "model with small's optimisation (give --batch-size for as many tokens a step)")
    parser.add_argument("--data", type=Path,
                        help=f"data directory of the corpus stage (default: {DEFAULT_DATA}, built from the embedded "
                             f"sample when missing; with --resume: the run's own)")
    parser.add_argument("--childes", nargs="+", type=Path,
                        help="transcripts to build --data from when it holds no corpus yet")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/lm-PRESET)")
    parser.add_argument("--epochs", type=float, help=f"passes over the training split {presets_say('epochs')}")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this step; --resume goes on later")
    parser.add_argument("--minutes", type=float,
                        help="a time budget: the schedule ends at the epochs that fit in about this many minutes of "
                             "training at the step time measured on this machine (at most --epochs); recorded, so "
                             "--resume keeps it")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--batch-size", type=int,
                        help=f"windows per micro-batch and process {presets_say('batch_size')}")
    parser.add_argument("--grad-accum", type=int,
                        help=f"micro-batches per optimisation step {presets_say('grad_accum')}")
    parser.add_argument("--lr", type=float, help=f"peak learning rate {presets_say('lr')}")
    parser.add_argument("--eval-every", type=int,
                        help=f"steps between validation runs and checkpoints {presets_say('eval_every')}")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                        help=f"bfloat16 autocast or float32 (default: {small.dtype}; auto: the faster on this "
                             f"machine, measured; recorded in the run's config)")
    parser.add_argument("--compile", choices=["auto", "on", "off"],
                        help=f"torch.compile the model (default: {small.compile}; auto: when the run is long enough "
                             f"for the compile to pay on this machine; a failed compile trains eagerly)")
    parser.add_argument("--seed", type=int, help=f"default: {small.seed}")
    parser.add_argument("--milestones", nargs="?", const="preset", metavar="N1,N2,...",
                        help="keep a checkpoint in OUT/milestones/chck_N when training has seen N tokens (e.g. "
                        "100K,1M,2M; 1Mw: a million words; alone: the preset's defaults, see "
                        "llamalogue/pretraining/milestones.py); for the AoA task and evaluate.py --milestones")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, all cores; on a "
                        "machine busy with other jobs, 1 can be faster)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only build --data if needed and tokenize it (DIR/train.bin, DIR/val.bin), then stop")
    args = parser.parse_args(argv)

    preset = args.preset or DEFAULT_PRESET
    options = TrainConfig.options_given(args)
    if args.milestones:  # "100K,1Mw" -> token and word counts
        try:
            options["milestones"], options["milestone_words"] = parse_milestones(args.milestones, preset)
        except ValueError as error:
            fail(error)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.prepare_only:
            data, childes = corpus_source(args.data, args.childes)
            tokenizer, train_tokens, val_tokens = prepare_data(data, childes, rank=0, world=1)
            print(f"{data}: train.bin {len(train_tokens):,} tokens, val.bin {len(val_tokens):,} tokens "
                  f"(vocabulary {tokenizer.vocab_size:,})")
            return 0
        folder = RunFolder(out=args.out or Path("runs") / f"lm-{preset}", resume=args.resume,
                           overwrite=args.overwrite)
        summary = train(folder, PretrainingInputs(data=args.data, childes=args.childes), options, device=args.device)
    except USER_ERRORS as error:
        fail(error)
    return INTERRUPTED if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
