"""The tasks: from a suite's items and the scorer's numbers to each task's metric, its interval and its verdicts.

Metrics follow the BabyLM 2025 pipeline's definitions (our own code): BLiMP, its supplement, EWoK and COMPS = mean of
the per-paradigm (UID) accuracies; entity tracking = mean over files of the mean over numbers of operations; wug
adjective nominalisation and wug past tense = Spearman correlation (x100) of the model's preference for the first
candidate, softmax over the candidates' log-probabilities, with the humans'; reading = how much word surprisal adds
to a regression of reading times on frequency, length and position (relative gain in R^2, in %). Every number comes
with a 95% bootstrap confidence interval over items (`statistics`). AoA needs a run's training checkpoints, not one
model: it lives in `aoa`.
"""

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from llamalogue.evaluation import score_cache
from llamalogue.evaluation.lm import LM
from llamalogue.evaluation.scoring import judge, score_texts
from llamalogue.evaluation.statistics import accuracy_statistic, bootstrap, mcnemar_p, relative_r2_gain, spearman
from llamalogue.suites import ChoiceItem, ReadingItem, Suite, WugItem


@dataclass
class TaskResult:
    task: str
    metric: str  # "accuracy" (%), "spearman" (rho x 100), "delta_r2" (relative R^2 gain, %), "pearson" (r x 100)
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
    contexts = [item.contexts[k] if item.contexts else "" for item in items for k in range(len(item.candidates))]
    flat, lengths = score_texts(lm, texts, contexts, batch_size, reduction, f"{lm.name} {suite.name}", len(items),
                                suite.word_end)
    scores, position = [], 0
    for item in items:
        scores.append(flat[position : position + len(item.candidates)])
        position += len(item.candidates)
    # an item without candidates stands for a row the paper's protocol could not score: in the count, never right
    verdicts = [judge(s) if s else (False, False) for s in scores]
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
    # The candidate the model chose under our rule: the right one only when it wins strictly, else the best other.
    chosen = [0 if r else 1 + int(np.argmax(s[1:])) if s else None for s, (r, _) in zip(scores, verdicts)]
    predictions = [{"id": item.id, "group": item.group, "scores": s, "right": bool(r), "tie": bool(t), "choice": c}
                   for item, s, (r, t), c in zip(items, scores, verdicts, chosen)]
    return TaskResult(suite.name, "accuracy", statistic(np.arange(len(items))), len(items),
                      ties=sum(t for _, t in verdicts), skipped=suite.skipped, breakdown=breakdown,
                      over_context=_over_context(lm, lengths), predictions=predictions, statistic=statistic,
                      strata=[np.flatnonzero(groups == i) for i in range(len(group_names))], right=right)


def evaluate_wug(lm: LM, suite: Suite, batch_size: int, reduction: str) -> TaskResult:
    """Wug tests (adjective nominalisation, past tense): the model's probability of the first candidate among them,

        p_first = exp(log p(c_1)) / sum_k exp(log p(c_k))        (softmax over the candidates, as the pipeline)

    correlated with the share of humans who chose it: 100 * Spearman's rho."""
    items: list[WugItem] = suite.items
    texts = [t for item in items for t in item.candidates]
    flat, lengths = score_texts(lm, texts, None, batch_size, reduction, f"{lm.name} {suite.name}", len(items))
    scores, position = [], 0
    for item in items:
        scores.append(np.array(flat[position : position + len(item.candidates)]))
        position += len(item.candidates)
    p_first = np.array([1.0 / float(np.sum(np.exp(s - s[0]))) for s in scores])
    human = np.array([item.human_ratio for item in items])

    def statistic(idx):
        return 100.0 * spearman(p_first[idx], human[idx])

    predictions = [{"id": item.id, "scores": s.tolist(), "p_first": float(p), "choice": int(np.argmax(s)),
                    "human_ratio": item.human_ratio} for item, s, p in zip(items, scores, p_first)]
    ties = sum(int(np.sum(s == s.max()) > 1) for s in scores)
    return TaskResult(suite.name, "spearman", statistic(np.arange(len(items))), len(items), skipped=suite.skipped,
                      ties=ties, over_context=_over_context(lm, lengths), predictions=predictions, statistic=statistic)


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
    predictions = [{"id": item.id, "row": item.row, "surprisal": float(s),
                    "prev_surprisal": None if np.isnan(p) else float(p)}
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
    started, recalls = time.perf_counter(), score_cache.recalls
    evaluate = {"choice": evaluate_choice, "wug": evaluate_wug, "reading": evaluate_reading}[suite.kind]
    results = evaluate(lm, suite, batch_size, reduction)
    results = results if isinstance(results, list) else [results]
    # scores kept from an earlier evaluation took no scoring time: 0, shown as "kept" (no speed)
    seconds = 0.0 if score_cache.recalls > recalls else time.perf_counter() - started
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

