"""Milestone checkpoints: the weights as they were when pretraining had seen N training tokens.

The AoA evaluation (Chang & Bergen, 2022; `llamalogue.evaluation.aoa`) needs a word's surprisal at many points of
training, so `train_lm.py --milestones 100K,1M,...` keeps, beside the run's own checkpoint, one weights-only run
directory per milestone:

    RUN/milestones/chck_100K/{config.json, checkpoint.pt, tokenizer.model}     (config.json has "tokens": the count)

named as the paper's base model kept its own (chck_1M ... chck_100M). A milestone is saved by the first optimisation
step whose token count reaches it; its config records the exact count, `step * tokens per step`, which the AoA fit
uses. Each is an ordinary run directory: `evaluate.py --model RUN/milestones/chck_1M` scores it like any model.
"""

import json
import re
from dataclasses import replace
from pathlib import Path

from llamalogue.checkpoint import is_run_dir, save_checkpoint
from llamalogue.pretraining.config import TrainConfig
from llamalogue.pretraining.data import Corpus
from llamalogue.run_dir import CONFIG, RunError

FOLDER = "milestones"

# Per preset, log-spaced up to a little past what its default run sees: tiny (tests) ~10-30K tokens; small on the
# embedded sample 3M (on the full corpus, 2 epochs: 23M); paper 10 epochs of the full corpus ~114M, where the paper
# kept chck_1M ... chck_9M, chck_10M ... chck_100M (the BabyLM 2025 pipeline's strict-small checkpoint names).
PRESET_MILESTONES = {
    "tiny": [1_000, 2_000, 4_000, 8_000, 16_000, 32_000],
    "small": [k * 100_000 for k in range(1, 10)] + [k * 1_000_000 for k in range(1, 11)] + [20_000_000],
    "paper": [k * 1_000_000 for k in range(1, 10)] + [k * 10_000_000 for k in range(1, 11)],
}

_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


def parse_milestones(text: str, preset: str) -> tuple[list[int], list[int]]:
    """(token counts, word counts): "preset" -> the preset's defaults (tokens); "100K,1M,2.5M,3000000" -> sorted
    distinct token counts; a count ending in "w" ("1Mw", "500Kw") is in words, as BabyLM counts its checkpoints,
    and becomes tokens at the rate of the run's training text (llamalogue.word_budget). A bad entry is one ValueError
    naming it."""
    if text == "preset":
        if preset not in PRESET_MILESTONES:
            raise ValueError(f"--milestones: the preset {preset!r} has no default milestones; give the token counts "
                             f"(e.g. --milestones 100K,1M,2M)")
        return PRESET_MILESTONES[preset], []
    tokens, words = set(), set()
    for entry in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMB]?)\s*(w?)\s*", entry, re.IGNORECASE)
        if not match or float(match.group(1)) * _UNITS[match.group(2).upper()] < 1:
            raise ValueError(f"--milestones: {entry!r} is not a token count (e.g. 500K, 1M, 2.5M, 3000000) or a word "
                             f"count (1Mw)")
        (words if match.group(3) else tokens).add(round(float(match.group(1)) * _UNITS[match.group(2).upper()]))
    return sorted(tokens), sorted(words)


def word_milestones_in_tokens(milestone_words, train_tokens: int, train_words: int | None, data_dir) -> set[int]:
    """Milestones given in words, as token counts at the training text's rate: w words are w * train_tokens /
    train_words tokens (llamalogue.word_budget.words_at, turned around)."""
    if not train_words:
        raise RunError(f"--milestones in words: {Path(data_dir) / 'train.txt'} is not there to count its words")
    return {round(words * train_tokens / train_words) for words in milestone_words}


def with_word_milestones(config: TrainConfig, corpus: Corpus) -> TrainConfig:
    """Milestones given in words (--milestones 1Mw) kept where the tokens say, at the training text's rate."""
    if not config.milestone_words:
        return config
    return replace(config, milestones=tuple(sorted({*config.milestones, *word_milestones_in_tokens(
        config.milestone_words, len(corpus.train_tokens), corpus.train_words, corpus.folder)})))


def milestone_name(tokens: int) -> str:
    """chck_100K, chck_1M, chck_2.5M, chck_1234 (the largest unit that writes the count in at most 3 decimals)."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size and (tokens * 1000) % size == 0:
            return f"chck_{tokens / size:g}{unit}"
    return f"chck_{tokens}"


def save_milestones(out_dir, model, tokenizer, run_config: dict, step: int, tokens_per_step: int) -> list[str]:
    """Save the milestones of the run (run_config["train"]["milestones"]) that optimisation step `step` (1-based)
    passed, taking training from (step - 1) * tokens_per_step to step * tokens_per_step tokens; returns their names."""
    tokens_before, tokens_now = (step - 1) * tokens_per_step, step * tokens_per_step
    saved = []
    for milestone in run_config["train"]["milestones"]:
        if tokens_before < milestone <= tokens_now:
            name = milestone_name(milestone)
            save_checkpoint(Path(out_dir) / FOLDER / name, model, tokenizer,
                            {**run_config, "stage": "milestone", "milestone": milestone, "tokens": tokens_now,
                             "step": step})
            saved.append(name)
    return saved


def find_milestones(run_dir) -> list[tuple[int, Path]]:
    """(training tokens, run directory) of a run's milestone checkpoints, by tokens; [] for a run without any (a
    DPO or PPO run, or one trained without --milestones)."""
    folder = Path(run_dir) / FOLDER
    found = []
    for path in sorted(folder.glob("chck_*")) if folder.is_dir() else []:
        if is_run_dir(path):
            found.append((int(json.loads((path / CONFIG).read_text())["tokens"]), path))
    return sorted(found)
