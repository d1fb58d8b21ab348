"""Minimal-pair evaluation: how probable a language model finds a sentence, and what follows from that.

The one measurement everything rests on:

    log p(sentence) = sum_i log p(w_i | BOS, w_1 .. w_{i-1})        (fp32, BOS prepended so the first token counts)

A minimal pair is right only when log p(good) > log p(bad) *strictly*: a tie counts as wrong and is reported (the
BabyLM 2025 pipeline takes the argmax, which counts ties as right). Multiple choice (entity tracking) is right when
the true option beats every distractor strictly. Where a task shares a context between candidates (entity tracking,
EWoK, reading), only the tokens after the context are summed, as the BabyLM pipeline does.

Sentences are scored in batches of similar length (sorted, padded on the right, with an attention mask), and every
distinct prefix once: thousands of sentences begin with "BOS The", and the two sentences of a minimal pair share their
start. The same code scores our checkpoints and any Hugging Face causal LM (`load_lm`).

Task metrics follow the BabyLM 2025 pipeline's definitions (our own code): BLiMP and its supplement = mean of the
per-paradigm accuracies; entity tracking = mean over files of the mean over numbers of operations; wug adjective
nominalisation = Spearman correlation (x100) of the model's preference p(-ity) / (p(-ity) + p(-ness)) with the
humans'; reading = how much word surprisal adds to a regression of reading times on frequency, length and position
(relative gain in R^2, in %). Every number comes with a 95% bootstrap confidence interval over items.
"""

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from llamalogue import checkpoint
from llamalogue.model import Llama, default_device, sequence_logprobs
from llamalogue.suites import ChoiceItem, ReadingItem, Suite, WugItem

# ----------------------------------------------------------------------------------------------------------------
# The model as the scorer sees it


class HFLogits(nn.Module):
    """A transformers causal LM called like ours: forward(tokens, attention_mask) -> fp32 logits."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, tokens, attention_mask=None):
        return self.hf_model(input_ids=tokens, attention_mask=attention_mask).logits.float()


@dataclass
class LM:
    """What scoring needs from a causal language model, ours or a Hugging Face one."""

    model: nn.Module  # forward(tokens [B, T], attention_mask [B, T]) -> logits [B, T, vocab]
    encode: Callable[[list[str]], list[list[int]]]  # texts -> token ids, without special tokens
    bos_id: int
    pad_id: int
    context: int | None = None  # the length it was trained for: longer items are scored anyway, and counted
    name: str = "model"
    kind: str = "llamalogue"
    headless: bool = False  # ours: runs without its output layer (compute_logits=False); the scorer applies it

    @property
    def device(self):
        return next(self.model.parameters()).device

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def as_lm(model, tokenizer, name: str = "model") -> LM:
    """Our (Llama, Tokenizer) or a transformers (model, tokenizer) pair, as an LM."""
    model = checkpoint.unwrap(model)
    if isinstance(model, Llama):
        return LM(model, tokenizer.encode_batch, tokenizer.bos_id, tokenizer.pad_id, model.config.max_seq_len, name,
                  headless=True)
    # A Hugging Face tokenizer: BOS if it has one, else its end-of-text token, which GPT-2-style models use to start
    # a document.
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError(f"{name}: the tokenizer has neither a BOS nor an EOS token to start a sentence with")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos  # padding is masked out anyway
    context = getattr(model.config, "max_position_embeddings", None)
    return LM(HFLogits(model), lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"], bos, pad,
              context, name, kind="transformers")


def model_kind(path) -> str:
    """"llamalogue" (a run directory), "transformers" (a Hugging Face causal-LM folder), "gguf" (a .gguf file, a
    folder holding one, or "teacher": the default SmolLM2 GGUF); anything else is one clear error."""
    path = Path(path)
    if str(path) == "teacher":
        return "gguf"
    if not path.exists():
        raise ValueError(f"--model {path}: does not exist")
    if checkpoint.is_run_dir(path):
        checkpoint.check_run(path)
        return "llamalogue"
    if path.is_dir() and (path / "config.json").is_file():
        return "transformers"
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return "gguf"
    raise ValueError(f"--model {path}: neither a llamalogue run directory (config.json, checkpoint.pt, "
                     "tokenizer.model) nor a Hugging Face causal-LM folder (config.json + weights) nor a .gguf file")


def load_lm(path, device: str | None = None) -> LM:
    """A llamalogue run directory, a Hugging Face causal-LM folder, a .gguf file (or a folder holding one), or
    "teacher" (the default SmolLM2 GGUF), loaded in fp32 for scoring. Nothing is downloaded."""
    kind, device = model_kind(path), device or default_device()
    if kind == "llamalogue":
        model, tokenizer = checkpoint.load_model(path, device)
        return as_lm(model, tokenizer, Path(path).name)
    from transformers import AutoTokenizer  # only Hugging Face models need transformers

    from llamalogue.hf import load_hf_model

    if str(path) == "teacher":
        from llamalogue.hf import default_teacher_path

        source = Path(default_teacher_path())
    else:
        source = Path(path)
        if source.is_dir() and not (source / "config.json").is_file():
            source = sorted(source.glob("*.gguf"))[0]
    gguf = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    try:
        model = load_hf_model(source).to(device)
        tokenizer = AutoTokenizer.from_pretrained(source.parent if gguf else source, **gguf)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"--model {path}: cannot load a causal LM ({first_line})") from None
    lm = as_lm(model, tokenizer, source.stem)
    lm.kind = kind
    return lm


# ----------------------------------------------------------------------------------------------------------------
# Scoring

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
    count: log p(continuation | BOS + context). The context's tokens are the common start of the two encodings, so
    a context ending in a space, or a word split differently inside the text, is handled alike."""
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


# ----------------------------------------------------------------------------------------------------------------
# Statistics: the metrics, bootstrap confidence intervals, paired tests


def stratified_resample(rng: np.random.Generator, strata: list[np.ndarray] | None, n: int) -> np.ndarray:
    """Item indices drawn with replacement, within each stratum (paradigm) so each keeps its size."""
    if strata is None:
        return rng.integers(0, n, n)
    return np.concatenate([members[rng.integers(0, len(members), len(members))] for members in strata])


def bootstrap(statistics: list[Callable[[np.ndarray], float]], strata, n: int, replicates: int,
              seed: int) -> np.ndarray:
    """[replicates, len(statistics)]: every statistic on the same resamples (paired when two models share items)."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(replicates):
        idx = stratified_resample(rng, strata, n)
        draws.append([statistic(idx) for statistic in statistics])
    return np.array(draws, dtype=np.float64)


def accuracy_statistic(right: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], float]:
    """100 * sum_g weight_g * accuracy_g over the items idx (weights: 1/G for a mean over paradigms)."""

    def statistic(idx):
        hits = np.bincount(groups[idx], weights=right[idx], minlength=len(weights))
        counts = np.bincount(groups[idx], minlength=len(weights))
        return 100.0 * float(np.sum(weights * hits / np.maximum(counts, 1)))

    return statistic


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    ordered = np.sort(x)
    return (np.searchsorted(ordered, x, "left") + np.searchsorted(ordered, x, "right") + 1) / 2.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (nan when either side is constant)."""
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
    return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def r_squared(y: np.ndarray, columns: list[np.ndarray]) -> float:
    """R^2 of the least-squares fit y ~ 1 + columns."""
    X = np.column_stack([np.ones_like(y), *columns])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residual = y - X @ coef
    return 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())


def with_interactions(columns: list[np.ndarray]) -> list[np.ndarray]:
    """Main effects and every pairwise product: the BabyLM reading baselines' formulas (a + b + a:b + ...)."""
    return columns + [columns[i] * columns[j] for i in range(len(columns)) for j in range(i + 1, len(columns))]


def relative_r2_gain(y: np.ndarray, covariates: list[np.ndarray], predictor: np.ndarray) -> float:
    """100 * (R^2_model - R^2_baseline) / (1 - R^2_baseline): the share of the variance the baseline leaves
    unexplained that surprisal explains. Baseline = covariates with their pairwise interactions; model = + surprisal."""
    base = with_interactions(covariates)
    r2_base, r2_model = r_squared(y, base), r_squared(y, base + [predictor])
    return 100.0 * (r2_model - r2_base) / (1.0 - r2_base)


def mcnemar_p(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """Exact two-sided McNemar test: among the items exactly one model gets right, is the split 50/50?"""
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    log_pmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(log_pmf)
    return min(1.0, 2.0 * math.exp(top) * sum(math.exp(v - top) for v in log_pmf))


# ----------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class TaskResult:
    task: str
    metric: str  # "accuracy" (%), "spearman" (rho x 100), "delta_r2" (relative R^2 gain, %)
    value: float
    n: int
    ties: int = 0
    skipped: int = 0
    breakdown: dict = field(default_factory=dict)
    over_context: int = 0  # scored texts (candidates) longer than the model's training context
    seconds: float = 0.0
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    predictions: list = field(default_factory=list, repr=False)  # one record per item
    statistic: Callable | None = field(default=None, repr=False)  # the metric on a resample of item indices
    strata: list | None = field(default=None, repr=False)
    right: np.ndarray | None = field(default=None, repr=False)  # accuracy tasks: per-item correctness

    def summary(self) -> dict:
        keys = ("metric", "value", "ci_low", "ci_high", "n", "ties", "skipped", "over_context", "seconds", "breakdown")
        out = {k: getattr(self, k) for k in keys}
        out["tie_rate"] = self.ties / self.n if self.n else 0.0
        out["items_per_second"] = self.n / self.seconds if self.seconds else None
        return out


def _over_context(lm: LM, lengths: list[int]) -> int:
    return sum(length > lm.context for length in lengths) if lm.context else 0


def evaluate_choice(lm: LM, suite: Suite, batch_size: int, reduction: str) -> TaskResult:
    items: list[ChoiceItem] = suite.items
    texts = [t for item in items for t in item.candidates]
    contexts = [item.context for item in items for _ in item.candidates]
    flat, lengths = score_texts(lm, texts, contexts, batch_size, reduction, f"{lm.name} {suite.name}", len(items))
    scores, position = [], 0
    for item in items:
        scores.append(flat[position : position + len(item.candidates)])
        position += len(item.candidates)
    verdicts = [judge(s) for s in scores]
    right = np.array([r for r, _ in verdicts], dtype=bool)

    group_names = sorted(suite.group_weights)
    code = {g: i for i, g in enumerate(group_names)}
    groups = np.array([code[item.group] for item in items], dtype=np.int64)
    weights = np.array([suite.group_weights[g] for g in group_names])
    statistic = accuracy_statistic(right.astype(np.float64), groups, weights)
    breakdown = {g: 100.0 * float(right[groups == code[g]].mean()) for g in group_names if (groups == code[g]).any()}
    for key in sorted({k for item in items for k in item.meta}):  # e.g. BLiMP's field
        values = np.array([item.meta.get(key, "") for item in items])
        breakdown[key] = {v: 100.0 * float(right[values == v].mean()) for v in sorted(set(values))}
    predictions = [{"id": item.id, "group": item.group, "scores": s, "right": bool(r), "tie": bool(t)}
                   for item, s, (r, t) in zip(items, scores, verdicts)]
    return TaskResult(suite.name, "accuracy", statistic(np.arange(len(items))), len(items),
                      ties=sum(t for _, t in verdicts), skipped=suite.skipped, breakdown=breakdown,
                      over_context=_over_context(lm, lengths), predictions=predictions, statistic=statistic,
                      strata=[np.flatnonzero(groups == i) for i in range(len(group_names))], right=right)


def evaluate_wug(lm: LM, suite: Suite, batch_size: int, reduction: str) -> TaskResult:
    items: list[WugItem] = suite.items
    texts = [t for item in items for t in item.candidates]
    flat, lengths = score_texts(lm, texts, None, batch_size, reduction, f"{lm.name} wug_adj", len(items))
    # p(first) among the two = softmax over the two sentence log-probabilities, as the BabyLM pipeline.
    p_first = np.array([1.0 / (1.0 + math.exp(flat[2 * i + 1] - flat[2 * i])) for i in range(len(items))])
    human = np.array([item.human_ratio for item in items])

    def statistic(idx):
        return 100.0 * spearman(p_first[idx], human[idx])

    predictions = [{"id": item.id, "scores": flat[2 * i : 2 * i + 2], "p_first": float(p_first[i]),
                    "human_ratio": item.human_ratio} for i, item in enumerate(items)]
    return TaskResult("wug_adj", "spearman", statistic(np.arange(len(items))), len(items), skipped=suite.skipped,
                      ties=int(np.sum(p_first == 0.5)), over_context=_over_context(lm, lengths),
                      predictions=predictions, statistic=statistic)


EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")


def evaluate_reading(lm: LM, suite: Suite, batch_size: int, reduction: str) -> list[TaskResult]:
    """Surprisal -log p(word | context) of each word and of the previous word (spill-over), then the BabyLM
    regressions: eye tracking (4 measures, averaged) ~ frequency * length * position; self-paced reading time ~ the
    same plus the previous word's length and surprisal, all with pairwise interactions (checked equal to the
    pipeline's statsmodels formulas). One difference, on purpose: the word is scored as it stands in the sentence,
    after its space (`context + " " + word`); the pipeline tokenizes the bare word, a different token sequence for
    tokenizers that mark word starts (SentencePiece's "▁")."""
    items: list[ReadingItem] = suite.items
    contexts = [item.context for item in items] + [item.prev_context for item in items if item.prev_context]
    words = [item.word for item in items] + [item.prev_word for item in items if item.prev_context]
    flat, lengths = score_texts(lm, [f"{c} {w}" for c, w in zip(contexts, words)], contexts, batch_size, reduction,
                                f"{lm.name} reading", len(contexts))
    surprisal = -np.array(flat[: len(items)])
    previous = iter(flat[len(items) :])
    prev_surprisal = np.array([-next(previous) if item.prev_context else np.nan for item in items])

    def column(name):
        return np.array([np.nan if item.measures[name] is None else item.measures[name] for item in items])

    frequency, length, position, prev_length = (column(c) for c in ("Subtlex_log10", "length", "context_length",
                                                                    "prev_length"))

    def gain(idx, y, covariates):
        y, covariates, pred = y[idx], [c[idx] for c in covariates], surprisal[idx]
        keep = ~np.isnan(y) & ~np.isnan(pred) & np.all([~np.isnan(c) for c in covariates], axis=0)
        return relative_r2_gain(y[keep], [c[keep] for c in covariates], pred[keep])

    et_covariates = [frequency, length, position]
    spr_covariates = [frequency, length, position, prev_length, prev_surprisal]
    spr = column("self_paced_reading_time")
    eye = [column(m) for m in EYE_TRACKING]

    def eye_tracking(idx):
        return float(np.mean([gain(idx, y, et_covariates) for y in eye]))

    def self_paced(idx):
        return gain(idx, spr, spr_covariates)

    everything = np.arange(len(items))
    usable_et = int(np.sum(~np.isnan(eye[0]) & np.all([~np.isnan(c) for c in et_covariates], axis=0)))
    usable_spr = int(np.sum(~np.isnan(spr) & np.all([~np.isnan(c) for c in spr_covariates], axis=0)))
    predictions = [{"id": item.id, "surprisal": float(s), "prev_surprisal": None if np.isnan(p) else float(p)}
                   for item, s, p in zip(items, surprisal, prev_surprisal)]
    over = _over_context(lm, lengths)
    et = TaskResult("reading_et", "delta_r2", eye_tracking(everything), usable_et, skipped=suite.skipped,
                    breakdown={m: gain(everything, y, et_covariates) for m, y in zip(EYE_TRACKING, eye)},
                    over_context=over, predictions=predictions, statistic=eye_tracking)
    spr_result = TaskResult("reading_spr", "delta_r2", self_paced(everything), usable_spr, skipped=suite.skipped,
                            over_context=over, predictions=predictions, statistic=self_paced)
    return [et, spr_result]


def evaluate_suite(lm: LM, suite: Suite, batch_size: int = 64, reduction: str = "sum", replicates: int = 1000,
                   seed: int = 0) -> list[TaskResult]:
    """Score every item of a suite, compute the task's metric and its 95% bootstrap interval."""
    if not suite.items:
        raise ValueError(f"suite {suite.name}: no usable items in {suite.source} ({suite.skipped} lines skipped)")
    started = time.perf_counter()
    evaluate = {"choice": evaluate_choice, "wug": evaluate_wug, "reading": evaluate_reading}[suite.kind]
    results = evaluate(lm, suite, batch_size, reduction)
    results = results if isinstance(results, list) else [results]
    seconds = time.perf_counter() - started
    for result in results:
        result.seconds = seconds / len(results)
        if replicates:
            draws = bootstrap([result.statistic], result.strata, len(suite.items), replicates, seed)[:, 0]
            result.ci_low, result.ci_high = (float(v) for v in np.nanpercentile(draws, [2.5, 97.5]))
    return results


def compare(a: TaskResult, b: TaskResult, replicates: int = 1000, seed: int = 0) -> dict:
    """b - a on the same items: paired bootstrap interval of the difference, and a p-value (exact McNemar for
    accuracies; otherwise twice the share of bootstrap differences on the far side of 0, at least 1/replicates)."""
    n = len(a.predictions)
    draws = bootstrap([a.statistic, b.statistic], a.strata, n, replicates, seed) if replicates else np.empty((0, 2))
    diffs = draws[:, 1] - draws[:, 0]
    out = {"task": a.task, "difference": b.value - a.value}
    if len(diffs):
        out["ci_low"], out["ci_high"] = (float(v) for v in np.nanpercentile(diffs, [2.5, 97.5]))
    if a.right is not None and b.right is not None:
        out["p"], out["test"] = mcnemar_p(a.right, b.right), "McNemar (exact)"
    elif len(diffs):
        far = min(np.mean(diffs <= 0), np.mean(diffs >= 0))  # resolution 1/replicates: 0 would claim too much
        out["p"], out["test"] = float(min(1.0, max(2 * far, 1 / len(diffs)))), f"paired bootstrap ({len(diffs)})"
    return out


# ----------------------------------------------------------------------------------------------------------------
# The report: the poster's table

# (section, task, row label) in the poster's order; ours_* are our corpus stage's own dialogue pairs.
POSTER_ROWS = [
    ("Zero-shot (BabyLM)", "blimp", "BLiMP"), ("", "supplement", "BLiMP suppl."), ("", "comps", "COMPS"),
    ("", "entity_tracking", "Entity tracking"), ("", "ewok", "EWoK"), ("", "reading_et", "Read. (eye track.)"),
    ("", "reading_spr", "Read. (self-paced)"), ("", "wug_adj", "Wug adj."), ("", "wug_past", "Wug past"),
    ("", "aoa", "AoA"),
    ("FT (Add'l)", "glue", "(Super)GLUE"), ("", "lexical_decision", "Lexical decision"), ("", "zorro", "Zorro"),
    ("", "dialogue_words", "Dia. MP (Words)"), ("", "dialogue_tokens", "Dia. MP (Tokens)"),
    ("Ours", "ours_words", "Dia. MP, our pairs (Words)"), ("", "ours_tokens", "Dia. MP, our pairs (Tokens)"),
]
# Not obtainable offline: the table says so instead of showing a number.
UNAVAILABLE = {"comps", "wug_past", "aoa", "glue"}
NEEDS_PATH = {"ewok": "ewok=PATH", "lexical_decision": "lexical_decision=FILE"}
PAPER_COLUMNS = {"llamalogue": "llamalogue", "dpo_natural": "DPO Natural.", "dpo_synthetic": "DPO Synth.",
                 "ppo_bleu": "PPO Bleu", "ppo_semsim": "PPO SemSim", "ppo_llm_score": "PPO LLM Score",
                 "ppo_confidence": "PPO Conf.", "baseline": "Baseline"}


def read_paper_results(path) -> dict[str, dict[str, float | None]]:
    """The poster's numbers (data/paper_results.csv): task -> column -> value (None where the poster has "—")."""
    with open(path, newline="") as f:
        return {row["task"]: {k: float(v) if v else None for k, v in row.items() if k != "task"}
                for row in csv.DictReader(f)}


def _cell(result: TaskResult | None, task: str) -> str:
    if result is None:
        if task in UNAVAILABLE:
            return "n/a (data not available)"
        if task in NEEDS_PATH:
            return f"n/a (data not available: --suite {NEEDS_PATH[task]})"
        return "—"
    return f"{result.value:.2f} [{result.ci_low:.2f}, {result.ci_high:.2f}]"


def results_table(results: dict[str, dict[str, TaskResult]], paper: dict | None = None) -> str:
    """Markdown, tasks x models in the poster's layout: value [95% CI]; the poster's columns after ours if given."""
    models = list(results)
    header = ["", "Task", *models] + ([f"poster: {label}" for label in PAPER_COLUMNS.values()] if paper else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ran = {task for per_task in results.values() for task in per_task}
    for section, task, label in POSTER_ROWS:
        if task.startswith("ours_") and task not in ran:
            continue
        row = [section, label] + [_cell(results[m].get(task), task) for m in models]
        if paper:
            row += ["" if paper.get(task, {}).get(c) is None else f"{paper[task][c]:g}" for c in PAPER_COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details_table(results: dict[str, dict[str, TaskResult]]) -> str:
    """Markdown: per model and task, items, ties, skipped lines, over-long items, time and throughput."""
    lines = ["| Model | Task | metric | n | ties (rate) | skipped | > context | seconds | items/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, per_task in results.items():
        for task, r in per_task.items():
            rate = f"{r.ties} ({100 * r.ties / r.n:.2f}%)" if r.n else "0"
            speed = f"{r.n / r.seconds:.3g}" if r.seconds else ""
            lines.append(f"| {model} | {task} | {r.metric} | {r.n} | {rate} | {r.skipped} | {r.over_context} | "
                         f"{r.seconds:.1f} | {speed} |")
    return "\n".join(lines)


def comparisons_table(comparisons: list[dict]) -> str:
    lines = ["| Task | B − A | difference [95% CI] | p | test |", "|---|---|---|---|---|"]
    for c in comparisons:
        interval = f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" if "ci_low" in c else ""
        p = f"{c['p']:.3g}" if "p" in c else ""
        lines.append(f"| {c['task']} | {c['b']} − {c['a']} | {c['difference']:+.2f}{interval} | {p} | "
                     f"{c.get('test', '')} |")
    return "\n".join(lines)


def write_report(out: Path, models: dict, suites: dict[str, Suite], results: dict[str, dict[str, TaskResult]],
                 comparisons: list[dict], settings: dict, paper: dict | None = None) -> str:
    """out/results.md (the poster's table, paired comparisons, details), out/results.json and out/results.png;
    returns the Markdown."""
    report = [f"# Evaluation ({', '.join(results)})", "", "Value [95% bootstrap CI]: accuracy in %, Wug adj. = "
              "Spearman ρ × 100, reading = relative R² gain in %. Ties count as wrong.", "",
              results_table(results, paper)]
    if paper:
        report += ["", "Poster columns: transcribed from the poster (data/paper_results.csv; see data/eval/README.md: "
                   "its Wug adj. values besides the baseline's look unscaled)."]
    if comparisons:
        report += ["", "## Paired comparisons", "", comparisons_table(comparisons)]
    report += ["", "## Details", "", details_table(results), ""]
    markdown = "\n".join(report)
    (out / "results.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps({
        "models": models,
        "suites": {name: {"source": s.source, "items": len(s.items), "skipped": s.skipped, "problems": s.problems}
                   for name, s in suites.items()},
        "results": {m: {t: r.summary() for t, r in per_task.items()} for m, per_task in results.items()},
        "comparisons": comparisons,
        "settings": settings,
    }, indent=2) + "\n")
    plot_results(results, out / "results.png")
    return markdown


def plot_results(results: dict[str, dict[str, TaskResult]], png_path) -> None:
    """One horizontal bar per model and task, with its 95% interval."""
    from llamalogue.runlog import plt

    tasks = [task for _, task, _ in POSTER_ROWS if any(task in per_task for per_task in results.values())]
    models = list(results)
    height = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(tasks) * max(1, len(models)) ** 0.5))
    for k, model in enumerate(models):
        ys, values, errors = [], [], [[], []]
        for t, task in enumerate(tasks):
            r = results[model].get(task)
            if r is None:
                continue
            ys.append(t + k * height)
            values.append(r.value)
            errors[0].append(max(0.0, r.value - r.ci_low))
            errors[1].append(max(0.0, r.ci_high - r.value))
        ax.barh(ys, values, height=height, xerr=errors, label=model, capsize=2)
    labels = dict((task, label) for _, task, label in POSTER_ROWS)
    ax.set_yticks([t + height * (len(models) - 1) / 2 for t in range(len(tasks))], [labels[t] for t in tasks])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy % / Spearman x100 / relative R² gain % (95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
