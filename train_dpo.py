"""DPO fine-tuning of a pretrained llamalogue on natural or synthetic preference pairs (see llamalogue/dpo.py).

    python train_dpo.py --init runs/lm-small --pairs natural --out runs/dpo-natural
    python train_dpo.py --pairs natural --pairs-file PAPER/dpo/huggingface_dpo_format.json --out runs/dpo-paper
    python train_dpo.py --pairs synthetic --out runs/dpo-synthetic           # chosen = our teacher's replies
    python train_dpo.py --pairs synthetic --pairs-file PAPER/dpo/synthetic_dpo_format.json --out runs/dpo-synth-paper
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.cli import USER_ERRORS, positive_int
from llamalogue.alignment.dpo import LOSSES, PRESETS, DPOConfig, train
from llamalogue.alignment.pairs import load_pairs
from llamalogue.run_dir import check_inputs, open_run, resume_record

# Where the pairs come from: recorded in the run, so that --resume reads the same ones without repeating them.
INPUTS = ("pairs", "pairs_file", "eval_pairs_file", "data", "teacher")


def resolved(inputs: dict) -> dict:
    """The inputs with their paths absolute, so that the run's record means the same files from any folder."""
    def absolute(path):
        return None if path is None else str(Path(path).resolve())

    eval_files = inputs["eval_pairs_file"]
    return {**inputs, "pairs_file": absolute(inputs["pairs_file"]), "data": absolute(inputs["data"]),
            "eval_pairs_file": None if eval_files is None else [absolute(path) for path in eval_files]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default="runs/lm-small", help="run dir of the starting (and reference) model")
    parser.add_argument("--pairs", choices=["natural", "synthetic"],
                        help="natural (default): appropriate vs random child reply; synthetic: the teacher's reply "
                             "vs random")
    parser.add_argument("--pairs-file", default=None,
                        help="training pairs (our JSONL, or the paper's huggingface_dpo_format.json / "
                             "synthetic_dpo_format.json); default: DATA/pairs/dpo_words_nooverlap.jsonl, whose chosen "
                             "replies --pairs synthetic replaces with the teacher's")
    parser.add_argument("--raw-synthetic", action="store_true", default=None,
                        help="keep a synthetic --pairs-file's replies as written (default: rewritten as CHILDES "
                             "transcribes, 'i can do it!' -> 'I can do it !', so that DPO cannot prefer them by "
                             "orthography alone)")
    parser.add_argument("--eval-pairs-file", nargs="+", default=None,
                        help="held-out pairs for dialogue-MP at each epoch end (default: the eval files beside "
                             "--pairs-file); training pairs overlapping them are dropped")
    parser.add_argument("--data", help="data dir of the corpus stage (default: runs/data)")
    parser.add_argument("--out", default=None, help="run dir to write (default: runs/dpo-PAIRS)")
    parser.add_argument("--preset", choices=list(PRESETS), default="small",
                        help="tiny (tests), small (CPU), paper (GPU, the paper's settings); default: %(default)s")
    parser.add_argument("--loss", choices=LOSSES, default=None, help="default: sigmoid (the DPO loss)")
    parser.add_argument("--beta", type=float, default=None, help="default: 0.1")
    parser.add_argument("--label-smoothing", type=float, default=None, help="cdpo's label-flip rate (default: 0.1)")
    parser.add_argument("--limit", type=int, default=None, help="training pairs (default: 18000; 0 = all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out pairs per set (0 = all)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop after N optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--log-every", type=int, default=None, help="optimizer steps between log.csv rows")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--teacher", default=None, help="--pairs synthetic: HF folder, .gguf or hub id of the teacher")
    parser.add_argument("--teacher-cache", default=None, help="JSONL cache of teacher replies (default: OUT/teacher.jsonl)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; on a "
                        "busy machine 1 is several times faster for the small model)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = DPOConfig.options_given(args)
    try:
        out = Path(args.out or f"runs/dpo-{args.pairs or 'natural'}")
        # the run folder's checks first: no teacher time spent, no teacher.jsonl written, for a run that is refused
        open_run(out, "dpo", args.resume, args.overwrite, protected={"--init": args.init}, prepare=False)
        given = resolved({name: getattr(args, name) for name in INPUTS})
        if args.resume:  # the run goes on with its own pairs and settings, the options given here changed
            record = resume_record(out, "dpo")
            check_inputs(out, record, given)
            inputs = {**given, **record.get("inputs", {})}
            config = DPOConfig.from_saved(record["train"], **{**overrides, "max_steps": args.max_steps or 0})
        else:
            inputs = {**given, "pairs": given["pairs"] or "natural",
                      "data": given["data"] or str(Path("runs/data").resolve())}
            config = DPOConfig.from_preset(args.preset, **overrides)
        pairs, held_out, notes = load_pairs(inputs["pairs"], inputs["pairs_file"], inputs["eval_pairs_file"],
                                            inputs["data"], config.limit, config.eval_limit, config.seed,
                                            config.raw_synthetic, inputs["teacher"],
                                            args.teacher_cache or out / "teacher.jsonl")
        train(args.init, out, pairs, held_out, config, resume=args.resume, overwrite=args.overwrite, device=args.device,
              notes=notes, inputs=inputs)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
