"""What every training stage shares about time: the learning rate at a step, and the order of an epoch.

Both are functions of the step (or epoch) alone, so a resumed run needs no state to go on exactly: the rate is set
by hand before each optimizer step, as nanoGPT does, and an epoch's order is drawn again from (seed, epoch).
"""

import functools
import math

import torch

DECAYS = ("cosine", "linear")


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, decay: str = "cosine",
                  min_ratio: float = 0.0) -> float:
    """The rate of optimizer step `step` (0-based) of total_steps: a linear warmup, then a decay to peak * min_ratio.

        warmup (step < W):  lr = peak * (step + 1) / W
        after:              p = (step - W) / (total_steps - W)                      progress from 0 to 1
                            lr = peak * (min_ratio + (1 - min_ratio) * s(p))
                            s(p) = (1 + cos(pi p)) / 2   (cosine: pretraining, as nanoGPT)
                            s(p) = 1 - p                 (linear: DPO and the reward model, TRL's default)
    """
    if step < warmup_steps:
        return peak * ((step + 1) / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif decay == "linear":
        shape = 1 - progress
    else:
        raise ValueError(f"learning-rate decay {decay!r}: choose one of {', '.join(DECAYS)}")
    return peak * (min_ratio + (1 - min_ratio) * shape)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@functools.lru_cache(maxsize=2)  # asked every step; drawn once per epoch (callers only read or slice it)
def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of `count` items (windows, pairs, prompts) in an epoch: a permutation that depends on (seed, epoch)
    alone."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
