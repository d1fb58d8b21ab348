"""The scorer: how probable a language model finds a text, every distinct prefix computed once.

The one measurement everything rests on:

    log p(sentence) = sum_i log p(w_i | BOS, w_1 .. w_{i-1})        (fp32, BOS prepended so the first token counts)

A minimal pair is right only when log p(good) > log p(bad) *strictly* (`judge`): a tie counts as wrong and is
reported (the BabyLM 2025 pipeline takes the argmax, which counts ties as right). Where candidates share a context
(entity tracking, EWoK, COMPS, reading, AoA), only the tokens after the context are summed, as the pipeline does.

Sentences are scored in batches of similar length (sorted, padded on the right, with an attention mask), and every
distinct prefix once: thousands of sentences begin with "BOS The", and the two sentences of a minimal pair share their
start. The same code scores our checkpoints and any Hugging Face causal LM (`lm.LM`).
"""

import numpy as np
import torch
from tqdm import tqdm

from llamalogue.evaluation.lm import LM, as_lm
from llamalogue.model import sequence_logprobs


HEAD_ROWS = 256  # hidden states per output-layer product: measured fastest on CPU (larger blocks leave the cache)


def _logprobs_at(lm: LM, tokens, mask, rows, cols, contexts, log_normalizer: np.ndarray) -> np.ndarray:
    """log p(tokens[r, c + 1] | tokens[r, :c + 1]) at the given positions.

    Ours: log p = h . w_target - logsumexp(h W^T), with the logsumexp (the costly part) computed once per distinct
    context (`contexts` indexes `log_normalizer`, which keeps it across batches). Hugging Face models: from their
    full logits.
    """
    rows_t, cols_t = torch.as_tensor(rows, device=tokens.device), torch.as_tensor(cols, device=tokens.device)
    if not lm.headless:
        return sequence_logprobs(lm.model, tokens, mask)[rows_t, cols_t].double().cpu().numpy()
    weight = lm.model.lm_head.weight
    # The last token is only ever a target: the model reads all tokens but the last, and stops before its output
    # layer (compute_logits=False), which is applied here only where needed.
    hidden = lm.model(tokens[:, :-1], None if mask is None else mask[:, :-1], compute_logits=False)[rows_t, cols_t]
    target_logits = (hidden * weight[tokens[rows_t, cols_t + 1]]).sum(-1)
    missing = np.isnan(log_normalizer[contexts])
    new_contexts, first = np.unique(contexts[missing], return_index=True)
    if len(new_contexts):
        todo = hidden[torch.as_tensor(np.flatnonzero(missing)[first], device=tokens.device)]
        log_normalizer[new_contexts] = torch.cat([torch.logsumexp(todo[i : i + HEAD_ROWS] @ weight.T, dim=-1)
                                                  for i in range(0, len(todo), HEAD_ROWS)]).double().cpu().numpy()
    return target_logits.double().cpu().numpy() - log_normalizer[contexts]


def token_logprobs(lm: LM, sequences: list[list[int]], batch_size: int = 64, max_tokens: int = 4096,
                   desc: str | None = None, items: int | None = None) -> list[np.ndarray]:
    """log p(t_i | BOS, t_1 .. t_{i-1}) for every token of every sequence: one array per sequence.

    A token's log-probability depends only on its prefix, so each distinct prefix (a node of the trie of all
    sequences, e.g. "BOS The" shared by thousands of sentences, or a minimal pair's common start) is scored once.
    Sequences run longest first (the largest batch fails first if memory is short) in batches of equal or similar
    length, padded on the right with an attention mask; a batch holds at most batch_size sequences and max_tokens
    tokens, and a sequence whose every prefix is already scored is skipped. The bar counts `items` (e.g. pairs).
    """
    unique = list(dict.fromkeys(map(tuple, sequences)))
    prefix_id: dict[tuple[int, int], int] = {}  # (id of the prefix before, token) -> id of the prefix ending there
    chains = []
    for seq in unique:
        parent, chain = -1, []
        for token in seq:
            parent = prefix_id.setdefault((parent, token), len(prefix_id))
            chain.append(parent)
        chains.append(chain)
    logprob = np.full(len(prefix_id), np.nan)  # prefix id -> log p(its last token | the tokens before)
    log_normalizer = np.full(len(prefix_id) + 1, np.nan)  # context (prefix id + 1; 0 = BOS alone) -> logsumexp

    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    device, was_training = lm.device, lm.model.training
    lm.model.eval()
    bar = tqdm(total=len(unique), desc=desc, unit="pair" if items else "seq", disable=desc is None, leave=False,
               unit_scale=(items / len(unique)) if items and unique else False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}, {rate_fmt}]")
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):  # fp32, even inside a bf16 training loop
        start = 0
        while start < len(order):
            width = len(unique[order[start]]) + 1  # + BOS; the first sequence of a batch is its longest
            batch = order[start : start + max(1, min(batch_size, max_tokens // width))]
            start += len(batch)
            bar.update(len(batch))
            batch = [i for i in batch if np.isnan(logprob[chains[i]]).any()]
            if not batch:
                continue
            tokens = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            ids = np.full((len(batch), width - 1), -1)  # prefix id of the token at column c + 1
            for row, i in enumerate(batch):
                tokens[row, : len(unique[i]) + 1] = torch.tensor((lm.bos_id, *unique[i]))
                mask[row, : len(unique[i]) + 1] = 1
                ids[row, : len(unique[i])] = chains[i]
            uniform = all(len(unique[i]) + 1 == width for i in batch)  # no padding: plain causal attention
            rows, cols = np.nonzero(ids >= 0)
            new, first = np.unique(ids[rows, cols], return_index=True)
            todo = first[np.isnan(logprob[new])]
            rows, cols = rows[todo], cols[todo]
            contexts = np.where(cols > 0, ids[rows, np.maximum(cols - 1, 0)] + 1, 0)
            logprob[ids[rows, cols]] = _logprobs_at(lm, tokens.to(device), None if uniform else mask.to(device),
                                                    rows, cols, contexts, log_normalizer)
    bar.close()
    lm.model.train(was_training)
    index = {seq: i for i, seq in enumerate(unique)}
    return [logprob[chains[index[tuple(seq)]]] for seq in sequences]


def score_texts(lm: LM, texts: list[str], contexts: list[str] | None = None, batch_size: int = 64,
                reduction: str = "sum", desc: str | None = None, items: int | None = None):
    """(scores, lengths): log p(text) with BOS prepended, summed over its tokens (reduction="mean": per token), and
    each text's length in tokens. With contexts (texts = context + continuation), only the continuation's tokens
    count: log p(continuation | BOS + context). The context's tokens are the common start of the encodings of the
    text and of the context without trailing spaces, so a word split differently inside the text is handled.

    Where the space goes, as the BabyLM pipeline scores the tokens that overlap the continuation's characters: a
    context given with its trailing space ("a dog " + "can bark .", COMPS) keeps a token that is only that space
    (SentencePiece's bare "▁" before a word it has no "▁word" piece for); a context given without it ("Context1" +
    " target", EWoK; reading) leaves that token to the continuation."""
    encoded = lm.encode(list(texts))
    starts = [0] * len(texts)
    if contexts is not None:
        distinct = list(dict.fromkeys(c.rstrip() for c in contexts if c))
        context_ids = dict(zip(distinct, lm.encode(distinct))) if distinct else {}
        for k, (context, ids) in enumerate(zip(contexts, encoded)):
            for a, b in zip(context_ids.get(context.rstrip(), ()), ids):
                if a != b:
                    break
                starts[k] += 1
            if context[-1:].isspace() and starts[k] < len(ids) and not lm.decode_token(ids[starts[k]]).strip():
                starts[k] += 1
    scores = []
    for logprobs, start in zip(token_logprobs(lm, encoded, batch_size, desc=desc, items=items), starts):
        scored = logprobs[start:].astype(np.float64)
        scores.append(float(scored.mean() if reduction == "mean" and len(scored) else scored.sum()))
    return scores, [len(ids) + 1 for ids in encoded]


def sentence_logprobs(model, tokenizer, texts: list[str], batch_size: int = 64, reduction: str = "sum") -> list[float]:
    """log p(text) with BOS prepended, summed over tokens (reduction="mean": per token), for our model or a HF one."""
    lm = model if isinstance(model, LM) else as_lm(model, tokenizer)
    return score_texts(lm, texts, batch_size=batch_size, reduction=reduction)[0]


def judge(scores: list[float]) -> tuple[bool, bool]:
    """(right, tie): the first candidate must beat every other strictly; equal to the best other is a tie."""
    best_other = max(scores[1:])
    return scores[0] > best_other, scores[0] == best_other


def dialogue_mp(model, tokenizer, pairs, batch_size: int = 64) -> dict:
    """Dialogue minimal pairs: log p("prompt chosen") > log p("prompt rejected") strictly, over `corpus.Pair`s.

    -> {"accuracy": fraction in [0, 1], "n": pairs, "ties": pairs with equal scores (counted wrong)}
    """
    texts = [t for p in pairs for t in (f"{p.prompt} {p.chosen}", f"{p.prompt} {p.rejected}")]
    scores = sentence_logprobs(model, tokenizer, texts, batch_size)
    verdicts = [judge(scores[i : i + 2]) for i in range(0, len(scores), 2)]
    n = len(verdicts)
    return {"accuracy": sum(r for r, _ in verdicts) / n if n else float("nan"), "n": n,
            "ties": sum(t for _, t in verdicts)}

