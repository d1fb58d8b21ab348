"""Batched sampling from a llamalogue model with a key/value cache.

The prompts are padded on the left so that every row's last prompt token sits in the same column; one forward pass
over the whole prompt fills the cache ("prefill"), then each step feeds one token per row and reads one row of
logits ("decode"). A row that has hit a stop token is fed padding (masked out). Once a quarter of the batch has
finished, rows still waiting (`max_rows`: at most that many decode at once) take the finished rows' places, their
prompts run in a prefill of their own ("continuous batching"); when none waits, the finished rows leave the batch
(their cache rows too). Replies' lengths differ -- the teacher's end after ~8 of 30 tokens, a few run to 30 -- and a
batch that only shrank would decode its last long replies a few rows at a time, for nearly the price of a full
batch: for the teacher's 10 replies to each of 48 prompts, the sampling went from 53 s to 38 s (AMD EPYC with AVX2,
2 threads; decode steps of 8 rows or fewer had taken half of the decoding time for a fifth of its tokens). Each row
writes its own cache slot (a row that came in later writes behind the others), and its t-th token is picked with
its own uniform number (inverse_cdf_pick, one per prompt and step, drawn ahead), so a row's sample does not depend
on which rows share the batch or when they finish.

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
    uniforms: torch.Tensor | None = None,
    max_rows: int | None = None,
) -> Generation:
    """Sample up to max_new_tokens after each prompt; temperature 0 means greedy decoding. With `prefixes`, each
    row's prompt continues its prefix, already computed (SharedPrefix).

    uniforms [len(prompts), max_new_tokens]: the number each row's t-th token is picked with (inverse_cdf_pick);
    by default drawn from `generator`, one per prompt and step. max_rows: at most this many rows decode at once
    (default: all); the others wait, and once a quarter of the batch has ended, waiting rows take the places of the
    ended ones ("continuous batching"): the batch stays nearly full instead of running its last long replies a few
    rows at a time. Which rows share the batch never changes what a row samples."""
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens {max_new_tokens}; must be at least 1")
    if prefixes is not None and (len(prefixes) != len(prompts) or any(p.model is not model for p in prefixes)):
        raise ValueError("generate: one prefix per prompt, each computed by the model that generates")
    device = model.embed.weight.device
    count = len(prompts)
    if temperature > 0 and uniforms is None:
        uniforms = torch.rand(max_new_tokens, count, generator=generator, device=device).T
    # every row's prefix ends in slot `width` and its prompt follows: one cache length holds any row
    width = max(p.length for p in prefixes) if prefixes else 0
    max_len = max(map(len, prompts)) + max_new_tokens

    def prefill(new_rows: list[int], length: int):
        """A cache holding these rows' prompts (padded on the left, after their prefixes) and the logits of each
        row's first new token: the output layer runs at the last column alone."""
        cache = cache_after([prefixes[r] for r in new_rows], length, width) if prefixes else model.new_cache(
            len(new_rows), length)
        tokens = torch.full((len(new_rows), max(len(prompts[r]) for r in new_rows)), pad_id, device=device)
        mask = torch.zeros_like(tokens)
        for row, r in enumerate(new_rows):
            tokens[row, tokens.size(1) - len(prompts[r]) :] = torch.tensor(prompts[r], device=device)
            mask[row, tokens.size(1) - len(prompts[r]) :] = 1
        return cache, model.lm_head(model(tokens, mask, cache=cache, compute_logits=False)[:, -1]).float()

    first = min(count, max_rows or count)
    waiting = list(range(count - 1, first - 1, -1))  # rows not yet in the batch, the next one last
    cache, logits = prefill(list(range(first)), max_len)
    step = DecodeStep(model, common_first_piece(prefixes) if prefixes else None)  # one token per row, fast
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    new_tokens = torch.full((count, max_new_tokens), pad_id, dtype=torch.long, device=device)
    new_logprobs = torch.zeros(count, max_new_tokens, device=device)
    lengths = torch.full((count,), max_new_tokens, dtype=torch.long, device=device)  # new tokens before the stop
    # the batch: the row each place holds, the cache slot it writes next, the tokens it has sampled, whether it ended
    rows = torch.arange(first, device=device)
    slots = torch.full((first,), cache.length, dtype=torch.long, device=device)
    sampled = torch.zeros(first, dtype=torch.long, device=device)
    done = torch.zeros(first, dtype=torch.bool, device=device)

    while True:
        if temperature == 0:
            best, next_token = logits.max(-1)  # (max is several times faster than argmax on a CPU)
            next_logprob = best - logits.logsumexp(-1)
        else:  # sample among the candidates, whose log-softmax is the sampling distribution's log q
            values, ids = sampling_candidates(logits, temperature, top_k, top_p)
            logprobs = values.log_softmax(-1)
            # (clamped: a row that has just ended picks one more token, never kept)
            pick = inverse_cdf_pick(logprobs.exp(), uniforms[rows, sampled.clamp(max=max_new_tokens - 1)])
            next_token, next_logprob = ids.gather(-1, pick).squeeze(-1), logprobs.gather(-1, pick).squeeze(-1)
        live = ~done
        new_tokens[rows[live], sampled[live]] = next_token[live]
        new_logprobs[rows[live], sampled[live]] = next_logprob[live]
        is_stop = live & torch.isin(next_token, stop)
        lengths[rows[is_stop]] = sampled[is_stop]
        sampled += live
        done |= is_stop | (sampled == max_new_tokens)
        ended = int(done.sum())
        if ended == len(rows) and not waiting:
            break
        joined = torch.zeros_like(done)  # places a waiting row has just taken: its logits come from its prefill
        if 4 * ended >= len(rows) and waiting:  # a quarter of the batch has ended: waiting rows take their places
            places = done.nonzero().flatten()[: len(waiting)]
            new_rows = [waiting.pop() for _ in places]
            fresh, fresh_logits = prefill(new_rows, max(len(prompts[r]) for r in new_rows))
            cache.write_rows(places, fresh)
            rows[places] = torch.tensor(new_rows, device=device)
            slots[places], sampled[places], done[places], joined[places] = fresh.length, 0, False, True
        elif 4 * ended >= len(rows):  # ... and none waits: the ended rows leave it
            keep = ~done
            rows, slots, sampled, done = rows[keep], slots[keep], sampled[keep], done[keep]
            next_token, joined = next_token[keep], joined[keep]
            cache.keep_rows(keep)
        feeding = ~done & ~joined  # rows whose new token goes into the cache now
        logits = step(torch.where(feeding, next_token, torch.full_like(next_token, pad_id)), feeding, cache, slots)
        slots += feeding
        if bool(joined.any()):
            logits[joined] = fresh_logits

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
    """A token prefix in our Llama's KV cache, computed once for all the rows that start with it: `new_cache`
    (or cache_after, for rows after different prefixes) copies its keys and values into the rows of a fresh cache,
    so `generate(model, suffixes, prefixes=[SharedPrefix(model, prefix)] * len(suffixes))` samples as
    `generate(model, [prefix + s for s in suffixes])` does, without computing the prefix once per row. (Padding
    then sits inside a row -- after a prefix's first piece when prefixes differ in length, and before each suffix --
    but positions count real tokens only and padded slots are masked, so the model does not see it.) `start`, a
    shorter SharedPrefix that this prefix begins with, saves running its tokens again (the teacher's example prefix,
    then one prompt's turn); a prefix keeps only its own tokens' keys and values, [layers, 1, kv_heads, tokens,
    head_dim], its start's stay with the start (SmolLM2's 20-token turn after 130 tokens of examples: 0.9 MB in fp32,
    not 7 MB)."""

    def __init__(self, model, prefix: list[int], start: "SharedPrefix | None" = None, own=None):
        self.model, self.tokens, self.start = model, list(prefix), start
        self.length = len(self.tokens)
        # own: its keys and values, when already computed (SharedPrefix.batch)
        self.keys, self.values = own if own is not None else own_keys_values(model, [self.tokens], start)[0]

    def pieces(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (keys, values) of its tokens in order: its start's pieces, then its own."""
        return (self.start.pieces() if self.start is not None else []) + [(self.keys, self.values)]

    @classmethod
    def batch(cls, model, prefixes: list[list[int]], start: "SharedPrefix | None" = None) -> list["SharedPrefix"]:
        """SharedPrefix(model, prefix, start) for each of the prefixes, their tokens after `start` run as one batch
        (many short turns after the same examples: one forward pass instead of one per turn)."""
        own = own_keys_values(model, prefixes, start)
        return [cls(model, prefix, start, kv) for prefix, kv in zip(prefixes, own)]

    def new_cache(self, batch: int, max_len: int):
        """A cache for `batch` rows of up to `max_len` tokens after the prefix, the prefix copied into each."""
        return cache_after([self] * batch, max_len)


def own_keys_values(model, prefixes: list[list[int]], start: SharedPrefix | None):
    """The keys and values, [layers, 1, kv_heads, tokens, head_dim], of each prefix's tokens after `start` (all of
    them without one), run as one batch after the start's: padded on the right, where no real token sees the padding
    after it."""
    begin = start.length if start is not None else 0
    if start is not None and any(prefix[:begin] != start.tokens for prefix in prefixes):
        raise ValueError("SharedPrefix: the prefix does not begin with the start prefix's tokens")
    rests = [prefix[begin:] for prefix in prefixes]
    longest = max(map(len, rests))
    if longest and min(map(len, rests)) < 1:
        raise ValueError("SharedPrefix.batch: every prefix must extend the start prefix by at least one token")
    cache = cache_after([start] * len(prefixes), longest) if start is not None else model.new_cache(
        len(prefixes), longest)
    if longest:  # without a graph: one built into a cache written in place is a cycle that is never freed
        device = model.embed.weight.device
        tokens = torch.tensor([rest + [0] * (longest - len(rest)) for rest in rests], device=device)  # 0: padding
        mask = torch.tensor([[1] * len(rest) + [0] * (longest - len(rest)) for rest in rests], device=device)
        with torch.no_grad():
            model(tokens, mask, cache=cache, compute_logits=False)
    return [(cache.k[:, row : row + 1, :, begin : begin + len(rest)].clone(),
             cache.v[:, row : row + 1, :, begin : begin + len(rest)].clone()) for row, rest in enumerate(rests)]


def common_first_piece(prefixes: list[SharedPrefix]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (keys, values) of the first piece that every prefix begins with (the teacher's examples, then each
    prompt's turn), or None: cache_after puts it in the same slots of every row, so decoding reads it once for all
    of them (DecodeStep's `shared`)."""
    firsts = [prefix.pieces()[0] for prefix in dict.fromkeys(prefixes)]  # each distinct prefix's first piece
    keys, values = firsts[0]
    one_piece = all(other_keys is keys for other_keys, _ in firsts)  # the same tensors, not merely equal ones
    return (keys, values) if one_piece and keys.size(3) > 0 else None


def cache_after(prefixes: list[SharedPrefix], max_len: int, width: int | None = None):
    """A fresh cache whose row r holds prefixes[r]'s keys and values, with room for `max_len` more tokens: rows after
    different prefixes (the teacher's log-likelihoods, a few prompts' turns per batch) run in one batch. A prefix's
    first piece (the teacher's examples) starts in slot 0, so that rows after the same first piece hold it in the
    same slots (decoding then reads it once for all of them: DecodeStep's `shared`); the rest of every prefix ends in
    the same slot, `width` (default: the longest prefix's length), padded on its left (masked), and each row's
    positions go on from its own prefix's length."""
    model = prefixes[0].model
    width = max(prefix.length for prefix in prefixes) if width is None else width
    cache = model.new_cache(len(prefixes), width + max_len)
    for prefix in dict.fromkeys(prefixes):  # each distinct prefix, copied into its rows at once, piece by piece
        rows = torch.tensor([row for row, p in enumerate(prefixes) if p is prefix], device=cache.k.device)
        (first_keys, first_values), *rest = prefix.pieces()
        first = first_keys.size(3)
        cache.k[:, rows, :, :first], cache.v[:, rows, :, :first] = first_keys, first_values  # [layers, 1, ...] per row
        slot = width - (prefix.length - first)
        cache.key_mask[rows, :first] = True
        cache.key_mask[rows, slot:width] = True
        for keys, values in rest:
            cache.k[:, rows, :, slot : slot + keys.size(3)] = keys
            cache.v[:, rows, :, slot : slot + keys.size(3)] = values
            slot += keys.size(3)
        cache.next_pos[rows] = prefix.length
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
