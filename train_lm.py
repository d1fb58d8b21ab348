"""Pretrain llamalogue on child-caregiver dialogue triplets (see llamalogue/pretraining/training.py).

    python train_lm.py                                   # `small` on the embedded sample -> runs/lm-small
    python train_lm.py --preset paper --data DIR --out runs/lm-paper --epochs 10
    torchrun --nproc_per_node=4 train_lm.py --preset paper ...     # several GPUs (DistributedDataParallel)
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.cli import USER_ERRORS, positive_int
from llamalogue.pretraining.data import DEFAULT_DATA, corpus_source, prepare_data
from llamalogue.pretraining.milestones import parse_milestones
from llamalogue.pretraining.training import PRESETS, RunFolders, TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="small", choices=list(PRESETS), help="model and training preset")
    parser.add_argument("--data", type=Path,
                        help=f"data directory of the corpus stage (default: {DEFAULT_DATA}, built from the embedded "
                             f"sample when missing; with --resume: the run's own)")
    parser.add_argument("--childes", nargs="+", type=Path,
                        help="transcripts to build --data from when it holds no corpus yet")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/lm-PRESET)")
    parser.add_argument("--epochs", type=float, help="passes over the training split (presets: small 6, paper 10)")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this step; --resume goes on later")
    parser.add_argument("--minutes", type=float,
                        help="a time budget: the schedule ends at the epochs that fit in about this many minutes of "
                             "training at the step time measured on this machine (at most --epochs); recorded, so "
                             "--resume keeps it")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--batch-size", type=int, help="windows per micro-batch and process")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimisation step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--eval-every", type=int, help="steps between validation runs and checkpoints")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                        help="bfloat16 autocast or float32 (auto, the default: the faster on this machine, measured; "
                             "recorded in the run's config)")
    parser.add_argument("--compile", choices=["auto", "on", "off"],
                        help="torch.compile the model (auto, the default: when the run is long enough for the "
                             "compile to pay on this machine; a failed compile trains eagerly)")
    parser.add_argument("--seed", type=int)
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

    try:
        milestones, milestone_words = (parse_milestones(args.milestones, args.preset) if args.milestones
                                       else (None, None))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = dict(epochs=args.epochs, max_steps=args.max_steps, minutes=args.minutes, batch_size=args.batch_size,
                   grad_accum=args.grad_accum, lr=args.lr, eval_every=args.eval_every, dtype=args.dtype,
                   compile=args.compile, seed=args.seed, milestones=milestones,
                   milestone_words=milestone_words)
    options = {name: value for name, value in options.items() if value is not None}  # the options given
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.prepare_only:
            data, childes = corpus_source(args.data, args.childes)
            tokenizer, train_tokens, val_tokens = prepare_data(data, childes, rank=0, world=1)
            print(f"{data}: train.bin {len(train_tokens):,} tokens, val.bin {len(val_tokens):,} tokens "
                  f"(vocabulary {tokenizer.vocab_size:,})")
            return 0
        folders = RunFolders(out=args.out or Path("runs") / f"lm-{args.preset}", data=args.data, childes=args.childes,
                             resume=args.resume, overwrite=args.overwrite)
        config = options if args.resume else TrainConfig.from_preset(args.preset, **options)
        summary = train(config, folders, device=args.device)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 130 if summary["interrupted"] else 0  # 130: stopped by Ctrl-C (SIGINT), as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
