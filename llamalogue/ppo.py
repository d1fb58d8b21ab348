"""PPO for a dialogue model: the baby answers the mother, a reward scores the answer, PPO makes good answers likelier.

One PPO step (Schulman et al., 2017; for language models Ziegler et al., 2019 and Stiennon et al., 2020), in the
order `PPOTrainer.step` runs it:

1. rollout   sample a reply to each of B caregiver prompts with the KV cache, then one forward pass of the policy
             (log pi_old(a_t|s_t) and values V(s_t)) and one of the frozen reference (log pi_ref(a_t|s_t)).
2. reward    the task reward r_task(x, y) of each whole reply (BLEU, semantic similarity, LLM score, confidence).
3. shaping   per-token rewards r_t = -beta * KL_t, plus r_task at the reply's last token.
4. GAE       advantages A_t and value targets R_t, computed backwards over the reply tokens.
5. update    a few epochs of minibatch gradient steps on the clipped policy loss plus the clipped value loss.

The episode is one reply: the actions a_1..a_T are its tokens, *including* the stop token that ends it (so that
the policy also learns when to stop); the state s_t is the prompt plus a_1..a_{t-1}. The implementation details,
numbered as in CleanRL's list of PPO details, are marked `# (n)` where the code does them:

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
(14) early stop of the epochs when the approximate KL between old and new policy exceeds a threshold
(15) global gradient-norm clipping
"""

import copy
import csv
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.checkpoint import is_run_dir, load_model, load_state, save_checkpoint
from llamalogue.generation import generate
from llamalogue.model import Llama, default_device
from llamalogue.runlog import RunLog, plot_curves, read_csv
from llamalogue.tokenizer import format_prompt, reply_stop_ids


@dataclass
class PPOConfig:
    # rollouts
    batch_size: int = 16  # episodes (prompts) per PPO step; the paper: 16
    max_new_tokens: int = 20  # reply budget; the paper: 20
    max_prompt_tokens: int = 64  # longer prompts are skipped (and counted) rather than cut
    temperature: float = 1.0  # 1 and no top-k/top-p: the sampling distribution is the policy pi, so KL stays valid
    top_k: int = 0
    top_p: float = 1.0
    unfinished_penalty: float | None = -1.0  # (8) task reward of a reply that never stops; None: score it anyway
    # reward shaping
    kl_coef: float = 0.2  # beta (its starting value when adaptive); TRL's default, which the paper used
    kl_estimator: str = "k1"  # (4) "k1", "abs" (the paper's confidence run) or "k3"
    adaptive_kl: bool = True  # (6)
    kl_target: float = 6.0  # nats per reply
    kl_horizon: int = 10000  # episodes
    normalize_reward: bool = False  # (7)
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
    lr: float = 1.41e-5
    max_grad_norm: float = 1.0  # (15)
    early_stop_kl: float | None = 0.1  # (14) mean per-token approximate KL(pi_old || pi); None: never stop early
    # the run
    total_prompts: int = 2000  # episodes in the whole run (prompts are reshuffled each time they run out)
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
        for name in ("lr", "clip_eps", "value_clip_eps", "max_grad_norm", "temperature", "kl_target", "kl_horizon"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig: {name} ({getattr(self, name)}) must be positive")
        if self.kl_coef < 0 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"PPOConfig: need kl_coef >= 0 ({self.kl_coef}), gamma ({self.gamma}) and lam "
                             f"({self.lam}) in [0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"PPOConfig: kl_estimator {self.kl_estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"PPOConfig: batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")

    @classmethod
    def preset(cls, name: str, **overrides) -> "PPOConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown PPO preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown PPOConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# tiny: tests and smoke runs (seconds). small: the CPU run, 2,000 prompts per reward with the small llamalogue.
# paper: the paper's PPO settings (TRL's PPOConfig defaults with batch 16, minibatch 4, 20 new tokens) on a GPU.
PRESETS = {
    "tiny": dict(batch_size=4, minibatch_size=2, max_new_tokens=8, ppo_epochs=2, total_prompts=16, lr=1e-4,
                 sample_every=1, save_every=2),
    "small": dict(lr=3e-5, max_prompts=500),  # 2,000 episodes = 4 passes over 500 prompts (the paper: 3-4 epochs)
    "paper": dict(total_prompts=20000, sample_every=50, save_every=100),
}


class PolicyWithValue(nn.Module):
    """The language model (the policy) plus a value head that reads the same last hidden state."""

    def __init__(self, lm: Llama):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.dim, 1)
        # (1) zero weights and bias: V(s) = 0 everywhere at the start, so early advantages are the rewards
        # themselves instead of the noise of a random head; the weights still get gradients (through the hidden state).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens, attention_mask, prompt_len: int):
        """-> logits [B, R, V] and values V(s_t) [B, R] of the states that choose the reply's tokens."""
        hidden = reply_hidden(self.lm, tokens, attention_mask, prompt_len)
        return self.lm.lm_head(hidden).float(), self.value_head(hidden).squeeze(-1).float()


def reply_hidden(lm: Llama, tokens, attention_mask, prompt_len: int):
    """The last hidden states of the columns prompt_len - 1 .. T - 2: the states s_t whose next token is the reply's
    t-th token (the reply starts in column prompt_len). Only these go through the output layer, the prompt's do not."""
    return lm(tokens, attention_mask, compute_logits=False)[:, prompt_len - 1 : -1]


def reply_logprobs(logits, tokens, prompt_len: int):
    """log pi(a_t | s_t) of the reply tokens, [B, R], from the reply logits [B, R, V].

    cross_entropy is log_softmax + gather without keeping a second [B, R, V] tensor for the backward pass.
    """
    actions = tokens[:, prompt_len:]
    return -F.cross_entropy(logits.flatten(0, 1), actions.flatten(), reduction="none").view_as(actions)


def reply_entropy(logits):
    """H(pi(. | s_t)) = -sum_a pi(a|s_t) log pi(a|s_t) at every reply position, [B, R] (logged, not optimised)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


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


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


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
    entropy: torch.Tensor  # [B, R] entropy of pi_old(. | s_t)
    replies: list[list[int]]  # the reply tokens without the stop token (what the reward reads)
    stopped: list[bool]  # False: the reply ran out of max_new_tokens


# A scorer gets the rows of the batch that need a task reward and their reply tokens, and returns one reward each.
Scorer = Callable[[list[int], list[list[int]]], list[float]]


class PPOTrainer:
    """The policy (with its value head), the frozen reference, the optimizer, beta and the sampling RNG: `step` runs
    one rollout, scores it and updates the policy."""

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

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        cfg, device = self.config, self.policy.value_head.weight.device
        out = generate(self.policy.lm, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                       self.stop_ids, self.pad_id, self.generator)
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
        return Rollout(tokens, mask, P, mask[:, P:].float(), reply_logprobs(logits, tokens, P),
                       reply_logprobs(ref_logits, tokens, P), values, reply_entropy(logits), out.tokens, out.stopped)

    def scores(self, replies: list, stopped: list[bool], scorer: Scorer) -> torch.Tensor:
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

        history = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": []}
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
        logprobs = reply_logprobs(logits, tokens, P)
        mask, adv, ret = batch.reply_mask[idx, :R], advantages[idx, :R], returns[idx, :R]
        old_values, old_logprobs = batch.values[idx, :R], batch.logprobs[idx, :R]

        log_ratio = logprobs - old_logprobs
        ratio = log_ratio.exp()  # rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        # (11) L_pi = E[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) ]: nothing to gain past 1 +- eps
        policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)), mask)
        # (12) L_V = 1/2 E[ max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2) ]
        clipped = old_values + (values - old_values).clamp(-cfg.value_clip_eps, cfg.value_clip_eps)
        value_loss = 0.5 * masked_mean(torch.max((values - ret) ** 2, (clipped - ret) ** 2), mask)
        loss = policy_loss + cfg.value_coef * value_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)  # (15)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = masked_mean(ratio - 1 - log_ratio, mask)  # k3 estimate of KL(pi_old || pi)
            clipfrac = masked_mean(((ratio - 1).abs() > cfg.clip_eps).float(), mask)
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "clipfrac": clipfrac.item(),
                "approx_kl": approx_kl.item()}

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


# ---------------------------------------------------------------------------------------------------------------
# A PPO run: caregiver prompts in, a run directory out.


class PromptSchedule:
    """The prompt indices of each step: the prompts in a seeded random order, reshuffled whenever they run out.

    A function of (seed, step) alone, so that a resumed run goes on with exactly the prompts it would have seen.
    """

    def __init__(self, n_prompts: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n_prompts, batch_size, seed
        self.orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.orders[epoch] = torch.randperm(self.n, generator=generator).tolist()
        return self.orders[epoch]

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self.order(p // self.n)[p % self.n] for p in positions]

    def prompts_until(self, steps: int) -> list[int]:
        """Every prompt index the first `steps` steps use (each once)."""
        return list(dict.fromkeys(i for step in range(steps) for i in self.batch(step)))


def precompute_references(reward, prompts: list[str], chunk: int = 32) -> None:
    """Fill the reward's teacher references (BLEU, SemSim, confidence) for every prompt of the run before the first
    step, so that no PPO step waits for the teacher to answer the mother; the LLM judge needs none."""
    references = getattr(reward, "references", None)
    if references is None:
        return
    with tqdm(total=len(prompts), unit="prompt", desc="teacher references", dynamic_ncols=True) as bar:
        for start in range(0, len(prompts), chunk):
            references.entries(prompts[start : start + chunk])  # from the JSONL cache, or sampled now and appended
            bar.update(len(prompts[start : start + chunk]))


def sample_replies(lm, tokenizer, prompts: list[str], config: PPOConfig, seed: int) -> tuple[list[str], list[bool]]:
    """One sampled reply per prompt, with the run's sampling settings and a fixed seed (before/after samples)."""
    device = lm.embed.weight.device
    out = generate(lm, [format_prompt(tokenizer, p) for p in prompts], config.max_new_tokens, config.temperature,
                   config.top_k, config.top_p, reply_stop_ids(tokenizer), tokenizer.pad_id,
                   torch.Generator(device=device).manual_seed(seed))
    return [tokenizer.decode(reply).strip() for reply in out.tokens], out.stopped


LOG_PLOTS = {"reward.png": (["reward_mean"], "task reward (mean per step)"),
             "kl.png": (["kl"], "KL(policy || reference) per reply")}


def train(init_dir, out_dir, prompts: list[str], reward, config: PPOConfig, preset: str = "custom",
          max_steps: int | None = None, resume: bool = False, device: str | None = None, run_info: dict | None = None,
          n_samples: int = 10) -> dict:
    """PPO from the run directory init_dir into out_dir; returns the summary (also out_dir/summary.json).

    reward(prompts, replies) -> list[float] (llamalogue.rewards). run_info: extra settings recorded in the config
    (reward name, prompts file, teacher...). With resume, the weights, value head, optimizer, beta, reward statistics,
    RNG and step come from out_dir's checkpoint and the run goes on where it stopped.
    """
    out_dir = Path(out_dir)
    device = device or default_device()
    if not resume and is_run_dir(out_dir):
        raise FileExistsError(f"--out {out_dir}: already holds a run; pass --resume to continue it, or another --out")
    lm, tokenizer = load_model(init_dir, device)
    reference = copy.deepcopy(lm)  # pi_ref: the frozen starting point
    policy = PolicyWithValue(lm).to(device)
    trainer = PPOTrainer(policy, reference, config, reply_stop_ids(tokenizer), tokenizer.pad_id)

    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    encoded = [(p, format_prompt(tokenizer, p)) for p in prompts]
    kept = [(p, ids) for p, ids in encoded if len(ids) <= config.max_prompt_tokens]
    if not kept:
        raise ValueError(f"no prompt fits max_prompt_tokens={config.max_prompt_tokens}")
    n_long = len(encoded) - len(kept)
    if config.max_prompts is not None and len(kept) > config.max_prompts:  # a seeded random subset, in file order
        chosen = torch.randperm(len(kept), generator=torch.Generator().manual_seed(config.seed))[: config.max_prompts]
        kept = [kept[i] for i in sorted(chosen.tolist())]
    texts, prompt_ids = [p for p, _ in kept], [ids for _, ids in kept]
    schedule = PromptSchedule(len(kept), config.batch_size, config.seed)
    total_steps = math.ceil(config.total_prompts / config.batch_size)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    n_params = lm.num_parameters()
    scale = (f"PPO preset {preset}: {total_steps} steps x {config.batch_size} prompts = "
             f"{total_steps * config.batch_size} episodes from {len(kept)} of {len(encoded)} prompts ({n_long} longer "
             f"than {config.max_prompt_tokens} tokens), {config.ppo_epochs} epochs x "
             f"{config.batch_size // config.minibatch_size} minibatches, {n_params / 1e6:.2f}M-parameter model "
             f"on {device}")
    print(scale)
    run_config = {"stage": "ppo", "scale": scale, "preset": preset, "init": str(init_dir), **(run_info or {}),
                  "train": config.to_dict()}

    step = 0
    if resume:
        state = load_state(out_dir, device)
        policy.lm.load_state_dict(state["model"])
        policy.value_head.load_state_dict(state["value_head"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.kl_ctl.value = state["kl_coef"]
        trainer.reward_moments.load_state_dict(state["reward_moments"])
        trainer.generator.set_state(state["generator"].cpu())
        step = state["step"]
        print(f"resuming {out_dir} at step {step}")
    log = RunLog(out_dir, resume=resume)
    if resume:
        drop_rows_after(log.csv_path, step)
    log.write_config(run_config)

    sample_prompts = [texts[i] for i in schedule.order(0)[:n_samples]]  # the first training prompts
    run_prompts = sample_prompts + [texts[i] for i in schedule.prompts_until(total_steps)]
    precompute_references(reward, list(dict.fromkeys(run_prompts)))

    def write_samples(phase: str):
        replies, stopped = sample_replies(policy.lm, tokenizer, sample_prompts, config, seed=config.seed + 1)
        scores = trainer.scores(replies, stopped, lambda rows, texts: reward([sample_prompts[i] for i in rows], texts))
        for prompt, reply, done, score in zip(sample_prompts, replies, stopped, scores.tolist()):
            log.jsonl("samples.jsonl", {"phase": phase, "step": step, "prompt": prompt, "reply": reply,
                                        "stopped": done, "reward": score})

    def save():
        save_checkpoint(out_dir, policy.lm, tokenizer, run_config, {
            "value_head": policy.value_head.state_dict(), "optimizer": trainer.optimizer.state_dict(), "step": step,
            "kl_coef": trainer.kl_ctl.value, "reward_moments": trainer.reward_moments.state_dict(),
            "generator": trainer.generator.get_state()})
        for png, (columns, title) in LOG_PLOTS.items():
            plot_curves(log.csv_path, columns, out_dir / png, f"PPO ({run_config.get('reward', 'reward')}): {title}")

    if step == 0:
        write_samples("before")

    def score_rows(batch: list[int], rows: list[int], replies: list[list[int]]) -> list[float]:
        return reward([texts[batch[i]] for i in rows], [tokenizer.decode(r).strip() for r in replies])

    bar = tqdm(total=total_steps * config.batch_size, initial=step * config.batch_size, unit="prompt",
               desc=f"PPO {run_config.get('reward', '')}", dynamic_ncols=True)
    while step < total_steps:
        batch = schedule.batch(step)
        stats, rollout, scores = trainer.step([prompt_ids[i] for i in batch], functools.partial(score_rows, batch))
        step += 1
        seconds = stats["t_rollout"] + stats["t_reward"] + stats["t_update"]
        log.log({"step": step, "prompts": step * config.batch_size, **stats,
                 "prompts_per_s": config.batch_size / seconds})
        if step % config.sample_every == 0:
            for i in range(min(2, len(batch))):
                log.jsonl("samples.jsonl", {"phase": "train", "step": step, "prompt": texts[batch[i]],
                                            "reply": tokenizer.decode(rollout.replies[i]).strip(),
                                            "stopped": rollout.stopped[i], "reward": scores[i].item()})
        if step % config.save_every == 0 or step == total_steps:
            save()
        bar.update(config.batch_size)
        bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.2f}")
    bar.close()
    write_samples("after")
    summary = summarize(log.csv_path)
    (out_dir / "summary.json").write_text(json.dumps({"scale": scale, **summary}, indent=2) + "\n")
    return summary


def drop_rows_after(csv_path: Path, step: int) -> None:
    """Forget the log rows of steps after the checkpoint a run resumes from: those steps are done again."""
    if not csv_path.exists():
        return
    rows = read_csv(csv_path)
    kept = [row for row in rows if int(row["step"]) <= step]
    if len(kept) < len(rows):
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(csv_path)


def summarize(csv_path) -> dict:
    """Reward and KL at the start and end of the run (means over its first and last tenth) and the step-time split."""
    rows = read_csv(csv_path)
    if not rows:
        return {}
    tenth = max(1, len(rows) // 10)

    def mean(column, part):
        return sum(float(r[column]) for r in part) / len(part)

    summary = {"steps": len(rows)}
    for column in ("reward_mean", "kl", "entropy", "reply_len"):
        summary[column] = {"start": mean(column, rows[:tenth]), "end": mean(column, rows[-tenth:])}
    summary["seconds_per_step"] = {t: mean(f"t_{t}", rows) for t in ("rollout", "reward", "update")}
    return summary
