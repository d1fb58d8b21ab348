"""The KL penalty of RLHF: how far the policy has moved from the frozen reference, and how hard to pull it back.

PPO's per-token reward carries -beta * KL_t (llamalogue.rl.ppo, details (4)-(6)), RLOO's reply reward -beta * sum_t KL_t,
GRPO's loss +beta * k3_t (llamalogue.rl.group): KL_t estimates KL(pi || pi_ref) from the one token the policy sampled,
and beta is fixed or steered towards a target KL per reply.
"""

import torch


def kl_estimate(logprobs, ref_logprobs, estimator: str = "k1"):
    """(4) Per-token estimate of KL(pi || pi_ref) from one token a ~ pi (Schulman, "Approximating KL divergence", 2020).

        k1  = log pi(a) - log pi_ref(a)                 unbiased; a single sample can be negative
        abs = |log pi(a) - log pi_ref(a)|               never negative, biased upwards (TRL's kl_penalty="abs")
        k3  = (rho - 1) - log rho,  rho = pi_ref(a) / pi(a)   unbiased and never negative
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


KL_ESTIMATORS = ("k1", "abs", "k3")


class AdaptiveKLController:
    """(6) Ziegler et al. (2019), a proportional controller that steers the per-reply KL towards a target:

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)        beta_{t+1} = beta_t * (1 + e_t * n / horizon)

    where n is the number of episodes in the step. With adaptive=False beta stays fixed.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int, adaptive: bool):
        self.value, self.target, self.horizon, self.adaptive = kl_coef, target, horizon, adaptive

    def update(self, kl: float, n_episodes: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_episodes / self.horizon
