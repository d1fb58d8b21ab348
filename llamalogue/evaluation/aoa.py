"""Age of acquisition (Chang & Bergen, 2022; the BabyLM 2025 pipeline's AoA_word): when, in training, does the model
learn a word, and does it learn first what children learn first?

For each CDI word (`llamalogue.suites.load_aoa_words`) and each milestone checkpoint of a run (`train_lm.py
--milestones`, `llamalogue.pretraining.milestones`):

    surprisal(w, t) = mean over the word's contexts c of  -log p(w | BOS, c)       (nats; only the word's tokens)

where the contexts are held-out CHILDES utterances that contain the word, cut before it (`*MOT: where is the` for
"ball"); by default those of the run's own corpus folder that pretraining never saw (`val.txt`, `dpo.txt`,
`eval.txt`: other transcripts). Words found in fewer than
`min_contexts` utterances are skipped and counted. Over x = log10(training tokens) a decreasing sigmoid is fitted,

    s(x) = low + span / (1 + exp(k (x - c)))        span > 0, k > 0,

and the model's AoA is its midpoint c, where the curve is halfway between the surprisal it starts from (low + span)
and the one it ends at (low), in log10 tokens. A word whose fitted midpoint lies at or beyond either end of the
milestones, or whose surprisal does not fall, has no AoA there and is counted. The score is the correlation of the
model's AoA with the children's (months), Pearson r x 100 as the BabyLM 2025 scorer reports it, with Spearman's rho,
95% bootstrap intervals over words, and the same by lexical category.

Two choices differ from the pipeline's scorer (utils.py, AoAEvaluator), on purpose: its threshold is halfway between
a fixed "chance" surprisal log2(300,000) (bits) and the word's minimum surprisal (nats), which mixes units and does not
depend on the model's vocabulary; and its children's AoA is refitted from Wordbank proportions we do not have (we
read the list's own `aoa`). A run without milestones (DPO, PPO) has no learning curve: "n/a (no training
checkpoints)", where the official scorer writes 0 (fewer than 3 words: correlation 0.0).
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamalogue.checkpoint import load_config
from llamalogue.evaluation.lm import load_lm
from llamalogue.evaluation.scoring import score_texts
from llamalogue.evaluation.statistics import bootstrap, pearson, spearman
from llamalogue.evaluation.tasks import TaskResult
from llamalogue.pretraining.milestones import find_milestones
from llamalogue.run_dir import recorded_data
from llamalogue.suites import AoAWord, Suite


@dataclass
class AoAConfig:
    max_contexts: int = 20  # utterances per word (a seeded sample when there are more), as the pipeline's n_contexts
    min_contexts: int = 5  # fewer: the word is skipped (its mean surprisal would be noise)
    min_checkpoints: int = 4  # a 4-parameter curve needs at least as many points
    seed: int = 0


# The corpus stage's splits that pretraining never sees (split by transcript): validation, DPO/PPO prompts, dialogue
# minimal pairs.
HELD_OUT_SPLITS = ("val", "dpo", "eval")


class NoCurve(Exception):
    """The model cannot give learning curves (no milestones, no held-out utterances): the table cell's reason."""


# ----------------------------------------------------------------------------------------------------------------
# Contexts


def read_utterances(path) -> list[str]:
    """Distinct utterance lines ("*MOT: where is the ball ?") of a corpus split, in order (a triplet's last line is
    the next triplet's first)."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line))


def word_contexts(words: list[AoAWord], utterances: list[str], config: AoAConfig) -> dict[str, list[tuple[str, str]]]:
    """word -> [(context, word as written)]: each utterance holding the word (whole words, case-insensitive; multiword
    forms like "ice cream" as a sequence) once, cut before its first occurrence; at most max_contexts, sampled."""
    by_first_word: dict[str, list[list[str]]] = {}
    for word in words:
        parts = word.word.split()
        by_first_word.setdefault(parts[0], []).append(parts)
    found: dict[str, list[tuple[str, str]]] = {word.word: [] for word in words}
    for utterance in utterances:
        tokens = utterance.split()
        lowered = [t.lower() for t in tokens]
        done = set()
        for i in range(1, len(tokens)):  # token 0 is the speaker tag
            for parts in by_first_word.get(lowered[i], ()):
                key = " ".join(parts)
                if key not in done and lowered[i : i + len(parts)] == parts:
                    done.add(key)
                    found[key].append((" ".join(tokens[:i]), " ".join(tokens[i : i + len(parts)])))
    rng = random.Random(config.seed)
    return {w: rng.sample(c, config.max_contexts) if len(c) > config.max_contexts else c for w, c in found.items()}


# ----------------------------------------------------------------------------------------------------------------
# The learning curve and its midpoint


def fit_sigmoid(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """(low, span, k, c, squared error) of the least-squares fit y ~ low + span / (1 + exp(k (x - c))).

    For fixed (k, c) the curve is linear in (low, span): with g = 1 / (1 + exp(k (x - c))),

        span = cov(g, y) / var(g),   low = mean(y) - span * mean(g),   error = n (var(y) - cov(g, y)^2 / var(g)),

    so a grid over k (log-spaced, 0.3 to 30 per decade of tokens) and c (400 points from the first milestone to the
    last) finds the global least-squares fit without an optimiser."""
    ks = np.geomspace(0.3, 30.0, 60)
    cs = np.linspace(x[0], x[-1], 400)
    k, c = np.meshgrid(ks, cs, indexing="ij")
    g = 1.0 / (1.0 + np.exp(np.clip(k[..., None] * (x - c[..., None]), -50, 50)))  # [k, c, point]
    g_mean, y_mean = g.mean(-1), y.mean()
    cov = (g * y).mean(-1) - g_mean * y_mean
    var = np.maximum((g * g).mean(-1) - g_mean**2, 1e-12)
    error = len(y) * (y.var() - cov**2 / var)
    error = np.where(cov > 0, error, np.inf)  # span > 0: surprisal falls as training goes on
    best = np.unravel_index(np.argmin(error), error.shape)
    span = float(cov[best] / var[best])
    return float(y_mean - span * g_mean[best]), span, float(k[best]), float(c[best]), float(error[best])


def model_aoa(x: np.ndarray, y: np.ndarray) -> tuple[float | None, str]:
    """(the curve's midpoint in log10 tokens, "") or (None, why there is none)."""
    low, span, k, c, error = fit_sigmoid(x, y)
    if not np.isfinite(error):
        return None, "surprisal does not fall"
    if c <= x[0] or c >= x[-1]:
        return None, "midpoint outside the milestones"
    return c, ""


# ----------------------------------------------------------------------------------------------------------------
# The task


def evaluate_aoa(run, suite: Suite, contexts_files=None, config: AoAConfig | None = None, batch_size: int = 64,
                 replicates: int = 1000, device: str | None = None) -> tuple[TaskResult, dict]:
    """(result, surprisal records in the pipeline's AoA_word/surprisal.json layout) for a run with milestones.

    Raises NoCurve (one line: why) for a model without milestones or without held-out utterances."""
    started, config = time.perf_counter(), config or AoAConfig()
    # One checkpoint per token count (two milestones passed by one step hold the same weights).
    found = find_milestones(run) if Path(run).is_dir() else []
    checkpoints = list({tokens: (tokens, path) for tokens, path in found}.values())
    if len(checkpoints) < config.min_checkpoints:
        raise NoCurve("n/a (no training checkpoints)" if not checkpoints else
                      f"n/a ({len(checkpoints)} training checkpoints, fewer than {config.min_checkpoints})")
    x = np.log10([tokens for tokens, _ in checkpoints])
    if contexts_files is None:
        data = recorded_data(load_config(run)) or Path("")
        contexts_files = [data / f"{split}.txt" for split in HELD_OUT_SPLITS if (data / f"{split}.txt").is_file()]
        if not contexts_files:
            raise NoCurve(f"n/a (no held-out utterances in {data}: --aoa-contexts FILE)")
    missing = [str(f) for f in contexts_files if not Path(f).is_file()]
    if missing:
        raise NoCurve(f"n/a (no held-out utterances at {', '.join(missing)})")
    words: list[AoAWord] = suite.items
    utterances = list(dict.fromkeys(u for f in contexts_files for u in read_utterances(f)))
    contexts = word_contexts(words, utterances, config)
    usable = [w for w in words if len(contexts[w.word]) >= config.min_contexts]
    texts = [(context, written) for w in usable for context, written in contexts[w.word]]
    owner = np.repeat(np.arange(len(usable)), [len(contexts[w.word]) for w in usable])

    surprisal = np.zeros((len(checkpoints), len(usable)))
    records = []
    for t, (tokens, path) in enumerate(checkpoints):
        lm = load_lm(path, device)
        scores, _ = score_texts(lm, [f"{c} {w}" for c, w in texts], [c for c, _ in texts], batch_size,
                                desc=f"{Path(run).name} aoa {path.name}", items=len(texts))
        per_context = -np.array(scores)
        surprisal[t] = np.bincount(owner, weights=per_context, minlength=len(usable)) / np.bincount(owner)
        counter = {}
        for (context, written), s, i in zip(texts, per_context, owner):
            counter[i] = counter.get(i, -1) + 1
            records.append({"step": path.name, "tokens": tokens, "target_word": usable[i].word,
                            "context_id": counter[i], "context": context + " ", "surprisal": float(s)})

    skipped = {f"fewer than {config.min_contexts} contexts": len(words) - len(usable)}
    fitted, predictions = [], []
    for i, word in enumerate(usable):
        aoa, why = model_aoa(x, surprisal[:, i])
        if aoa is None:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            fitted.append((word, aoa))
        predictions.append({"id": word.id, "word": word.word, "category": word.category, "child_aoa": word.child_aoa,
                            "contexts": len(contexts[word.word]), "surprisal": surprisal[:, i].tolist(),
                            "model_aoa_log10_tokens": aoa, "no_aoa": why or None})
    result = correlation_result(fitted, replicates)
    result.skipped = suite.skipped
    result.breakdown["checkpoints"] = {path.name: tokens for tokens, path in checkpoints}
    result.breakdown["words"] = {"listed": len(words), "with contexts": len(usable), "with an AoA": len(fitted),
                                 **{f"no AoA: {k}": v for k, v in skipped.items()}}
    result.predictions = predictions
    result.seconds = time.perf_counter() - started
    return result, {"metadata": {"model_name": Path(run).name, "use_bos_only": False,
                                 "total_steps": len(checkpoints), "completed_steps": len(checkpoints)},
                    "results": records}


def correlation_result(fitted: list[tuple[AoAWord, float]], replicates: int, seed: int = 0) -> TaskResult:
    """100 * Pearson r (the value) and 100 * Spearman rho of model vs child AoA, overall and by lexical category,
    each with its 95% bootstrap interval over words."""
    model = np.array([aoa for _, aoa in fitted])
    child = np.array([word.child_aoa for word, _ in fitted])
    category = np.array([word.category for word, _ in fitted])
    subsets = {"all": np.ones(len(fitted), dtype=bool), **{c: category == c for c in sorted(set(category))}}

    def correlate(kind, subset):
        measure = pearson if kind == "pearson" else spearman

        def statistic(idx):
            keep = idx[subset[idx]]
            return 100.0 * measure(model[keep], child[keep]) if len(keep) >= 3 else float("nan")
        return statistic

    statistics = {(kind, name): correlate(kind, subset) for name, subset in subsets.items()
                  for kind in ("pearson", "spearman")}
    everything = np.arange(len(fitted))
    draws = bootstrap(list(statistics.values()), None, len(fitted), replicates, seed) if replicates and len(fitted) \
        else np.full((1, len(statistics)), np.nan)
    breakdown = {}
    for (kind, name), statistic, column in zip(statistics, statistics.values(), draws.T):
        low, high = (float(v) for v in np.nanpercentile(column, [2.5, 97.5])) if np.isfinite(column).any() \
            else (float("nan"), float("nan"))
        breakdown.setdefault(name, {"n": int(subsets[name].sum())})[kind] = [statistic(everything), low, high]
    value, ci_low, ci_high = breakdown["all"]["pearson"]
    return TaskResult("aoa", "pearson", value, len(fitted), breakdown=breakdown, ci_low=ci_low, ci_high=ci_high,
                      statistic=statistics[("pearson", "all")])
