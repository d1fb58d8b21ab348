"""Watching for reward hacking: a held-out judge and the share of generic replies, logged every step.

A policy can learn what its reward model likes rather than what fits the turn. Three columns of log.csv show it:

    reward_raw_mean  the training reward's own score r(x, y) (before PAR; the ensemble's when there are several
                     models), mean over the replies it scored (finished ones)
    judge_mean       the held-out judge's score r_J(x, y) of the SAME replies, mean over them: a reward model the
                     policy is never trained against (--judge DIR; train_reward_model.py --half 1 trains one on the
                     pairs the training reward model, --half 0, never saw)
    generic_share    the share of the step's B replies among the base model's twenty most frequent replies

Hacking shows as reward_raw_mean rising while judge_mean stays flat; a policy retreating to the base model's
stock replies (`no .`, `yeah .`) as generic_share rising. summary.json gives each start -> end.

The generic replies are computed once, at the start, from GENERIC_SAMPLES = 256 replies of the frozen reference
model pi_ref (the --init model) to the run's first prompts (the first pass's order, again from its start when there
are fewer), sampled with the run's sampling settings and a fixed seed in one batch: the sampling of 16 rollouts of 16
replies, without their updates.
`reference_sampler` draws them (and PAR's reference replies, llamalogue.rl.guards) with the trainer's frozen pi_ref.
"""

from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from llamalogue.checkpoint import load_config

GENERIC_REPLIES = 20  # the base model's most frequent replies that count as generic
GENERIC_SAMPLES = 256  # replies of the reference model they are counted among


def check_held_out(judge: str, reward_models) -> None:
    """ValueError when the judge is one of the training reward models, or was trained on the same half of the pairs
    as one of them (train_reward_model.py --half: config.json's "half")."""
    models = reward_models if isinstance(reward_models, (list, tuple)) else [reward_models]
    judge_half = (load_config(judge).get("half") or {}).get("half")
    for model in models:
        if Path(model).resolve() == Path(judge).resolve():
            raise ValueError(f"--judge {judge} is also a --reward-model: a judge must be held out")
        half = (load_config(model).get("half") or {}).get("half")
        if judge_half is not None and half == judge_half:
            raise ValueError(f"--judge {judge} and --reward-model {model} were both trained on half {half} of the "
                             f"pairs: train the judge with the other --half")


def most_frequent(replies: list[str], n: int = GENERIC_REPLIES) -> set[str]:
    """The n most frequent replies (ties: the first seen first), whitespace-normalised; an empty reply is no reply."""
    counts = Counter(" ".join(reply.split()) for reply in replies)
    counts.pop("", None)
    return {reply for reply, _ in counts.most_common(n)}


def generic_share(replies: list[str], generic: set[str]) -> float:
    """generic_share = #{i : y_i in G} / B, G the base model's most frequent replies, over the B replies."""
    return sum(" ".join(reply.split()) in generic for reply in replies) / len(replies)


def reference_sampler(trainer, tokenizer, ids_of: dict[str, list[int]]) -> Callable[[list[str], int], list[str]]:
    """sample_reference(prompts, seed) -> one reply of the frozen reference pi_ref to each prompt, decoded, sampled
    with the run's settings from a generator seeded with `seed` (PAR's y_ref, the generic replies)."""

    def sample_reference(prompts: list[str], seed: int) -> list[str]:
        generator = torch.Generator(trainer.generator.device).manual_seed(seed)
        replies = trainer.sample([ids_of[p] for p in prompts], generator, reference=True).tokens
        return [tokenizer.decode(reply).strip() for reply in replies]

    return sample_reference


def generic_replies(sample_reference, prompts: list[str], seed: int) -> set[str]:
    """The base model's most frequent replies: among GENERIC_SAMPLES replies of pi_ref (sample_reference, from
    reference_sampler) to the prompts in the order given (the run's first pass), cycled when fewer."""
    return most_frequent(sample_reference([prompts[i % len(prompts)] for i in range(GENERIC_SAMPLES)], seed + 2))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class WatchedReward:
    """The training reward, as the run calls it, with the held-out judge scoring the same (prompt, reply) pairs.

    Each call returns the training reward's scores unchanged and records its raw scores (`last_raw` of a PAR reward,
    else the scores themselves) and the judge's; `take()` gives their means since the last take and starts over.
    The judge's scores never reach the policy."""

    def __init__(self, reward, judge=None):
        self.reward, self.judge = reward, judge
        self.raw: list[float] = []
        self.judged: list[float] = []

    def prepare(self, prompts: list[str]) -> None:
        if hasattr(self.reward, "prepare"):
            self.reward.prepare(prompts)

    def __call__(self, prompts: list[str], replies: list[str]) -> list[float]:
        scores = self.reward(prompts, replies)
        self.raw += getattr(self.reward, "last_raw", scores)
        if self.judge is not None:
            self.judged += self.judge(prompts, replies)
        return scores

    def take(self) -> dict:
        """{"reward_raw_mean": ..., "judge_mean": ... (with a judge)} of the calls since the last take."""
        means = {"reward_raw_mean": mean(self.raw)}
        if self.judge is not None:
            means["judge_mean"] = mean(self.judged)
        self.raw, self.judged = [], []
        return means
