"""PPO for a dialogue model: the baby answers the mother, a reward scores the answer, PPO makes good answers likelier.

One PPO step (Schulman et al., 2017; for language models Ziegler et al., 2019 and Stiennon et al., 2020), in the
order `RLTrainer.step` (llamalogue.rl.trainer) runs it with PPOTrainer's update:

1. rollout   sample a reply to each of B caregiver prompts with the KV cache, then one forward pass of the policy
             (log pi_old(a_t|s_t) and values V(s_t)) and one of the frozen reference (log pi_ref(a_t|s_t)).
2. reward    the task reward r_task(x, y) of each whole reply (llamalogue.rl.rewards: BLEU, semantic similarity, LLM
             score, confidence, PMI, a learned preference model).
3. shaping   per-token rewards r_t = -beta * KL_t, plus r_task at the reply's last token.
4. GAE       advantages A_t and value targets R_t, computed backwards over the reply tokens.
5. update    a few epochs of minibatch gradient steps on the clipped policy loss plus the clipped value loss.

The episode is one reply: the actions a_1..a_T are its tokens, *including* the stop token that ends it (so that
the policy also learns when to stop); the state s_t is the prompt plus a_1..a_{t-1}. The implementation details
are numbered in this file's own order (most are among the PPO details CleanRL's ppo.py and Huang et al.'s "The 37
implementation details of PPO" describe; (16) and (17) are particular to sampling text) and marked `# (n)` where the
code does them ((4) and (6), the KL penalty, in llamalogue.rl.kl; (2), (3), (13)-(17), which the critic-free
algorithms of llamalogue.rl.group share, in llamalogue.rl.trainer; the settings in llamalogue.rl.config):

 (1) value head: a linear layer on the last hidden state, initialised to zero so that V(s) = 0 at the start
 (2) dropout off everywhere (the models stay in eval mode): log-probs must be deterministic for the ratio
 (3) old log-probs recomputed with a padded forward pass, so that the ratio is exactly 1 before the first update
 (4) KL estimators k1 / abs / k3 of KL(pi || pi_ref) from one sampled token
 (5) task reward at the last token, KL penalty at every token
 (6) fixed or adaptive beta (Ziegler et al., 2019)
 (7) optional reward normalisation by running mean and standard deviation
 (8) a reply that never stops (runs out of max_new_tokens) gets a fixed penalty instead of its task reward
 (9) GAE with gamma = 1, lambda = 0.95
(10) advantage whitening over the batch's reply tokens
(11) clipped surrogate policy loss, epsilon = 0.2
(12) clipped value loss
(13) several epochs over shuffled minibatches
(14) early stop of the epochs when the approximate KL between old and new policy exceeds a threshold; or, as TRL,
     no update from a minibatch whose mean ratio exceeds ratio_threshold
(15) global gradient-norm clipping (optional: TRL 0.8.6, which the paper used, does not clip)
(16) on-policy sampling: every log-probability -- old, new and reference -- is that of the distribution the reply was
     sampled from, q(a|s) = exp(z_a / T) / sum_{b in K(s)} exp(z_b / T) over the tokens K(s) that top-k/top-p kept
     when the rollout sampled (sampling_logprobs). With the unwarped pi instead, the replies come from q while the
     ratio and the KL are those of pi: the update is off-policy and the KL is that of a distribution nobody sampled
     from. The reference is renormalised over the same K(s), so KL = 0 while the policy is still the reference.
(17) collapse in plain sight: the share of distinct replies in the batch (distinct_frac) and of its most frequent
     reply (top_reply_frac), per step; a policy that answers `no .` to everything drives them to 1/B and 1.
"""

import dataclasses
import math

import torch
import torch.nn as nn

from llamalogue.model import Llama
from llamalogue.rl.config import RLConfig
from llamalogue.rl.kl import kl_estimate
from llamalogue.rl.trainer import RLTrainer, Rollout, clipped_surrogate, masked_mean, ratio_statistics, reply_hidden


class PolicyWithValue(nn.Module):
    """The language model (the policy) plus a value head that reads the same last hidden state."""

    def __init__(self, lm: Llama, value_head: str = "zero"):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.dim, 1)
        # (1) zero weights and bias: V(s) = 0 everywhere at the start, so early advantages are the rewards
        # themselves instead of the noise of a random head; the weights still get gradients (through the hidden state).
        if value_head == "zero":
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        elif value_head != "random":
            raise ValueError(f"value head {value_head!r}: choose zero or random")

    def forward(self, tokens, attention_mask, prompt_len: int):
        """-> logits [B, R, V] and values V(s_t) [B, R] of the states that choose the reply's tokens."""
        hidden = reply_hidden(self.lm, tokens, attention_mask, prompt_len)
        return self.lm.lm_head(hidden).float(), self.value_head(hidden).squeeze(-1).float()


def token_rewards(scores, kl, reply_mask, kl_coef: float):
    """(5) The reward of every reply token:  r_t = -beta * KL_t  +  [t = T] * r_task(x, y).

    The task reward only exists for the whole reply, so it arrives at the last action; the KL penalty keeps each
    token close to what the reference model would say.
    """
    rewards = -kl_coef * kl * reply_mask
    last = reply_mask.sum(1).long() - 1  # every reply has at least one action: a token or the stop token
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores
    return rewards


def gae(rewards, values, reply_mask, gamma: float = 1.0, lam: float = 0.95):
    """(9) Generalised advantage estimation (Schulman et al., 2016), backwards over the reply tokens:

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)        with V(s_{T+1}) = 0: the episode ends with the reply
        A_t     = delta_t + gamma * lambda * A_{t+1}
        R_t     = A_t + V(s_t)                             the value target (the lambda-return)

    Rewards and values past a reply's end are zeroed, so A stays 0 there and the recursion starts at 0 at each end.
    """
    rewards, values = rewards * reply_mask, values * reply_mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def whiten(x, mask, eps: float = 1e-8):
    """(10) (x - mean) / std over the masked entries: the policy loss gets the same scale whatever the reward's."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


class RunningMoments:
    """(7) Running mean and variance of the task rewards (Chan et al.'s parallel update), for reward normalisation."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, xs: torch.Tensor) -> None:
        n, mean, var = len(xs), xs.mean().item(), xs.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def normalize(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.mean) / math.sqrt(self.var + 1e-8)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, mask, config: RLConfig):
    """The minibatch loss L = L_pi + c_V * L_V over the real reply tokens (mask), and its statistics.

        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        (11) L_pi = E[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps_high)) ]    eps_high = eps unless given
        (12) L_V  = 1/2 E[ max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2) ]
        approx_kl, clipfrac and (14) the ratio threshold: llamalogue.rl.trainer.ratio_statistics
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    policy_loss = masked_mean(clipped_surrogate(ratio, advantages, config.clip_eps, config.clip_eps_high), mask)
    clipped = old_values + (values - old_values).clamp(-config.value_clip_eps, config.value_clip_eps)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
             **ratio_statistics(ratio, log_ratio, mask, config)}
    return (1.0 - stats["skipped"]) * (policy_loss + config.value_coef * value_loss), stats


class PPOTrainer(RLTrainer):
    """PPO's part of the step: the value head (saved with the policy), reward shaping, GAE, the clipped policy and
    value losses (the rollout, the epochs and the state they share: llamalogue.rl.trainer.RLTrainer)."""

    def __init__(self, policy: PolicyWithValue, reference: Llama, config: RLConfig, stop_ids, pad_id: int = 0):
        super().__init__(policy, reference, config, stop_ids, pad_id)
        self.reward_moments = RunningMoments()

    def state_dict(self) -> dict:
        """RLTrainer's, with the value head and the reward statistics."""
        return {**super().state_dict(), "value_head": self.policy.value_head.state_dict(),
                "reward_moments": self.reward_moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.policy.value_head.load_state_dict(state["value_head"])
        self.reward_moments.load_state_dict(state["reward_moments"])

    def advantages(self, batch: Rollout, scores: torch.Tensor) -> Rollout:
        """Shaping (5), GAE (9) and whitening (10): the advantages and value targets of every reply token."""
        cfg = self.config
        kl = kl_estimate(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator) * batch.reply_mask
        task = scores.to(kl.device)
        if cfg.normalize_reward:  # (7)
            self.reward_moments.update(task)
            task = self.reward_moments.normalize(task)
        rewards = token_rewards(task, kl, batch.reply_mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, batch.values, batch.reply_mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, batch.reply_mask)
        return dataclasses.replace(batch, advantages=advantages, returns=returns)

    def loss(self, minibatch: Rollout, logprobs, values) -> tuple[torch.Tensor, dict]:
        return ppo_loss(logprobs, minibatch.logprobs, values, minibatch.values, minibatch.advantages,
                        minibatch.returns, minibatch.reply_mask, self.config)
