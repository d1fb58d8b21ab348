"""Batched sampling from a llamalogue model with a key/value cache.

The prompts are padded on the left so that every row's last prompt token sits in the same column; one forward pass
over the whole prompt fills the cache ("prefill"), then each step feeds one token per row and reads one row of
logits ("decode"). A row that has hit a stop token is fed padding (masked out), and once a quarter of the batch has
finished, the finished rows leave it (their cache rows too): a batch of replies whose lengths differ -- the teacher's
end after ~8 of 30 tokens, its longest runs to 30 -- does not pay for its finished rows until the last one ends.
Sampling draws one uniform number per prompt and step (inverse_cdf_pick), whether or not its row is still in the
batch, so a row's sample does not depend on when the others finish.

Rows that share a long common prefix (the teacher's system prompt and examples, then a prompt's turn for its many
replies) can run it once instead of once per row: `generate(model, suffixes, ..., prefixes=...)` (SharedPrefix).

Besides the tokens, generate returns each new token's log-probability under the distribution it was sampled from
(temperature, top-k and top-p applied; the model's own distribution when decoding greedily): the distribution that
PPO's importance ratios and KL penalty must be computed from to stay on-policy (llamalogue.rl.ppo).
"""

import os
from dataclasses import dataclass

import torch

from llamalogue.decode_step import DecodeStep
from llamalogue.tokenizer import format_prompt, reply_stop_ids


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, the stop token excluded
    logprobs: list[torch.Tensor]  # log q(token) under the sampling distribution q, one value per new token
    stopped: list[bool]  # True when the row ended on a stop token (False: it ran out of max_new_tokens)
    stop_tokens: list[int | None]  # the stop token that ended each row (None when it never stopped)


NUCLEUS_CANDIDATES = 64  # the top-p nucleus is looked for among this many most likely tokens first (see below)


def sampling_candidates(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The tokens the sampling distribution can pick: (their logits [..., K], most likely first, -inf where top-p
    drops one; their token ids [..., K]). Logits are scaled by 1/temperature, then top-k and nucleus (top-p)
    filtering keep

        K = the top_k most likely tokens;   then the fewest of them whose probability (renormalised over K) >= top_p.

    Why candidates rather than a mask over the vocabulary: a full sort of SmolLM2's 49,152 logits per row costs more
    than the teacher's whole forward step, and sampling over the full vocabulary (torch.multinomial) nearly as much.
    Without top-k the nucleus is looked for among the NUCLEUS_CANDIDATES most likely tokens, then 16 times as many,
    and so on: exact as soon as the candidates of every row hold top_p of the mass (each token after them then has
    >= top_p before it, and is dropped)."""
    logits = logits / max(temperature, 1e-6)
    vocab = logits.size(-1)
    if top_k <= 0 and top_p >= 1.0:  # plain sampling: every token is a candidate
        return logits, torch.arange(vocab, device=logits.device).expand_as(logits)
    count = top_k if top_k > 0 else NUCLEUS_CANDIDATES
    values, ids = logits.topk(min(count, vocab), dim=-1)
    if top_p < 1.0:
        log_norm = (values if top_k > 0 else logits).logsumexp(-1, keepdim=True)
        while top_k <= 0 and count < vocab and bool(((values - log_norm).exp().sum(-1) < top_p).any()):
            count *= 16  # a nucleus wider than the candidates in some row
            values, ids = logits.topk(min(count, vocab), dim=-1)
        probs = (values - log_norm).exp()
        # Drop a token when the tokens before it already cover top_p of the mass (the first token always stays).
        values = values.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
    return values, ids


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The sampling distribution's logits over the whole vocabulary (-inf outside sampling_candidates)."""
    values, ids = sampling_candidates(logits, temperature, top_k, top_p)
    return torch.full_like(logits, float("-inf")).scatter(-1, ids, values)


def inverse_cdf_pick(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one index per row of probs [B, K] (not necessarily normalised) from one uniform u in [0, 1) per row:

        pick = the i with  C_{i-1} <= u * C_K < C_i,   C_i = p_1 + ... + p_i

    i.e. the token whose slice of the cumulative distribution holds u. A token of probability 0 has an empty slice
    and is never picked (u * C_K < C_K, so the pick is at most the last token with p > 0). The sums are float64:
    over a whole vocabulary (plain sampling) float32 sums would round the slices of the least likely tokens."""
    cumulative = probs.double().cumsum(-1)
    return torch.searchsorted(cumulative, uniforms.double()[:, None] * cumulative[:, -1:], right=True)


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids=(),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    prefixes: list["SharedPrefix"] | None = None,
) -> Generation:
    """Sample up to max_new_tokens after each prompt; temperature 0 means greedy decoding. With `prefixes`, each
    row's prompt continues its prefix, already computed (SharedPrefix)."""
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens {max_new_tokens}; must be at least 1")
    if prefixes is not None and (len(prefixes) != len(prompts) or any(p.model is not model for p in prefixes)):
        raise ValueError("generate: one prefix per prompt, each computed by the model that generates")
    device = model.embed.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((batch, prompt_len), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(batch, prompt_len, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):  # left padding
        tokens[row, prompt_len - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[row, prompt_len - len(prompt) :] = 1

    cache = cache_after(prefixes, prompt_len + max_new_tokens) if prefixes else model.new_cache(
        batch, prompt_len + max_new_tokens)
    step = DecodeStep(model)  # one token per row, fast
    # the prefill needs the next-token logits of the last column only: the output layer runs there alone
    logits = model.lm_head(model(tokens, mask, cache=cache, compute_logits=False)[:, -1]).float()
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    new_tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    new_logprobs = torch.zeros(batch, max_new_tokens, device=device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)  # new tokens before the stop
    rows = torch.arange(batch, device=device)  # the prompt each row of the (shrinking) batch belongs to
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # rows of the batch that have hit a stop token

    for position in range(max_new_tokens):
        if temperature == 0:
            best, next_token = logits.max(-1)  # (max is several times faster than argmax on a CPU)
            next_logprob = best - logits.logsumexp(-1)
        else:  # sample among the candidates, whose log-softmax is the sampling distribution's log q
            uniforms = torch.rand(batch, generator=generator, device=device)[rows]  # one per prompt, every step
            values, ids = sampling_candidates(logits, temperature, top_k, top_p)
            logprobs = values.log_softmax(-1)
            pick = inverse_cdf_pick(logprobs.exp(), uniforms)
            next_token, next_logprob = ids.gather(-1, pick).squeeze(-1), logprobs.gather(-1, pick).squeeze(-1)
        next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
        new_tokens[rows, position], new_logprobs[rows, position] = next_token, next_logprob

        is_stop = torch.isin(next_token, stop) & ~done
        lengths[rows[is_stop]] = position
        active = ~done  # this step's token is real for rows not finished before it
        done |= is_stop
        finished = int(done.sum())
        if finished == len(rows) or position + 1 == max_new_tokens:
            break
        if 4 * finished >= len(rows):  # a quarter of the batch has finished: those rows leave it
            keep = ~done
            rows, next_token, active, done = rows[keep], next_token[keep], active[keep], done[keep]
            cache.keep_rows(keep)
        logits = step(next_token, active, cache)

    stop_tokens = new_tokens.gather(1, lengths.clamp(max=max_new_tokens - 1)[:, None]).squeeze(1).tolist()
    new_tokens, new_logprobs = new_tokens.tolist(), new_logprobs.cpu()
    out = Generation([], [], [], [])
    for row, length in enumerate(lengths.tolist()):
        hit_stop = length < max_new_tokens
        out.tokens.append(new_tokens[row][:length])  # what came before the stop token, or all when none came
        out.logprobs.append(new_logprobs[row, :length])
        out.stopped.append(hit_stop)
        out.stop_tokens.append(stop_tokens[row] if hit_stop else None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Prefix sharing: the rows of a batch start with the same tokens (the teacher's system prompt and examples).

def split_common_prefix(rows: list[list[int]], keep: int) -> tuple[list[int], list[list[int]]]:
    """(the rows' longest common prefix, what follows it in each row), leaving at least `keep` tokens in each."""
    common = os.path.commonprefix(rows)
    cut = max(0, min(len(common), min(map(len, rows)) - keep))
    return rows[0][:cut], [row[cut:] for row in rows]


class SharedPrefix:
    """A token prefix in our Llama's KV cache, computed once, with batch 1, for rows that start with it: `new_cache`
    (or cache_after, for rows after different prefixes) copies its keys and values into the rows of a fresh cache,
    so `generate(model, suffixes, prefixes=[SharedPrefix(model, prefix)] * len(suffixes))` samples as
    `generate(model, [prefix + s for s in suffixes])` does, without computing the prefix once per row. (The suffixes'
    left padding then sits between prefix and suffix: positions count real tokens only, and padded slots are masked,
    so the model does not see it.) `start`, a shorter SharedPrefix that this prefix begins with, saves running its
    tokens again (the teacher's example prefix, then one prompt's turn)."""

    def __init__(self, model, prefix: list[int], start: "SharedPrefix | None" = None):
        self.model = model
        self.tokens = list(prefix)
        if start is not None and self.tokens[: len(start.tokens)] != start.tokens:
            raise ValueError("SharedPrefix: the prefix does not begin with the start prefix's tokens")
        rest = self.tokens[len(start.tokens) :] if start is not None else self.tokens
        self.prefix = (start if start is not None else model).new_cache(1, max(1, len(rest)))
        if rest:  # without a graph: one built into a cache written in place is a cycle that is never freed
            with torch.no_grad():
                model(torch.tensor([rest], device=model.embed.weight.device), cache=self.prefix, compute_logits=False)

    def new_cache(self, batch: int, max_len: int):
        """A cache for `batch` rows of up to `max_len` tokens after the prefix, the prefix copied into each."""
        return cache_after([self] * batch, max_len)


def cache_after(prefixes: list[SharedPrefix], max_len: int):
    """A fresh cache whose row r holds prefixes[r]'s keys and values, with room for `max_len` more tokens: rows after
    different prefixes (the teacher's log-likelihoods, a few prompts' turns per batch) run in one batch. The prefixes
    end in the same slot, a shorter one padded on its left (masked), and each row's positions go on from its own
    prefix's length."""
    model = prefixes[0].model
    width = max(prefix.prefix.length for prefix in prefixes)
    cache = model.new_cache(len(prefixes), width + max_len)
    for prefix in dict.fromkeys(prefixes):  # each distinct prefix, copied into its rows at once
        rows = torch.tensor([row for row, p in enumerate(prefixes) if p is prefix], device=cache.k.device)
        length = prefix.prefix.length
        cache.k[:, rows, :, width - length : width] = prefix.prefix.k[:, :, :, :length]  # [layers, 1, heads, P, hd]
        cache.v[:, rows, :, width - length : width] = prefix.prefix.v[:, :, :, :length]
        cache.key_mask[rows, width - length : width] = True
        cache.next_pos[rows] = length
    cache.length = width
    return cache


def sample_replies(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 30,
                   temperature: float = 0.7, top_k: int = 0, top_p: float = 0.9) -> tuple[list[str], list[bool]]:
    """One sampled reply per caregiver prompt, as in dialogue: [BOS] *MOT: prompt \\n *CHI: -> reply (text), and
    whether it ended on its own; a fixed seed, so that samples before and after a training compare."""
    device = model.embed.weight.device
    out = generate(model, [format_prompt(tokenizer, p) for p in prompts], max_new_tokens, temperature, top_k, top_p,
                   reply_stop_ids(tokenizer), tokenizer.pad_id, torch.Generator(device=device).manual_seed(seed))
    return [tokenizer.decode(reply).strip() for reply in out.tokens], out.stopped
