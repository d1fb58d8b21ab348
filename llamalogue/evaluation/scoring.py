"""The scorer: how probable a language model finds a text, every distinct prefix computed once.

The one measurement everything rests on:

    log p(sentence) = sum_i log p(w_i | BOS, w_1 .. w_{i-1})        (fp32, BOS prepended so the first token counts)

A minimal pair is right only when log p(good) > log p(bad) *strictly* (`judge`): a tie counts as wrong and is
reported (the BabyLM 2025 pipeline takes the argmax, which counts ties as right). Where candidates share a context
(entity tracking, EWoK, COMPS, reading, AoA), only the tokens after the context are summed, as the pipeline does.

Every distinct prefix is computed once: thousands of sentences begin with "BOS The", and the two sentences of a
minimal pair share their start. Our model runs the trie of all prefixes itself (tree attention, `tree`); a Hugging Face
causal LM (`lm.LM`) runs whole sentences in batches of similar length (sorted, padded on the right, with an attention
mask), skipping a sentence whose every prefix is already scored.
"""

import numpy as np
import torch
from tqdm import tqdm

from llamalogue.evaluation import score_cache
from llamalogue.evaluation.lm import LM, as_lm
from llamalogue.evaluation.tree import Trie, build_trie, tree_logprobs


def _padded_logprobs(lm: LM, unique: list[tuple[int, ...]], trie: Trie, batch_size: int, max_tokens: int,
                     bar: tqdm, word_start_ids: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """log p(token(n) | prefix(parent(n))) for every trie node n > 0, from a Hugging Face model's full logits (and,
    with word_start_ids, the mass of those tokens in the same distribution, as `tree.tree_logprobs`).

    Sequences run longest first (the largest batch fails first if memory is short) in batches of equal or similar
    length, padded on the right with an attention mask; a sequence whose every prefix is already scored is skipped.
    """
    logprob = np.full(len(trie.parent), np.nan)
    word_start = None if word_start_ids is None else np.full(len(trie.parent), np.nan)
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    start = 0
    while start < len(order):
        width = len(unique[order[start]]) + 1  # + BOS; the first sequence of a batch is its longest
        batch = order[start : start + max(1, min(batch_size, max_tokens // width))]
        start += len(batch)
        bar.update(len(batch))
        batch = [i for i in batch if np.isnan(logprob[trie.chains[i]]).any()]
        if not batch:
            continue
        tokens = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        ids = np.zeros((len(batch), width - 1), dtype=np.int64)  # node of the token at column c + 1 (0: padding)
        for row, i in enumerate(batch):
            tokens[row, : len(unique[i]) + 1] = torch.tensor((lm.bos_id, *unique[i]))
            mask[row, : len(unique[i]) + 1] = 1
            ids[row, : len(unique[i])] = trie.chains[i]
        rows, cols = np.nonzero(ids)
        todo = np.isnan(logprob[ids[rows, cols]])  # a prefix scored in an earlier batch keeps that score
        rows, cols = rows[todo], cols[todo]
        tokens, mask = tokens.to(lm.device), mask.to(lm.device)
        distributions = lm.model(tokens, mask)[:, :-1].log_softmax(-1)  # column c predicts the token in column c + 1
        at = torch.as_tensor(rows, device=lm.device), torch.as_tensor(cols, device=lm.device)
        logprob[ids[rows, cols]] = distributions[at].gather(-1, tokens[:, 1:][at][:, None])[:, 0].double().cpu().numpy()
        if word_start_ids is not None:
            word_start[ids[rows, cols]] = distributions[at][:, word_start_ids].logsumexp(-1).double().cpu().numpy()
    return logprob, word_start


def token_logprobs(lm: LM, sequences: list[list[int]], batch_size: int = 64, max_tokens: int = 4096,
                   desc: str | None = None, items: int | None = None, word_end: bool = False) -> list[np.ndarray]:
    """log p(t_i | BOS, t_1 .. t_{i-1}) for every token of every sequence: one array per sequence. With word_end
    (and a model whose tokens mark word starts), each array has one more value at its end, the probability that the
    text ends where a word ends, i.e. that the next token begins a new word (`protocol` says why):

        log p(word start | BOS, t_1 .. t_n) = log sum_{b begins a word} p(b | BOS, t_1 .. t_n)

    A token's log-probability depends only on its prefix, so each distinct prefix (a node of the trie of all
    sequences, e.g. "BOS The" shared by thousands of sentences, or a minimal pair's common start) is scored once:
    ours by tree attention (`tree`), a Hugging Face model from the logits of whole sequences, each sequence whose
    prefixes are not all scored yet. A batch holds at most batch_size sequences and max_tokens tokens. The bar counts
    `items` (e.g. pairs).
    """
    word_end = word_end and bool(lm.word_start_ids)
    # the distribution after a sequence's last token is computed by scoring one token more (any: only where it is
    # predicted matters); the padding id cannot continue a real text, so it never merges with one
    unique = list(dict.fromkeys(tuple(s) + ((lm.pad_id,) if word_end else ()) for s in sequences))
    if not unique:
        return []
    trie = build_trie(unique)
    word_start_ids = torch.tensor(lm.word_start_ids, device=lm.device) if word_end else None
    was_training = lm.model.training
    lm.model.eval()
    bar = tqdm(total=len(unique), desc=desc, unit="pair" if items else "seq", disable=desc is None, leave=False,
               unit_scale=(items / len(unique)) if items else False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}, {rate_fmt}]")
    with torch.inference_mode(), torch.autocast(lm.device.type, enabled=False):  # fp32, even in a bf16 training loop
        score = tree_logprobs if lm.headless else _padded_logprobs
        logprob, word_start = score(lm, unique, trie, batch_size, max_tokens, bar, word_start_ids)
    bar.close()
    lm.model.train(was_training)
    index = {seq: i for i, seq in enumerate(unique)}
    if not word_end:
        return [logprob[trie.chains[index[tuple(seq)]]] for seq in sequences]
    chains = [trie.chains[index[tuple(seq) + (lm.pad_id,)]] for seq in sequences]
    return [np.append(logprob[chain[:-1]], word_start[chain[-1]]) for chain in chains]


def score_texts(lm: LM, texts: list[str], contexts: list[str] | None = None, batch_size: int = 64,
                reduction: str = "sum", desc: str | None = None, items: int | None = None, word_end: bool = False):
    """(scores, lengths): log p(text) with BOS prepended, summed over its tokens (reduction="mean": per token), and
    each text's length in tokens; word_end adds log p(word start | text) (the paper's protocol, `protocol`). With
    contexts (texts = context + continuation), only the continuation's tokens
    count: log p(continuation | BOS + context). The context's tokens are the common start of the encodings of the
    text and of the context without trailing spaces, so a word split differently inside the text is handled.

    Where the space goes, as the BabyLM pipeline scores the tokens that overlap the continuation's characters: a
    context given with its trailing space ("a dog " + "can bark .", COMPS) keeps a token that is only that space
    (SentencePiece's bare "▁" before a word it has no "▁word" piece for); a context given without it ("Context1" +
    " target", EWoK; reading) leaves that token to the continuation.

    A run loaded by `lm.load_lm` has its scores kept: the same call again reads them (`score_cache`)."""
    cache_key = score_cache.key(lm.weights_id, lm.device.type, texts, contexts, batch_size, reduction, word_end)
    kept = score_cache.recall(cache_key, len(texts))
    if kept is not None:
        return kept
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
    for logprobs, start in zip(token_logprobs(lm, encoded, batch_size, desc=desc, items=items, word_end=word_end),
                               starts):
        scored = logprobs[start:].astype(np.float64)
        scores.append(float(scored.mean() if reduction == "mean" and len(scored) else scored.sum()))
    lengths = [len(ids) + 1 for ids in encoded]
    score_cache.keep(cache_key, scores, lengths)
    return scores, lengths


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

