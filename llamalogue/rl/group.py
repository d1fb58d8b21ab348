"""Critic-free RL for a dialogue model: RLOO, GRPO, Dr. GRPO, GSPO, CISPO and DAPO sample G replies to each caregiver
prompt and judge each reply against the others, with no value head to learn.

One step, in the order `RLTrainer.step` runs it with GroupTrainer's parts (the rollout, the epochs and the on-policy
log-probs are PPO's: llamalogue.rl.trainer):

1. rollout     G replies to each of B / G prompts (B = batch_size, the replies of the step), log pi_old and log pi_ref
               of every reply token.
2. reward      the task reward r_i of each reply (llamalogue.rl.rewards), the unfinished penalty (8) as in PPO.
   DAPO only:  dynamic sampling (`GroupTrainer.dynamic_sampling`): a group whose G task rewards are all equal is
               sampled again, to the same prompt, at most dynamic_sampling_tries times; still tied, it is dropped
               from the loss. (DAPO draws new prompts until the batch holds no tied group; our step's prompts are
               fixed by the schedule, so that a run resumes exactly.)
3. advantages  one number per reply from its group of G (`group_advantages`), given to every token of the reply:

     RLOO      A_i = R_i - 1/(G-1) sum_{j != i} R_j    R_i = r_i - beta * sum_t KL_t      (Ahmadian et al., 2024)
     GRPO      A_i = (r_i - mean_j r_j) / (std_j r_j + eps)                                 (Shao et al., 2024)
     Dr. GRPO  A_i = r_i - mean_j r_j                                                       (Liu et al., 2025)
     GSPO, CISPO and DAPO: GRPO's

   RLOO keeps the KL penalty in the reward, as PPO does (KL_t by the run's kl_estimator); the others put it in the
   loss instead, always with the k3 estimator (the GSPO, CISPO and DAPO papers set beta = 0: `--kl-coef 0 --fixed-kl`).
4. update      epochs of minibatches (`group_loss`), rho_it = pi(a_t|s_t) / pi_old(a_t|s_t) the ratio of a token,
               [1 - eps_low, 1 + eps_high] the clip range (config.clip_eps, clip_eps_high):

     RLOO, GRPO, Dr. GRPO, DAPO   l_it = max(-A_i rho_it, -A_i clip(rho_it, 1 - eps_low, 1 + eps_high))
                                  (DAPO's "clip-higher": eps_high = 0.28 > eps_low = 0.2)
     GSPO      l_i  = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high))   one ratio per reply:
               s_i  = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| sum_t log rho_it)    (Zheng et al., 2025)
     CISPO     l_it = -sg(clip(rho_it, 1 - eps_low, 1 + eps_high)) * A_i * log pi(a_t|s_t)     (MiniMax, 2025)
               the clipped ratio is a weight with no gradient: every token's log-prob keeps its gradient

   With one epoch of one minibatch the ratios are exactly 1 and every one of these gradients is REINFORCE's,
   -A_i grad log pi(a_t) on each token, scaled as the tokens' losses add up:

     GRPO, GSPO     1/B sum_i 1/|y_i| sum_t (l_it + beta * k3_it)   the mean over each reply's tokens, then over the
                                                                    minibatch's B replies (GSPO's l_i is one per reply)
     Dr. GRPO       1/B sum_i 1/L sum_t (l_it + beta * k3_it)       L = max_new_tokens: no reply length in the loss
     RLOO           1/B sum_i 1/L sum_t l_it                        REINFORCE's sequence log-prob, scaled by 1/L
     CISPO, DAPO    sum_i sum_t (l_it + beta * k3_it) / sum_i |y_i|     the mean over the minibatch's tokens

The scale of Dr. GRPO's and RLOO's loss thus does not depend on how long the replies are: a long reply's tokens
weigh as much as a short reply's, where GRPO's per-reply mean gives each token of a short reply more weight. DAPO's
and CISPO's token mean also weighs every token the same, so a long reply counts for more than a short one.
"""

import dataclasses

import torch
import torch.nn as nn

from llamalogue.model import Llama
from llamalogue.rl.config import RLConfig
from llamalogue.rl.kl import kl_estimate
from llamalogue.rl.trainer import (RLTrainer, Rollout, Scorer, clipped_surrogate, masked_mean, outside_clip_range,
                                    ratio_statistics, reply_hidden, with_stop)

GRPO_STD_EPS = 1e-4  # TRL's GRPOTrainer: keeps a group of near-equal rewards from blowing its advantages up
STD_SCALED = ("grpo", "gspo", "cispo", "dapo")  # the algorithms with GRPO's advantages
TOKEN_MEAN = ("cispo", "dapo")  # the algorithms whose loss is the mean over the minibatch's tokens


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
        gspo, cispo, dapo: grpo's
    """
    groups = rewards.view(-1, group_size)
    if algorithm == "rloo":
        others_mean = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
        return (groups - others_mean).flatten()
    centred = groups - groups.mean(1, keepdim=True)
    if algorithm in STD_SCALED:
        return (centred / (groups.std(1, keepdim=True) + GRPO_STD_EPS)).flatten()
    if algorithm == "dr_grpo":
        return centred.flatten()
    raise ValueError(f"group advantages: unknown algorithm {algorithm!r}; choose rloo, dr_grpo or one of "
                     f"{', '.join(STD_SCALED)}")


def tied_groups(scores, group_size: int):
    """[B / G] bool: the groups whose G task rewards are all equal (GRPO's advantages of such a group are all 0)."""
    groups = scores.view(-1, group_size)
    return (groups == groups[:, :1]).all(1)


def aggregate_token_losses(per_token, mask, algorithm: str, max_new_tokens: int):
    """A loss of every token [B, R] -> one number:

        grpo, gspo        1/B sum_i 1/|y_i| sum_t l_it      each reply's mean over its tokens, then the replies' mean
        rloo, dr_grpo     1/B sum_i 1/L sum_t l_it          L = max_new_tokens, a constant
        cispo, dapo       sum_i sum_t l_it / sum_i |y_i|    the mean over the minibatch's tokens
    """
    if algorithm in TOKEN_MEAN:
        return masked_mean(per_token, mask)
    per_reply = (per_token * mask).sum(1)
    if algorithm in ("grpo", "gspo"):
        return (per_reply / mask.sum(1)).mean()
    return (per_reply / max_new_tokens).mean()


def sequence_ratio(log_ratio, mask):
    """GSPO's ratio of a whole reply [B], the geometric mean of its tokens' ratios:

        s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| sum_t (log pi(a_t|s_t) - log pi_old(a_t|s_t)))
    """
    return ((log_ratio * mask).sum(1) / mask.sum(1)).exp()


def cispo_token_losses(logprobs, ratio, advantages, config: RLConfig):
    """CISPO's loss of every token [B, R], the clipped ratio a weight without gradient:

        l_it = -sg(clip(rho_it, 1 - eps_low, 1 + eps_high)) * A_i * log pi(a_t|s_t)

    d l_it / d log pi(a_t) = -clip(rho_it) * A_i: never 0, however far the ratio is outside the clip range. (Its
    value, logged as policy_loss, is not a surrogate of the gain as the clipped ratio's is: only its gradient is.)
    """
    weight = ratio.detach().clamp(1 - config.clip_eps, 1 + config.clip_eps_high)
    return -weight * advantages * logprobs


def group_loss(logprobs, minibatch: Rollout, kl_coef: float, config: RLConfig) -> tuple[torch.Tensor, dict]:
    """The minibatch loss of a group algorithm, and its statistics:

        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)
        l     = rloo, grpo, dr_grpo, dapo: max(-A_i rho_t, -A_i clip(rho_t, 1 - eps_low, 1 + eps_high)) per token (11)
                gspo: the same of the reply's s_i (sequence_ratio), one per reply;  cispo: cispo_token_losses
        k3_t  = pi_ref(a_t|s_t) / pi(a_t|s_t) - log(pi_ref(a_t|s_t) / pi(a_t|s_t)) - 1      all but rloo
        L     = aggregate(l) + beta * aggregate(k3)      aggregate: aggregate_token_losses (gspo's l: 1/B sum_i l_i)

    DAPO's dropped replies (minibatch.dropped) are out of both terms. clipfrac: the share of tokens (gspo: of
    replies) whose ratio is outside the clip range; cispo's still have their gradient.
    """
    algorithm, mask, advantages = config.algorithm, minibatch.reply_mask, minibatch.advantages
    if minibatch.dropped is not None:
        mask = mask * ~minibatch.dropped[:, None]
    log_ratio = logprobs - minibatch.logprobs
    ratio = log_ratio.exp()
    if algorithm == "gspo":
        s = sequence_ratio(log_ratio, mask)
        # advantages[:, 0] is A_i: every token of reply i has it, and every reply has a first token
        policy_loss = clipped_surrogate(s, advantages[:, 0], config.clip_eps, config.clip_eps_high).mean()
    elif algorithm == "cispo":
        policy_loss = aggregate_token_losses(cispo_token_losses(logprobs, ratio, advantages, config), mask,
                                             algorithm, config.max_new_tokens)
    else:
        surrogate = clipped_surrogate(ratio, advantages, config.clip_eps, config.clip_eps_high)
        policy_loss = aggregate_token_losses(surrogate, mask, algorithm, config.max_new_tokens)
    stats = {"policy_loss": policy_loss.item()}
    loss = policy_loss
    if algorithm != "rloo":  # the KL to the reference is a term of the loss, of the policy being updated
        k3 = kl_estimate(logprobs, minibatch.ref_logprobs, "k3")
        kl_loss = kl_coef * aggregate_token_losses(k3, mask, algorithm, config.max_new_tokens)
        stats["kl_loss"] = kl_loss.item()
        loss = loss + kl_loss
    stats.update(ratio_statistics(ratio, log_ratio, mask, config))
    if algorithm == "gspo":
        stats["clipfrac"] = outside_clip_range(s.detach(), config).mean().item()
    return (1.0 - stats["skipped"]) * loss, stats


class GroupTrainer(RLTrainer):
    """The group algorithms (config.algorithm): the group advantages and their loss, and DAPO's dynamic sampling
    (the rollout, the epochs and the state they share with PPO: llamalogue.rl.trainer.RLTrainer)."""

    @torch.no_grad()
    def dynamic_sampling(self, batch: Rollout, scores: torch.Tensor,
                         scorer: Scorer) -> tuple[Rollout, torch.Tensor, dict]:
        """DAPO (Yu et al., 2025): a group whose G task rewards are all equal has advantages 0 and teaches nothing.
        Each such group's G replies are sampled again (to the same prompt, with the step's RNG) until their rewards
        differ, at most dynamic_sampling_tries times; then the batch is assembled again, old and reference log-probs
        and all. Statistics: resampled_groups, the groups sampled again (G replies each, beyond batch_size), and
        dropped_groups, those still tied, which `advantages` leaves out of the loss. The other algorithms: as is."""
        cfg, G = self.config, self.config.group_size
        if cfg.algorithm != "dapo":
            return batch, scores, {}
        prompts, actions = batch.episodes()
        replies, stopped, scores = list(batch.replies), list(batch.stopped), scores.clone()
        resampled = 0
        for _ in range(cfg.dynamic_sampling_tries):
            rows = tied_groups(scores, G).repeat_interleave(G).nonzero().flatten().tolist()
            if not rows:
                break
            out = self.sample([prompts[row] for row in rows], self.generator)

            def rescore(new: list[int], texts: list[list[int]], rows=rows) -> list[float]:
                return scorer([rows[i] for i in new], texts)  # the scorer reads the rows the new replies replace

            scores[rows] = self.scores(out.tokens, out.stopped, rescore)
            for i, row in enumerate(rows):
                replies[row], stopped[row] = out.tokens[i], out.stopped[i]
                actions[row] = with_stop(out.tokens[i], out.stop_tokens[i])
            resampled += len(rows) // G
        if resampled:
            batch = self.assemble(prompts, actions, replies, stopped)
        return batch, scores, {"resampled_groups": resampled, "dropped_groups": int(tied_groups(scores, G).sum())}

    def advantages(self, batch: Rollout, scores: torch.Tensor) -> Rollout:
        """Each reply's group advantage, on every one of its tokens (0 past its end); DAPO: the tied groups that
        dynamic sampling left are dropped."""
        cfg = self.config
        rewards = scores.to(self.device)
        if cfg.algorithm == "rloo":
            kl = kl_estimate(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator)
            rewards = kl_penalized_rewards(rewards, kl, batch.reply_mask, self.kl_ctl.value)
        advantages = group_advantages(rewards, cfg.group_size, cfg.algorithm)
        dropped = None
        if cfg.algorithm == "dapo":
            dropped = tied_groups(rewards, cfg.group_size).repeat_interleave(cfg.group_size)
        return dataclasses.replace(batch, advantages=advantages[:, None] * batch.reply_mask, dropped=dropped)

    def loss(self, minibatch: Rollout, logprobs, values) -> tuple[torch.Tensor, dict]:
        return group_loss(logprobs, minibatch, self.kl_ctl.value, self.config)

    def update(self, batch: Rollout, scores: torch.Tensor) -> dict:
        """RLTrainer's statistics, and tied_groups: the share of prompts whose G replies all got the same task
        reward (the algorithms but RLOO learn nothing from such a group but to stay near the reference; DAPO's
        are the dropped ones)."""
        tied = tied_groups(scores, self.config.group_size).float().mean().item()
        return {**super().update(batch, scores), "tied_groups": tied}
