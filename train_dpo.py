"""DPO fine-tuning of a pretrained llamalogue on natural or synthetic preference pairs (llamalogue/alignment/dpo.py).

    python train_dpo.py --init runs/lm-small --pairs natural --out runs/dpo-natural
    python train_dpo.py --pairs natural --pairs-file PAPER/dpo/huggingface_dpo_format.json --out runs/dpo-paper
    python train_dpo.py --pairs synthetic --out runs/dpo-synthetic           # chosen = our teacher's replies
    python train_dpo.py --pairs synthetic --pairs-file PAPER/dpo/synthetic_dpo_format.json --out runs/dpo-synth-paper
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.alignment.dpo import LOSSES, PRESETS, DPOConfig, train
from llamalogue.alignment.pairs import AlignmentInputs
from llamalogue.alignment.reply_scoring import PAIR_LAYOUTS
from llamalogue.cli import INTERRUPTED, USER_ERRORS, fail, positive_int
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.run_shell import RunFolder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default=None,
                        help="run dir of the starting (and reference) model (default: runs/lm-small)")
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
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help=f"tiny (tests), small (CPU), paper (GPU, the paper's settings); default: {DEFAULT_PRESET}")
    parser.add_argument("--loss", choices=LOSSES, default=None,
                        help=f"default: {DPOConfig.loss} (the DPO loss); simpo: reference-free, length-normalised "
                             f"(SimPO)")
    parser.add_argument("--beta", type=float, default=None, help=f"default: {DPOConfig.beta}")
    parser.add_argument("--label-smoothing", type=float, default=None, help=f"cdpo's label-flip rate (default: {DPOConfig.label_smoothing})")
    parser.add_argument("--gamma", type=float, default=None,
                        help=f"simpo's target margin (default: {DPOConfig.gamma}; SimPO's paper: --beta 2.0 --gamma 1.0)")
    parser.add_argument("--pair-layout", choices=PAIR_LAYOUTS, default=None,
                        help=f"default: {DPOConfig.pair_layout}; ours: [BOS] prompt\\n*CHI: reply\\n as pretrained, "
                             "reply + newline scored; "
                             "paper (--preset paper): as the paper's TRL trainer, prompt and reply tokenized apart, no "
                             "BOS, the reply's tag and an EOS scored, synthetic pairs untagged")
    parser.add_argument("--limit", type=int, default=None, help=f"training pairs (default: {DPOConfig.limit}; 0 = all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out pairs per set (0 = all)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop after N optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--log-every", type=int, default=None, help="optimizer steps between log.csv rows")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint, with its own pairs and settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--teacher", default=None, help="--pairs synthetic: HF folder, .gguf or hub id of the teacher")
    parser.add_argument("--teacher-cache", default=None, help="JSONL cache of teacher replies (default: OUT/teacher.jsonl)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; on a "
                        "busy machine 1 is several times faster for the small model)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/dpo-{args.pairs or 'natural'}")
    inputs = AlignmentInputs(init=args.init, pairs=args.pairs, pairs_file=args.pairs_file,
                             eval_pairs_file=args.eval_pairs_file, data=args.data, teacher=args.teacher,
                             teacher_cache=args.teacher_cache or str(out / "teacher.jsonl"))
    options = DPOConfig.options_given(args)
    try:
        summary = train(RunFolder(out, args.resume, args.overwrite), inputs, options, device=args.device)
    except USER_ERRORS as error:
        fail(error)
    return INTERRUPTED if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
