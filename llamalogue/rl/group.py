"""Critic-free RL for a dialogue model: RLOO, GRPO and Dr. GRPO sample G replies to each caregiver prompt and judge
each reply against the others, with no value head to learn.

One step, in the order `RLTrainer.step` runs it with GroupTrainer's update (the rollout, the epochs and the on-policy log-probs are PPO's:
llamalogue.rl.trainer):

1. rollout     G replies to each of B / G prompts (B = batch_size, the replies of the step), log pi_old and log pi_ref
               of every reply token.
2. reward      the task reward r_i of each reply (llamalogue.rl.rewards), the unfinished penalty (8) as in PPO.
3. advantages  one number per reply from its group of G (`group_advantages`), given to every token of the reply:

     RLOO      A_i = R_i - 1/(G-1) sum_{j != i} R_j    R_i = r_i - beta * sum_t KL_t      (Ahmadian et al., 2024)
     GRPO      A_i = (r_i - mean_j r_j) / (std_j r_j + eps)                                 (Shao et al., 2024)
     Dr. GRPO  A_i = r_i - mean_j r_j                                                       (Liu et al., 2025)

   RLOO keeps the KL penalty in the reward, as PPO does (KL_t by the run's kl_estimator); GRPO and Dr. GRPO put it in
   the loss instead, always with the k3 estimator.
4. update      epochs of minibatches on the clipped surrogate of every token (`group_loss`). With one epoch of one
               minibatch the ratio is exactly 1 and the surrogate's gradient is REINFORCE's, -A_i grad log pi(a_t).
               How the tokens' losses add up:

     GRPO      1/B sum_i 1/|y_i| sum_t (l_it + beta * k3_it)      the mean over each reply's tokens, then over the
                                                                  minibatch's B replies
     Dr. GRPO  1/B sum_i 1/L sum_t (l_it + beta * k3_it)          L = max_new_tokens: no reply length in the loss
     RLOO      1/B sum_i 1/L sum_t l_it                           REINFORCE's sequence log-prob, scaled by 1/L

The scale of Dr. GRPO's and RLOO's loss thus does not depend on how long the replies are: a long reply's tokens
weigh as much as a short reply's, where GRPO's per-reply mean gives each token of a short reply more weight.
"""

import dataclasses

import torch
import torch.nn as nn

from llamalogue.model import Llama
from llamalogue.rl.config import PPOConfig
from llamalogue.rl.kl import kl_estimate
from llamalogue.rl.trainer import RLTrainer, Rollout, clipped_surrogate, ratio_statistics, reply_hidden

GRPO_STD_EPS = 1e-4  # TRL's GRPOTrainer: keeps a group of near-equal rewards from blowing its advantages up


class Policy(nn.Module):
    """The language model alone as the policy: the logits of the states that choose the reply's tokens, no values."""

    def __init__(self, lm: Llama):
        super().__init__()
        self.lm = lm

    def forward(self, tokens, attention_mask, prompt_len: int):
        """-> logits [B, R, V] of the reply's tokens, and None: no value head."""
        return self.lm.lm_head(reply_hidden(self.lm, tokens, attention_mask, prompt_len)).float(), None


def kl_penalized_rewards(scores, kl, reply_mask, kl_coef: float):
    """RLOO's reward of a whole reply, the KL penalty inside it:  R_i = r_i - beta * sum_t KL_t."""
    return scores - kl_coef * (kl * reply_mask).sum(1)


def group_advantages(rewards, group_size: int, algorithm: str):
    """The advantage of each reply [B] against the other replies to its prompt (rows g * G .. g * G + G - 1):

        rloo      A_i = R_i - 1/(G-1) sum_{j != i} R_j          the leave-one-out baseline: unbiased
        grpo      A_i = (r_i - mean_j r_j) / (std_j r_j + eps)  std with Bessel's correction, as TRL
        dr_grpo   A_i = r_i - mean_j r_j
    """
    groups = rewards.view(-1, group_size)
    if algorithm == "rloo":
        others_mean = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
        return (groups - others_mean).flatten()
    centred = groups - groups.mean(1, keepdim=True)
    if algorithm == "grpo":
        return (centred / (groups.std(1, keepdim=True) + GRPO_STD_EPS)).flatten()
    if algorithm == "dr_grpo":
        return centred.flatten()
    raise ValueError(f"group advantages: unknown algorithm {algorithm!r}; choose rloo, grpo or dr_grpo")


def aggregate_token_losses(per_token, mask, algorithm: str, max_new_tokens: int):
    """A loss of every token [B, R] -> one number:

        grpo              1/B sum_i 1/|y_i| sum_t l_it     each reply's mean over its tokens, then the replies' mean
        rloo, dr_grpo     1/B sum_i 1/L sum_t l_it         L = max_new_tokens, a constant
    """
    per_reply = (per_token * mask).sum(1)
    if algorithm == "grpo":
        return (per_reply / mask.sum(1)).mean()
    return (per_reply / max_new_tokens).mean()


def group_loss(logprobs, minibatch: Rollout, kl_coef: float, config: PPOConfig) -> tuple[torch.Tensor, dict]:
    """The minibatch loss of RLOO, GRPO or Dr. GRPO, and its statistics:

        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        l_t   = max(-A_i * rho_t, -A_i * clip(rho_t, 1 - eps, 1 + eps))        (11) the reply's advantage A_i
        k3_t  = pi_ref(a_t|s_t) / pi(a_t|s_t) - log(pi_ref(a_t|s_t) / pi(a_t|s_t)) - 1      grpo and dr_grpo only
        L     = aggregate(l) + beta * aggregate(k3)      aggregate: aggregate_token_losses
    """
    algorithm, mask = config.algorithm, minibatch.reply_mask
    log_ratio = logprobs - minibatch.logprobs
    ratio = log_ratio.exp()
    surrogate = clipped_surrogate(ratio, minibatch.advantages, config.clip_eps)
    policy_loss = aggregate_token_losses(surrogate, mask, algorithm, config.max_new_tokens)
    stats = {"policy_loss": policy_loss.item()}
    loss = policy_loss
    if algorithm != "rloo":  # the KL to the reference is a term of the loss, of the policy being updated
        k3 = kl_estimate(logprobs, minibatch.ref_logprobs, "k3")
        kl_loss = kl_coef * aggregate_token_losses(k3, mask, algorithm, config.max_new_tokens)
        stats["kl_loss"] = kl_loss.item()
        loss = loss + kl_loss
    stats.update(ratio_statistics(ratio, log_ratio, mask, config))
    return (1.0 - stats["skipped"]) * loss, stats


class GroupTrainer(RLTrainer):
    """RLOO, GRPO and Dr. GRPO (config.algorithm): the group advantages and their loss (the rollout, the epochs and
    the state they share with PPO: llamalogue.rl.trainer.RLTrainer)."""

    def advantages(self, batch: Rollout, scores: torch.Tensor) -> Rollout:
        """Each reply's group advantage, on every one of its tokens (0 past its end)."""
        cfg = self.config
        rewards = scores.to(self.device)
        if cfg.algorithm == "rloo":
            kl = kl_estimate(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator)
            rewards = kl_penalized_rewards(rewards, kl, batch.reply_mask, self.kl_ctl.value)
        advantages = group_advantages(rewards, cfg.group_size, cfg.algorithm)
        return dataclasses.replace(batch, advantages=advantages[:, None] * batch.reply_mask)

    def loss(self, minibatch: Rollout, logprobs, values) -> tuple[torch.Tensor, dict]:
        return group_loss(logprobs, minibatch, self.kl_ctl.value, self.config)

    def update(self, batch: Rollout, scores: torch.Tensor) -> dict:
        """RLTrainer's statistics, and tied_groups: the share of prompts whose G replies all got the same task
        reward (GRPO and Dr. GRPO learn nothing from such a group but to stay near the reference)."""
        groups = scores.view(-1, self.config.group_size)
        tied = (groups == groups[:, :1]).all(1).float().mean().item()
        return {**super().update(batch, scores), "tied_groups": tied}
