"""A Bradley-Terry reward model on natural preference pairs, for PPO's --reward preference
(llamalogue/alignment/reward_model.py).

    python train_reward_model.py --init runs/lm-small --out runs/reward-model
    python train_reward_model.py --init runs/lm-small --pairs-file PAPER/dpo/huggingface_dpo_format.json \
        --out runs/reward-model --threads 1
    python train_reward_model.py --half 0 --out runs/rm-half0     # and --half 1: a held-out judge for RL
"""

import argparse

import torch

from llamalogue.alignment.pairs import DEFAULT_DATA, DEFAULT_INIT, AlignmentInputs
from llamalogue.alignment.reward_model import PRESETS, RewardModelConfig, train
from llamalogue.cli import USER_ERRORS, fail
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.run_shell import RunFolder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default=DEFAULT_INIT, help="run dir of the pretrained llamalogue (the trunk; "
                        "default: %(default)s)")
    parser.add_argument("--pairs-file", default=None, help="natural preference pairs (the paper's "
                        "huggingface_dpo_format.json or our JSONL); default: DATA/pairs/dpo_words_nooverlap.jsonl")
    parser.add_argument("--eval-pairs-file", nargs="+", default=None,
                        help="held-out pairs for the accuracy (default: the eval files beside --pairs-file)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="data dir of the corpus stage (default: %(default)s)")
    parser.add_argument("--out", default="runs/reward-model", help="directory to write (default: %(default)s)")
    small = RewardModelConfig.from_preset("small")
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET, help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help=f"training pairs (small: {small.limit}; 0 = all)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help=f"held-out pairs per set (small: {small.eval_limit}; 0 = all)")
    parser.add_argument("--epochs", type=int, default=None, help=f"small: {small.epochs}")
    parser.add_argument("--lr", type=float, default=None, help=f"small: {small.lr:g}")
    parser.add_argument("--seed", type=int, default=None, help=f"small: {small.seed}")
    parser.add_argument("--half", type=int, choices=(0, 1), default=None,
                        help="train on one half of the training pairs (a fixed seeded split, the same whatever "
                             "--seed): two models with --half 0 and --half 1 never saw each other's pairs, so one "
                             "can judge RL trained against the other (train_ppo.py --judge)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = AlignmentInputs(init=args.init, pairs="natural", pairs_file=args.pairs_file,
                             eval_pairs_file=args.eval_pairs_file, data=args.data)
    options = RewardModelConfig.options_given(args)
    try:
        train(RunFolder(args.out), inputs, options, device=args.device)
    except USER_ERRORS as error:
        fail(error)


if __name__ == "__main__":
    main()
