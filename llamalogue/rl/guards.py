"""Guards against reward hacking: what keeps the policy from flattering its reward instead of conversing.

A learned reward can be pleased by a style it likes after almost any turn (`what ?`, `yeah .`), and the confidence
reward drives a collapse onto `yes .` / `no .`. Three guards, each a flag of train_ppo.py, each composing with every
--algorithm (they change the task reward r_i of a reply before the algorithm's advantages see it):

    --par                 a bounded reward, "Preference As Reward" (Fu et al., 2025, arXiv 2502.18770):
                          r'(x, y) = sigmoid(r(x, y) - r(x, y_ref))      in (0, 1)
    --reward-model D1 D2  an ensemble of K reward models (--ensemble mean|min):
                          r(x, y) = 1/K sum_k r_k(x, y)   or   min_k r_k(x, y)
    --repeat-penalty c    a reply repeated within the step's batch of B replies loses c * (n_i - 1) / B

PAR's y_ref is one reply of the frozen reference model pi_ref (the --init model) to the same prompt, sampled with the
run's sampling settings: the paper's reference responses come from the reference (SFT) policy, and under the
Bradley-Terry model sigmoid(r(x, y) - r(x, y_ref)) is the probability that the reward model prefers the policy's reply
to what the starting model says. The teacher's cached reply would be the other choice; it is not a child's turn (the
reward model was trained on child replies), and a reward without a teacher (preference, pmi) should not load one.
The references are drawn again each step from a generator seeded by (seed, step), so a resumed run draws the same.

The repeat penalty is applied in RLTrainer.update to the batch the update sees (DAPO: after its resampling), on the
reply tokens, so every algorithm gets it. It acts while the replies still differ: a group algorithm compares the
replies to one prompt, so a penalty that all G replies of a group share cancels in the group's baseline (and PPO's
value head learns a constant away). It steers away from a collapse under way and cannot undo a complete one; the KL
to the reference is the guard that still pulls then (docs/stages.md, "Reward hacking": a target that binds).
"""

import math
from collections import Counter
from typing import Callable

import torch

ENSEMBLES = ("mean", "min")


def ensemble(scores: list[list[float]], how: str = "mean") -> list[float]:
    """The K reward models' scores of the same replies, scores[k][i] = r_k(x_i, y_i), as one score per reply:

        mean:  r(x, y) = 1/K sum_k r_k(x, y)        min:  r(x, y) = min_k r_k(x, y)   (the most sceptical model)
    """
    if how not in ENSEMBLES:
        raise ValueError(f"--ensemble {how!r}: choose one of {', '.join(ENSEMBLES)}")
    per_reply = list(zip(*scores))
    if how == "mean":
        return [sum(column) / len(column) for column in per_reply]
    return [min(column) for column in per_reply]


def preference_as_reward(scores: list[float], reference_scores: list[float]) -> list[float]:
    """PAR: r'(x, y) = sigmoid(r(x, y) - r(x, y_ref)) = 1 / (1 + exp(-(r - r_ref))), reply by reply; bounded in
    (0, 1), 1/2 for a reply the reward model rates as the reference's, steepest there and flat far from it."""
    return [1 / (1 + math.exp(-(r - r_ref))) for r, r_ref in zip(scores, reference_scores)]


def repeat_penalty(replies: list[list[int]], coef: float) -> torch.Tensor:
    """The penalty of each of the B replies of a batch: c * (n_i - 1) / B, n_i = how many replies of the batch equal
    reply i (token for token). A reply said once costs nothing; a batch that says one reply B times loses
    c * (B - 1) / B on every reply, about c; a reply said twice loses c / B."""
    counts = Counter(map(tuple, replies))
    return torch.tensor([coef * (counts[tuple(reply)] - 1) / len(replies) for reply in replies])


class ParReward:
    """A reward(prompts, replies) made bounded by PAR against reference replies to the same prompts.

    `draw(prompts, seed)` samples one reference reply y_ref to each distinct prompt (sample_reference(prompts, seed)
    -> replies: the frozen reference model's) and keeps them until the next draw; `__call__` scores the replies and
    the references with the wrapped reward and returns sigmoid(r(x, y) - r(x, y_ref)). `last_raw` keeps r(x, y) of
    the last call: the reward model's own score, which the run logs beside the held-out judge's."""

    def __init__(self, reward, sample_reference: Callable[[list[str], int], list[str]]):
        self.reward, self.sample_reference = reward, sample_reference
        self.references: dict[str, str] = {}
        self.last_raw: list[float] = []

    def prepare(self, prompts: list[str]) -> None:
        if hasattr(self.reward, "prepare"):
            self.reward.prepare(prompts)

    def draw(self, prompts: list[str], seed: int) -> None:
        distinct = list(dict.fromkeys(prompts))
        self.references = dict(zip(distinct, self.sample_reference(distinct, seed)))

    def __call__(self, prompts: list[str], replies: list[str]) -> list[float]:
        missing = sorted(set(prompts) - set(self.references))
        if missing:
            raise ValueError(f"PAR: no reference reply drawn for {len(missing)} prompt(s), e.g. {missing[0]!r}")
        distinct = list(dict.fromkeys(prompts))
        reference_scores = dict(zip(distinct, self.reward(distinct, [self.references[p] for p in distinct])))
        self.last_raw = self.reward(prompts, replies)
        return preference_as_reward(self.last_raw, [reference_scores[p] for p in prompts])
