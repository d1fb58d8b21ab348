"""PPO for a dialogue model: the baby answers the mother, a reward scores the answer, PPO makes good answers likelier.

One PPO step (Schulman et al., 2017; for language models Ziegler et al., 2019 and Stiennon et al., 2020), in the
order `PPOTrainer.step` runs it:

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
code does them ((4) and (6), the KL penalty, in llamalogue.rl.kl):

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

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llamalogue.generation import Generation, filter_logits, generate
from llamalogue.rl.kl import KL_ESTIMATORS, AdaptiveKLController, kl_estimate
from llamalogue.model import Llama
from llamalogue.presets import Presets


# tiny: tests and smoke runs (seconds). small: the CPU run, 2,000 prompts per reward with the small llamalogue
# (2,000 episodes = 4 passes over 500 prompts; the paper: 3-4 epochs). paper: the paper's scripts (github
# fpadovani/communicative_baby_ppo) on TRL 0.8.6, whose PPOConfig defaults fill in what they leave unset: batch 16,
# minibatch 4, 4 PPO epochs, lr 1.41e-5, adaptive KL from beta 0.2 (target 6, horizon 10,000), k1, gamma 1, lambda
# 0.95, clip 0.2 (policy and value), value coefficient 0.1, no reward scaling, no gradient clipping, no early stop (but
# no update from a minibatch whose mean ratio exceeds 10), no penalty for unfinished replies; replies of at most 20 new
# tokens sampled with top-p 0.9 and top-k 50 (transformers' default, left on) at temperature 1; the rewards as its
# scripts compute them. The README lists how small differs.
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=4, minibatch_size=2, max_new_tokens=8, ppo_epochs=2, total_prompts=16,
                 lr=1e-4, sample_every=1, save_every=2),
    "small": dict(preset="small", lr=3e-5, max_prompts=500),
    "paper": dict(preset="paper", reward_style="paper", warped_logprobs=False, value_head="random", top_k=50,
                  top_p=0.9, unfinished_penalty=None,
                  max_grad_norm=None, early_stop_kl=None, ratio_threshold=10.0, total_prompts=20000, sample_every=50,
                  save_every=100),  # total_prompts: pmi and preference; the paper's four rewards, PRESET_BY_REWARD
}


@dataclass
class PPOConfig(Presets):
    preset: str = "small"  # the name of the preset the run started from (recorded, shown in the run's scale line)
    # rollouts
    batch_size: int = 16  # episodes (prompts) per PPO step; the paper: 16
    max_new_tokens: int = 20  # reply budget; the paper: 20
    max_prompt_tokens: int = 64  # longer prompts are skipped (and counted) rather than cut
    temperature: float = 1.0  # (16) any setting stays on-policy: log-probs come from the warped distribution
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    unfinished_penalty: float | None = -1.0  # (8) task reward of a reply that never stops; None: score it anyway
    warped_logprobs: bool = True  # (16) False: ratio and KL from the raw softmax at temperature 1, as TRL 0.8.6 did
    # reward shaping
    kl_coef: float = 0.2  # beta (its starting value when adaptive); TRL's default, which the paper used
    kl_estimator: str = "k1"  # (4) "k1", "abs" (the paper's confidence run) or "k3"
    adaptive_kl: bool = True  # (6)
    kl_target: float = 6.0  # nats per reply
    kl_horizon: int = 10000  # episodes
    normalize_reward: bool = False  # (7)
    reward_style: str = "ours"  # the rewards' rules (llamalogue.rl.rewards.STYLES): "ours" or "paper" (its scripts')
    # advantages
    gamma: float = 1.0  # (9)
    lam: float = 0.95
    whiten_advantages: bool = True  # (10)
    # update
    ppo_epochs: int = 4  # (13)
    minibatch_size: int = 4
    clip_eps: float = 0.2  # (11)
    value_clip_eps: float = 0.2  # (12)
    value_coef: float = 0.1  # weight of the value loss: the value head shares the model's trunk
    value_head: str = "zero"  # (1) its initial weights: "zero" (V = 0 at the start) or "random" (nn.Linear's, as TRL)
    lr: float = 1.41e-5
    max_grad_norm: float | None = 1.0  # (15) None: no clipping
    early_stop_kl: float | None = 0.1  # (14) mean per-token approximate KL(pi_old || pi); None: never stop early
    ratio_threshold: float | None = None  # (14) a minibatch whose mean ratio exceeds it makes no update (TRL: 10)
    # the run
    total_prompts: int = 2000  # episodes in the whole run (prompts are reshuffled each time they run out)
    max_steps: int = 0  # > 0: stop after this many PPO steps (--resume goes on to total_prompts)
    max_prompts: int | None = None  # distinct prompts to draw episodes from (None: all); bounds the teacher's work
    sample_every: int = 10  # steps between sample replies written to samples.jsonl
    save_every: int = 25  # steps between checkpoints
    seed: int = 0

    def __post_init__(self):
        at_least_one = ("batch_size", "minibatch_size", "max_new_tokens", "max_prompt_tokens", "ppo_epochs",
                        "total_prompts", "sample_every", "save_every")
        for name in at_least_one + (("max_prompts",) if self.max_prompts is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig: {name} ({getattr(self, name)}) must be at least 1")
        positive = ("lr", "clip_eps", "value_clip_eps", "temperature", "kl_target", "kl_horizon")
        for name in positive + (("max_grad_norm",) if self.max_grad_norm is not None else ()):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig: {name} ({getattr(self, name)}) must be positive")
        if self.kl_coef < 0 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"PPOConfig: need kl_coef >= 0 ({self.kl_coef}), gamma ({self.gamma}) and lam "
                             f"({self.lam}) in [0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"PPOConfig: kl_estimator {self.kl_estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"PPOConfig: need top_k >= 0 ({self.top_k}) and top_p in (0, 1] ({self.top_p})")
        self.check_at_least(0, "max_steps")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"PPOConfig: batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")

    @property
    def logprob_temperature(self) -> float:
        """(16) The temperature of the distribution whose log-probs the ratio and the KL use."""
        return self.temperature if self.warped_logprobs else 1.0

    presets = PRESETS
    # What a resumed run may change: how long it runs (episodes, where it stops) and how often it reports and saves.
    resume_may_change = frozenset({"total_prompts", "max_steps", "sample_every", "save_every"})

    @classmethod
    def from_preset(cls, name: str, reward: str | None = None, **overrides) -> "PPOConfig":
        """The preset's settings, then those it sets for this reward (PRESET_BY_REWARD), then the overrides."""
        return super().from_preset(name, **{**PRESET_BY_REWARD.get((name, reward), {}), **overrides})


# What a preset sets for one reward only. The paper's confidence script (ppo_training_conf.py) changed four settings;
# and each reward ran as long as the checkpoint the paper evaluated (its evaluate_*.py and plot_reward.py): bleu and
# semsim `epoch-1` = 13,750 steps of 16 = 220,000 episodes, llm `checkpoint-5000` = 80,000, confidence `epoch-1` =
# 8,645 steps = 138,320.
PRESET_BY_REWARD = {
    ("paper", "bleu"): dict(total_prompts=220_000),
    ("paper", "semsim"): dict(total_prompts=220_000),
    ("paper", "llm"): dict(total_prompts=80_000),
    ("paper", "confidence"): dict(lr=5e-6, minibatch_size=2, kl_estimator="abs", kl_coef=0.02, total_prompts=138_320),
}


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


def reply_hidden(lm: Llama, tokens, attention_mask, prompt_len: int):
    """The last hidden states of the columns prompt_len - 1 .. T - 2: the states s_t whose next token is the reply's
    t-th token (the reply starts in column prompt_len). Only these go through the output layer, the prompt's do not."""
    return lm(tokens, attention_mask, compute_logits=False)[:, prompt_len - 1 : -1]


def kept_tokens(logits, actions, config: "PPOConfig"):
    """(16) K(s_t): the tokens that top-k/top-p leave to sample from, [B, R, V] bool; None when neither is on.

    Computed again from the rollout's recomputed logits, which agree with the sampling loop's up to float noise; the
    sampled token is kept in any case, so that noise at the nucleus' edge can never give it probability 0."""
    if config.top_k == 0 and config.top_p == 1.0:
        return None
    keep = torch.isfinite(filter_logits(logits, config.temperature, config.top_k, config.top_p))
    return keep.scatter(-1, actions[..., None], True)


def sampling_logprobs(logits, actions, temperature: float = 1.0, keep=None):
    """(16) log q(a_t | s_t) of the actions [B, R] under the sampling distribution, from the reply logits [B, R, V]:

        q(a | s) = exp(z_a / T) / sum_{b in K(s)} exp(z_b / T)      (K(s) = every token when keep is None)

    cross_entropy is log_softmax + gather without keeping a second [B, R, V] tensor for the backward pass.
    """
    logits = logits / temperature
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    return -F.cross_entropy(logits.flatten(0, 1), actions.flatten(), reduction="none").view_as(actions)


def sampling_entropy(logits, temperature: float = 1.0, keep=None):
    """H(q(. | s_t)) = -sum_a q(a|s_t) log q(a|s_t) at every reply position, [B, R] (logged, not optimised)."""
    logits = logits / temperature
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.special.entr(logits.softmax(-1)).sum(-1)  # entr(q) = -q log q, 0 where q = 0


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def reply_diversity(replies: list[list[int]]) -> dict:
    """(17) distinct_frac = distinct replies / B; top_reply_frac = count of the most frequent reply / B."""
    counts = Counter(map(tuple, replies))
    return {"distinct_frac": len(counts) / len(replies), "top_reply_frac": max(counts.values()) / len(replies)}


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


def ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, mask, config: "PPOConfig"):
    """The minibatch loss L = L_pi + c_V * L_V over the real reply tokens (mask), and its statistics.

        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        (11) L_pi = E[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) ]     nothing to gain past 1 +- eps
        (12) L_V  = 1/2 E[ max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2) ]
        approx_kl = E[ (rho - 1) - log rho ]      the k3 estimate of KL(pi_old || pi), for the early stop (14)
        clipfrac  = E[ 1{|rho - 1| > eps} ]       the share of tokens whose ratio the clip holds back
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    adv, eps = advantages, config.clip_eps
    policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)), mask)
    clipped = old_values + (values - old_values).clamp(-config.value_clip_eps, config.value_clip_eps)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1).abs() > eps).float(), mask)
        # (14) a policy this far from the sampling one has left the region where its samples say anything: TRL
        # zeroes such a minibatch's loss (ratio_threshold) rather than stopping the epochs
        skipped = config.ratio_threshold is not None and masked_mean(ratio, mask).item() > config.ratio_threshold
    stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "clipfrac": clipfrac.item(),
             "approx_kl": approx_kl.item(), "skipped": float(skipped)}
    return (0.0 if skipped else 1.0) * (policy_loss + config.value_coef * value_loss), stats


@dataclass
class Rollout:
    """B episodes side by side: prompts left-padded to prompt_len columns, then the replies right-padded."""

    tokens: torch.Tensor  # [B, P + R]
    mask: torch.Tensor  # [B, P + R] 1 = real token
    prompt_len: int  # P: every reply starts in this column
    reply_mask: torch.Tensor  # [B, R] float, 1 = a real action
    logprobs: torch.Tensor  # [B, R] log pi_old(a_t | s_t)
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(a_t | s_t)
    values: torch.Tensor  # [B, R] V_old(s_t)
    entropy: torch.Tensor  # [B, R] entropy of q_old(. | s_t)
    keep: torch.Tensor | None  # [B, R, V] (16) the tokens top-k/top-p kept at each state; None: all
    replies: list[list[int]]  # the reply tokens without the stop token (what the reward reads)
    stopped: list[bool]  # False: the reply ran out of max_new_tokens


# A scorer gets the rows of the batch that need a task reward and their reply tokens (without the stop token), and
# returns one reward each.
Scorer = Callable[[list[int], list[list[int]]], list[float]]


class PPOTrainer:
    """The policy (with its value head), the frozen reference, the optimizer, beta and the sampling RNG: `step` runs
    one rollout, scores it and updates the policy; `state_dict` is everything a resumed run needs to go on exactly."""

    def __init__(self, policy: PolicyWithValue, reference: Llama, config: PPOConfig, stop_ids, pad_id: int = 0):
        self.policy, self.reference, self.config = policy, reference, config
        self.stop_ids, self.pad_id = set(stop_ids), pad_id
        # (2) eval mode for good: no dropout, so the forward passes of rollout and update agree exactly
        self.policy.eval()
        self.reference.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)
        self.reward_moments = RunningMoments()
        self.generator = torch.Generator(device=policy.value_head.weight.device).manual_seed(config.seed)

    def state_dict(self) -> dict:
        """The policy's weights ("model", as every checkpoint names them), the value head, the optimizer, beta, the
        reward statistics and the sampling RNG (the reference is the --init run's model: not saved again)."""
        return {"model": self.policy.lm.state_dict(), "value_head": self.policy.value_head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value,
                "reward_moments": self.reward_moments.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.lm.load_state_dict(state["model"])
        self.policy.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.reward_moments.load_state_dict(state["reward_moments"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto the GPU moved it there

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator) -> Generation:
        """Replies to the prompts, sampled the way the rollout samples them, with the given RNG."""
        cfg = self.config
        return generate(self.policy.lm, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                        self.stop_ids, self.pad_id, generator)

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        cfg, device = self.config, self.policy.value_head.weight.device
        out = self.sample(prompts, self.generator)
        actions = [reply + [stop] if stop is not None else reply for reply, stop in zip(out.tokens, out.stop_tokens)]
        P, R = max(map(len, prompts)), max(map(len, actions))
        tokens = torch.full((len(prompts), P + R), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for row, (prompt, action) in enumerate(zip(prompts, actions)):
            tokens[row, P - len(prompt) : P + len(action)] = torch.tensor(prompt + action)
            mask[row, P - len(prompt) : P + len(action)] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        # (3) recompute log pi_old with the same padded forward pass the update uses: ratio = 1 before any step
        logits, values = self.policy(tokens, mask, P)
        ref_logits = self.reference.lm_head(reply_hidden(self.reference, tokens, mask, P)).float()
        actions, T = tokens[:, P:], cfg.logprob_temperature
        keep = kept_tokens(logits, actions, cfg) if cfg.warped_logprobs else None  # (16) one K(s) for old, new, ref
        return Rollout(tokens, mask, P, mask[:, P:].float(), sampling_logprobs(logits, actions, T, keep),
                       sampling_logprobs(ref_logits, actions, T, keep), values, sampling_entropy(logits, T, keep),
                       keep, out.tokens, out.stopped)

    def scores(self, replies: list[list[int]], stopped: list[bool], scorer: Scorer) -> torch.Tensor:
        """The task reward of each reply; (8) a reply that never stopped gets the fixed penalty instead."""
        penalty = self.config.unfinished_penalty
        rows = [i for i, done in enumerate(stopped) if done or penalty is None]
        scores = torch.full((len(replies),), 0.0 if penalty is None else penalty)
        if rows:
            scores[rows] = torch.tensor(scorer(rows, [replies[i] for i in rows]), dtype=torch.float)
        return scores

    def update(self, batch: Rollout, scores: torch.Tensor) -> dict:
        """Shaping, GAE and the PPO epochs on one rollout; returns the step's statistics."""
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

        history = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": [], "skipped": []}
        early_stop = False
        for _ in range(cfg.ppo_epochs):  # (13)
            order = torch.randperm(len(scores), generator=self.generator, device=self.generator.device).to(kl.device)
            for start in range(0, len(order), cfg.minibatch_size):
                stats = self._minibatch_step(batch, advantages, returns, order[start : start + cfg.minibatch_size])
                for name, value in stats.items():
                    history[name].append(value)
                # (14) the new policy has moved too far from the one that sampled the data: its samples no longer
                # estimate the new policy's advantage well, so the remaining epochs are skipped
                if cfg.early_stop_kl is not None and stats["approx_kl"] > cfg.early_stop_kl:
                    early_stop = True
                    break
            if early_stop:
                break

        # the k1 sum over a reply is the unbiased estimate of the sequence-level KL(pi || pi_ref), whatever the penalty
        sequence_kl = ((batch.logprobs - batch.ref_logprobs) * batch.reply_mask).sum(1).mean().item()
        beta = self.kl_ctl.value
        self.kl_ctl.update(sequence_kl, len(scores))
        return {
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std(unbiased=False).item(),
            "kl": sequence_kl,
            "kl_coef": beta,
            "entropy": masked_mean(batch.entropy, batch.reply_mask).item(),
            **{name: sum(v) / len(v) for name, v in history.items()},
            "updates": len(history["clipfrac"]),
            "reply_len": batch.reply_mask.sum(1).mean().item(),
            "unfinished": 1 - sum(batch.stopped) / len(batch.stopped),
            **reply_diversity(batch.replies),  # (17)
        }

    def _minibatch_step(self, batch: Rollout, advantages, returns, idx) -> dict:
        cfg = self.config
        # Only the columns where some row of the minibatch has a real token: a long prompt or reply elsewhere in the
        # batch costs nothing here. Column prompt_len - 1 is real in every row (each prompt has at least BOS).
        real_columns = batch.mask[idx].any(0).nonzero().squeeze(1)
        first, end = real_columns[0].item(), real_columns[-1].item() + 1
        P, R = batch.prompt_len - first, end - batch.prompt_len
        tokens = batch.tokens[idx, first:end]
        logits, values = self.policy(tokens, batch.mask[idx, first:end], P)
        keep = None if batch.keep is None else batch.keep[idx, :R]
        logprobs = sampling_logprobs(logits, tokens[:, P:], cfg.logprob_temperature, keep)  # (16)
        loss, stats = ppo_loss(logprobs, batch.logprobs[idx, :R], values, batch.values[idx, :R], advantages[idx, :R],
                               returns[idx, :R], batch.reply_mask[idx, :R], cfg)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)  # (15)
        self.optimizer.step()
        return stats

    def step(self, prompts: list[list[int]], scorer: Scorer) -> tuple[dict, Rollout, torch.Tensor]:
        """One PPO step on a batch of prompts: -> (statistics with the time split, the rollout, the task rewards)."""
        t0 = time.perf_counter()
        batch = self.rollout(prompts)
        t1 = time.perf_counter()
        scores = self.scores(batch.replies, batch.stopped, scorer)
        t2 = time.perf_counter()
        stats = self.update(batch, scores)
        t3 = time.perf_counter()
        return {**stats, "t_rollout": t1 - t0, "t_reward": t2 - t1, "t_update": t3 - t2}, batch, scores
