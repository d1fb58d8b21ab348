"""`python -m llamalogue.interaction --init RUN (--data DIR | --prompts FILE) --out DIR [--preset tiny|small|baseline]`:
rounds of interaction, the student sampling a reply to each caregiver turn, the teacher correcting it, the student
learning from the correction (LM epochs, then SimPO + lambda LM epochs); llamalogue/interaction/training.py.

    python -m llamalogue.interaction --init runs/lm-small --data runs/data --out runs/interaction
    python -m llamalogue.interaction --init runs/lm-small --data runs/data --out runs/interaction --resume
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from llamalogue.cli import INTERRUPTED, USER_ERRORS, add_machine_options, fail, set_threads
from llamalogue.corpus.transcripts import CorpusError
from llamalogue.interaction.config import PRESETS, InteractionConfig
from llamalogue.interaction.training import InteractionInputs, train
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.run_shell import RunFolder

HELP = {  # what each setting means; its default is read from the config, never restated
    "rounds": "rounds of sample -> correct -> train, each on fresh contexts",
    "contexts_per_round": "caregiver turns a round corrects (0: its whole part of the prompts)",
    "max_rounds": "stop after N rounds; --resume goes on to --rounds",
    "temperature": "the student's sampling temperature", "top_p": "the student's nucleus",
    "max_new_tokens": "the student's reply budget in tokens", "sample_batch_size": "replies sampled per batch",
    "teacher_temperature": "the teacher's sampling temperature", "teacher_top_p": "the teacher's nucleus",
    "teacher_max_new_tokens": "the teacher's correction budget in its tokens",
    "tries": "teacher draws per correction before it is dropped (and counted)",
    "cut": "student: the correction cut to the student's reply length in tokens; none: the whole correction",
    "lm_epochs": "LM epochs per round on context + correction", "simpo_epochs": "SimPO + lambda LM epochs per round",
    "beta": "SimPO's beta", "gamma_ratio": "SimPO's margin gamma = beta x this",
    "lm_weight": "lambda, the LM loss's weight in the SimPO epochs", "batch_size": "pairs per optimizer step",
    "lr": "peak learning rate (cosine over all rounds)", "weight_decay": "AdamW's", "grad_clip": "gradient norm",
    "warmup_steps": "linear warmup steps", "schedule_steps": "the cosine's length (0: the run's planned steps)",
    "seed": "contexts, samples and epoch orders",
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llamalogue.interaction", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=False, help="run dir of the student's starting model")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="data dir of the corpus stage: its prompts.txt (PPO's caregiver prompts)")
    source.add_argument("--prompts", help="caregiver utterances, one per line")
    parser.add_argument("--teacher", default=None, help="HF folder, .gguf or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--out", required=False, help="run dir to write")
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help=f"tiny (tests), small (CPU), baseline (the baseline's settings); default: "
                             f"{DEFAULT_PRESET}")
    small, baseline = InteractionConfig.from_preset("small"), InteractionConfig.from_preset("baseline")
    for field in dataclasses.fields(InteractionConfig):
        if field.name in HELP:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=field.type, default=None,
                                help=f"{HELP[field.name]} (small: {getattr(small, field.name)}; baseline: "
                                     f"{getattr(baseline, field.name)})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    add_machine_options(parser)
    args = parser.parse_args(argv)
    set_threads(args)
    options = InteractionConfig.options_given(args)
    try:
        if not args.out:
            raise ValueError("--out is required")
        if not args.resume and not args.init:
            raise ValueError("--init is required (the student's starting run)")
        if not args.resume and not (args.data or args.prompts):
            raise ValueError("--data DIR or --prompts FILE is required")
        prompts = args.prompts or (str(Path(args.data) / "prompts.txt") if args.data else "")
        given = InteractionInputs(init=args.init or "", prompts=prompts, teacher=args.teacher)
        summary = train(RunFolder(args.out, args.resume, args.overwrite), given, options, device=args.device)
    except (*USER_ERRORS, CorpusError) as error:
        fail(error)
    return INTERRUPTED if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
