"""Statistics: the task metrics (correlations, regressions), bootstrap confidence intervals and paired tests.

Every number evaluate.py reports comes with a 95% bootstrap interval over items: the metric is recomputed on
`replicates` resamples of the items (within each paradigm, so each keeps its size) and the 2.5th and 97.5th
percentiles are the interval. Two models scored on the same items are resampled together (paired).
"""

import math
from typing import Callable

import numpy as np


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
    return pearson(ranks(x), ranks(y))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 * sum (y - mean y)^2) (nan when either
    side is constant)."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx) * np.sum(dy * dy)))
    return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")


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

