"""Batched sampling from a llamalogue model with a key/value cache.

The prompts are padded on the left so that every row's last prompt token sits in the same column; one forward pass
over the whole prompt fills the cache ("prefill"), then each step feeds one token per row and reads one row of
logits ("decode"). A row that has hit a stop token keeps being fed padding (masked out) until all rows are done.

Besides the tokens, generate returns each new token's log-probability under the model's own distribution at
temperature 1 (the unmodified logits): what PPO's importance ratios and KL penalty are computed from.
"""

from dataclasses import dataclass

import torch


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, the stop token excluded
    logprobs: list[torch.Tensor]  # log p(token) at temperature 1, one value per new token
    stopped: list[bool]  # True when the row ended on a stop token (False: it ran out of max_new_tokens)
    stop_tokens: list[int | None]  # the stop token that ended each row (None when it never stopped)


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The sampling distribution's logits: scaled by 1/temperature, then top-k and nucleus (top-p) filtering."""
    logits = logits / max(temperature, 1e-6)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already cover top_p of the mass (the first token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


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
) -> Generation:
    """Sample up to max_new_tokens after each prompt; temperature 0 means greedy decoding."""
    device = model.embed.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((batch, prompt_len), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(batch, prompt_len, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):  # left padding
        tokens[row, prompt_len - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[row, prompt_len - len(prompt) :] = 1

    cache = model.new_cache(batch, prompt_len + max_new_tokens)
    logits = model(tokens, mask, cache=cache)[:, -1]
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    hit_stop = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens, new_logprobs = [], []

    for _ in range(max_new_tokens):
        logprobs = logits.log_softmax(-1)
        if temperature == 0:
            next_token = logits.argmax(-1)
        else:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
        new_tokens.append(next_token)
        new_logprobs.append(logprobs.gather(-1, next_token[:, None]).squeeze(-1))

        is_stop = torch.isin(next_token, stop) & ~done
        hit_stop |= is_stop
        active = ~done  # this step's token is real for rows not finished before it
        done |= is_stop
        if bool(done.all()):
            break
        logits = model(next_token[:, None], active[:, None].long(), cache=cache)[:, -1]

    steps = torch.stack(new_tokens, dim=1).tolist()
    step_logprobs = torch.stack(new_logprobs, dim=1).cpu()
    stop_set = set(stop.tolist())
    out = Generation([], [], [], [])
    for row, row_tokens in enumerate(steps):
        if hit_stop[row]:  # keep what came before the first stop token
            length = next(i for i, t in enumerate(row_tokens) if t in stop_set)
            out.stop_tokens.append(row_tokens[length])
        else:  # ran out of max_new_tokens: every sampled token counts
            length = len(row_tokens)
            out.stop_tokens.append(None)
        out.tokens.append(row_tokens[:length])
        out.logprobs.append(step_logprobs[row, :length])
        out.stopped.append(bool(hit_stop[row]))
    return out
