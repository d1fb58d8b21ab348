"""One step of on-policy RL for a dialogue model, as every algorithm here takes it: sample replies, score them,
update the policy on them.

`RLTrainer.step` runs rollout -> scores -> update. The algorithms differ in two places, which a subclass fills in:
`advantages` (what each reply token is worth) and `loss` (what a minibatch minimises); and DAPO in a third,
`dynamic_sampling` (groups of replies sampled again before the update). PPO (llamalogue.rl.ppo) learns a value head
for its baseline; RLOO, GRPO, Dr. GRPO, GSPO, CISPO and DAPO (llamalogue.rl.group) sample G replies to each prompt
and take the other replies as the baseline. The implementation details marked `# (n)` here are those of
llamalogue.rl.ppo's list that every algorithm shares:

 (2) dropout off everywhere (the models stay in eval mode): log-probs must be deterministic for the ratio
 (3) old log-probs recomputed with the padded forward pass the update uses, so the ratio is exactly 1 before the
     first update
(13) several epochs over shuffled minibatches, (14) their early stop, (15) gradient-norm clipping
(16) every log-probability -- old, new and reference -- is that of the distribution the reply was sampled from
(17) collapse in plain sight: distinct_frac and top_reply_frac over the step's sampled replies
"""

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llamalogue.generation import Generation, filter_logits, generate
from llamalogue.model import Llama
from llamalogue.rl.config import RLConfig
from llamalogue.rl.guards import repeat_penalty
from llamalogue.rl.kl import AdaptiveKLController


def reply_hidden(lm: Llama, tokens, attention_mask, prompt_len: int):
    """The last hidden states of the columns prompt_len - 1 .. T - 2: the states s_t whose next token is the reply's
    t-th token (the reply starts in column prompt_len). Only these go through the output layer, the prompt's do not."""
    return lm(tokens, attention_mask, compute_logits=False)[:, prompt_len - 1 : -1]


def kept_tokens(logits, actions, config: RLConfig):
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


def clipped_surrogate(ratio, advantages, eps_low: float, eps_high: float):
    """(11) The clipped policy loss of every token, max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high)):
    nothing to gain from moving the ratio out of [1 - eps_low, 1 + eps_high] (PPO: eps_low = eps_high; DAPO's
    "clip-higher" leaves more room above). At rho = 1 its gradient is REINFORCE's, -A_t grad log pi."""
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - eps_low, 1 + eps_high))


def outside_clip_range(ratio, config: RLConfig):
    """1{rho < 1 - eps_low or rho > 1 + eps_high}: where the clip holds the ratio back."""
    return ((ratio < 1 - config.clip_eps) | (ratio > 1 + config.clip_eps_high)).float()


@torch.no_grad()
def ratio_statistics(ratio, log_ratio, mask, config: RLConfig) -> dict:
    """How far the minibatch's policy has moved from the one that sampled it:

        clipfrac  = E[ outside_clip_range(rho) ]  the share of tokens whose ratio the clip holds back
        approx_kl = E[ (rho - 1) - log rho ]      the k3 estimate of KL(pi_old || pi), for the early stop (14)
        skipped   = 1{E[rho] > ratio_threshold}   (14) TRL's guard: such a minibatch makes no update
    """
    approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    clipfrac = masked_mean(outside_clip_range(ratio, config), mask)
    # a policy this far from the sampling one has left the region where its samples say anything: TRL zeroes such a
    # minibatch's loss rather than stopping the epochs
    skipped = config.ratio_threshold is not None and masked_mean(ratio, mask).item() > config.ratio_threshold
    return {"clipfrac": clipfrac.item(), "approx_kl": approx_kl.item(), "skipped": float(skipped)}


@dataclass
class Rollout:
    """B episodes side by side: prompts left-padded to prompt_len columns, then the replies right-padded."""

    tokens: torch.Tensor  # [B, P + R]
    mask: torch.Tensor  # [B, P + R] 1 = real token
    prompt_len: int  # P: every reply starts in this column
    reply_mask: torch.Tensor  # [B, R] float, 1 = a real action
    logprobs: torch.Tensor  # [B, R] log pi_old(a_t | s_t)
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(a_t | s_t)
    values: torch.Tensor | None  # [B, R] V_old(s_t); None: no value head
    entropy: torch.Tensor  # [B, R] entropy of q_old(. | s_t)
    keep: torch.Tensor | None  # [B, R, V] (16) the tokens top-k/top-p kept at each state; None: all
    replies: list[list[int]]  # the reply tokens without the stop token (what the reward reads)
    stopped: list[bool]  # False: the reply ran out of max_new_tokens
    advantages: torch.Tensor | None = None  # [B, R] A_t of every action, the algorithm's, set before the update
    returns: torch.Tensor | None = None  # [B, R] the value targets, where the algorithm has a value head
    dropped: torch.Tensor | None = None  # [B] bool: replies left out of the loss (DAPO's tied groups); None: none

    @property
    def actions(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len :]

    def episodes(self) -> tuple[list[list[int]], list[list[int]]]:
        """Each row's prompt and actions (the reply with its stop token) as token lists: what `assemble` pads."""
        P = self.prompt_len
        return ([row[real].tolist() for row, real in zip(self.tokens[:, :P], self.mask[:, :P].bool())],
                [row[real].tolist() for row, real in zip(self.tokens[:, P:], self.mask[:, P:].bool())])

    def minibatch(self, idx: torch.Tensor) -> "Rollout":
        """The rows idx, on the columns where one of them has a real token only: a long prompt or reply elsewhere in
        the batch costs nothing here. Column prompt_len - 1 is real in every row (each prompt has at least BOS)."""
        real_columns = self.mask[idx].any(0).nonzero().squeeze(1)
        first, end = real_columns[0].item(), real_columns[-1].item() + 1
        R = end - self.prompt_len
        per_action = [None if x is None else x[idx, :R] for x in (self.reply_mask, self.logprobs, self.ref_logprobs,
                                                                  self.values, self.entropy, self.keep)]
        rows = idx.tolist()
        return Rollout(self.tokens[idx, first:end], self.mask[idx, first:end], self.prompt_len - first, *per_action,
                       [self.replies[i] for i in rows], [self.stopped[i] for i in rows],
                       *(None if x is None else x[idx, :R] for x in (self.advantages, self.returns)),
                       None if self.dropped is None else self.dropped[idx])


def with_stop(reply: list[int], stop: int | None) -> list[int]:
    """A reply's actions: its tokens and the stop token that ended it (none when it ran out of max_new_tokens)."""
    return reply + [stop] if stop is not None else reply


# A scorer gets the rows of the batch that need a task reward and their reply tokens (without the stop token), and
# returns one reward each.
Scorer = Callable[[list[int], list[list[int]]], list[float]]


class RLTrainer:
    """The policy, the frozen reference, the optimizer, beta and the sampling RNG: `step` runs one rollout, scores it
    and updates the policy; `state_dict` is everything a resumed run needs to go on exactly.

    The policy is a module with the language model as `.lm` whose forward gives the reply logits and the values (None
    without a value head). A subclass defines `advantages(batch, scores)` and `loss(minibatch, logprobs, values)`."""

    def __init__(self, policy: nn.Module, reference: Llama, config: RLConfig, stop_ids, pad_id: int = 0):
        self.policy, self.reference, self.config = policy, reference, config
        self.stop_ids, self.pad_id = set(stop_ids), pad_id
        # (2) eval mode for good: no dropout, so the forward passes of rollout and update agree exactly
        self.policy.eval()
        self.reference.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def state_dict(self) -> dict:
        """The policy's weights ("model", as every checkpoint names them), the optimizer, beta and the sampling RNG
        (the reference is the --init run's model: not saved again)."""
        return {"model": self.policy.lm.state_dict(), "optimizer": self.optimizer.state_dict(),
                "kl_coef": self.kl_ctl.value, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.lm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto the GPU moved it there

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator, reference: bool = False) -> Generation:
        """Replies to the prompts, sampled the way the rollout samples them, with the given RNG; reference=True: by
        the frozen reference pi_ref instead of the policy (PAR's y_ref, the generic replies: llamalogue.rl.judge)."""
        cfg = self.config
        return generate(self.reference if reference else self.policy.lm, prompts, cfg.max_new_tokens,
                        cfg.temperature, cfg.top_k, cfg.top_p, self.stop_ids, self.pad_id, generator)

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        """group_size replies to each prompt: rows g * G .. g * G + G - 1 answer prompts[g]."""
        cfg = self.config
        prompts = [prompt for prompt in prompts for _ in range(cfg.group_size)]
        out = self.sample(prompts, self.generator)
        return self.assemble(prompts, [with_stop(reply, stop) for reply, stop in zip(out.tokens, out.stop_tokens)],
                             out.tokens, out.stopped)

    @torch.no_grad()
    def assemble(self, prompts: list[list[int]], actions: list[list[int]], replies: list[list[int]],
                 stopped: list[bool]) -> Rollout:
        """The episodes side by side, with log pi_old and log pi_ref of every action (and values, entropy, K(s))."""
        cfg = self.config
        P, R = max(map(len, prompts)), max(map(len, actions))
        tokens = torch.full((len(prompts), P + R), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for row, (prompt, action) in enumerate(zip(prompts, actions)):
            tokens[row, P - len(prompt) : P + len(action)] = torch.tensor(prompt + action)
            mask[row, P - len(prompt) : P + len(action)] = 1
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        # (3) recompute log pi_old with the same padded forward pass the update uses: ratio = 1 before any step
        logits, values = self.policy(tokens, mask, P)
        ref_logits = self.reference.lm_head(reply_hidden(self.reference, tokens, mask, P)).float()
        actions, T = tokens[:, P:], cfg.logprob_temperature
        keep = kept_tokens(logits, actions, cfg) if cfg.warped_logprobs else None  # (16) one K(s) for old, new, ref
        return Rollout(tokens, mask, P, mask[:, P:].float(), sampling_logprobs(logits, actions, T, keep),
                       sampling_logprobs(ref_logits, actions, T, keep), values, sampling_entropy(logits, T, keep),
                       keep, replies, stopped)

    def scores(self, replies: list[list[int]], stopped: list[bool], scorer: Scorer) -> torch.Tensor:
        """The task reward of each reply; (8) a reply that never stopped gets the fixed penalty instead."""
        penalty = self.config.unfinished_penalty
        rows = [i for i, done in enumerate(stopped) if done or penalty is None]
        scores = torch.full((len(replies),), 0.0 if penalty is None else penalty)
        if rows:
            scores[rows] = torch.tensor(scorer(rows, [replies[i] for i in rows]), dtype=torch.float)
        return scores

    def dynamic_sampling(self, batch: Rollout, scores: torch.Tensor,
                         scorer: Scorer) -> tuple[Rollout, torch.Tensor, dict]:
        """The batch and its task rewards to update on, and statistics: the rollout's as they are; DAPO samples
        groups again (llamalogue.rl.group)."""
        return batch, scores, {}

    def advantages(self, batch: Rollout, scores: torch.Tensor) -> Rollout:
        """The batch with the advantages of its actions (and value targets, with a value head): the algorithm's."""
        raise NotImplementedError

    def loss(self, minibatch: Rollout, logprobs, values) -> tuple[torch.Tensor, dict]:
        """The minibatch's loss from the current policy's log-probs (and values) of its actions, and its statistics:
        the algorithm's."""
        raise NotImplementedError

    def update(self, batch: Rollout, scores: torch.Tensor) -> dict:
        """The advantages and the epochs on one rollout; returns the step's statistics. With config.repeat_penalty
        c > 0 each reply's task reward first loses c * (n_i - 1) / B (llamalogue.rl.guards.repeat_penalty): the
        batch here is the one the update sees, DAPO's after its resampling, whatever the algorithm."""
        cfg = self.config
        penalty = repeat_penalty(batch.replies, cfg.repeat_penalty).to(scores) if cfg.repeat_penalty else None
        if penalty is not None:
            scores = scores - penalty  # r'_i = r_i - c * (n_i - 1) / B
        batch = self.advantages(batch, scores)
        history = {}
        early_stop = False
        for _ in range(cfg.ppo_epochs):  # (13)
            order = torch.randperm(len(scores), generator=self.generator, device=self.generator.device)
            order = order.to(self.device)
            for start in range(0, len(order), cfg.minibatch_size):
                stats = self.minibatch_step(batch.minibatch(order[start : start + cfg.minibatch_size]))
                for name, value in stats.items():
                    history.setdefault(name, []).append(value)
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
            "updates": len(history["approx_kl"]),
            "reply_len": batch.reply_mask.sum(1).mean().item(),
            "unfinished": 1 - sum(batch.stopped) / len(batch.stopped),
            **reply_diversity(batch.replies),  # (17)
            **({} if penalty is None else {"repeat_penalty_mean": penalty.mean().item()}),
        }

    def policy_logprobs(self, minibatch: Rollout) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(16) log pi(a_t | s_t) of the minibatch's actions under the current policy, and its values."""
        logits, values = self.policy(minibatch.tokens, minibatch.mask, minibatch.prompt_len)
        logprobs = sampling_logprobs(logits, minibatch.actions, self.config.logprob_temperature, minibatch.keep)
        return logprobs, values

    def minibatch_step(self, minibatch: Rollout) -> dict:
        loss, stats = self.loss(minibatch, *self.policy_logprobs(minibatch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)  # (15)
        self.optimizer.step()
        return stats

    def step(self, prompts: list[list[int]], scorer: Scorer) -> tuple[dict, Rollout, torch.Tensor]:
        """One step on a batch of prompts: -> (statistics with the time split, the rollout, the task rewards)."""
        t0 = time.perf_counter()
        batch = self.rollout(prompts)
        t1 = time.perf_counter()
        scores = self.scores(batch.replies, batch.stopped, scorer)
        t2 = time.perf_counter()
        batch, scores, sampling = self.dynamic_sampling(batch, scores, scorer)
        t3 = time.perf_counter()
        stats = self.update(batch, scores)
        t4 = time.perf_counter()
        times = {"t_rollout": t1 - t0, "t_reward": t2 - t1, **({"t_resample": t3 - t2} if sampling else {}),
                 "t_update": t4 - t3}
        return {**stats, **sampling, **times}, batch, scores
