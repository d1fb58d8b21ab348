"""What keeps runs and caches made by earlier versions of llamalogue loading: every rule of that kind, in one place.

A run's record (RUN/config.json) is brought up to today's form when it is read (`upgrade_record`, called by
run_dir.read_record and checkpoint.load_config), so no stage needs to know that older records were written
differently. A teacher cache's key leaves out the settings that did not exist when earlier caches were made, while
they hold their old value (`cache_key_settings`), so those caches keep answering.

Each rule names the form it reads and the form it writes.
"""

import copy
import csv
import re
from pathlib import Path

from llamalogue.word_budget import text_words, words_at


def upgrade_record(record: dict, run_dir) -> dict:
    """A copy of the record of the run in run_dir in today's form (the record itself is left as it is)."""
    record = copy.deepcopy(record)
    stage = record.get("stage")
    inputs = record.setdefault("inputs", {})  # runs made before inputs were recorded: nothing to check them against
    if stage == "pretrain" and "data" in record:
        inputs.setdefault("data", record.pop("data"))  # the corpus folder was a top-level "data"
    if stage == "pretrain":
        record.setdefault("tokens", None)  # the training tokens seen were not recorded
        train = record.get("train")
        if isinstance(train, dict) and isinstance(train.get("compile"), bool):  # --compile was a switch, not a mode
            train["compile"] = "on" if train["compile"] else "off"
        if isinstance(train, dict) and "windows_per_step" not in record:  # the global batch was only in "scale"
            processes = re.search(r"\((\d+) process\(es\) x", str(record.get("scale", "")))
            record["windows_per_step"] = (int(processes.group(1)) if processes else 1) * train.get(
                "grad_accum", 1) * train.get("batch_size", 1)
    if "words_seen" not in record:  # the word budget was not kept
        record["words_seen"] = words_seen_of_old_record(record, Path(run_dir))
    if stage == "ppo":
        # the reward's settings came with the pmi and preference rewards; the teacher sampled in fp32 before bf16
        settings = record.setdefault("reward_settings", {})
        settings.setdefault("teacher_dtype", "float32")
        # the reward's rules were a reward setting, the preset's name was top-level, --max-steps was no setting, and
        # PPO, one reply per prompt, was the only algorithm
        style, preset = settings.pop("style", "ours"), record.pop("preset", "custom")
        if isinstance(record.get("train"), dict):  # a damaged record stays damaged: resume_record reports it
            for name, value in (("preset", preset), ("max_steps", 0), ("reward_style", style), ("algorithm", "ppo"),
                                ("group_size", 1)):
                record["train"].setdefault(name, value)
    return record


# The teacher settings added after caches were made, with the value every earlier cache was made with.
CACHE_KEY_DEFAULTS = {"dtype": "float32", "layout": "few-shot chat"}


def cache_key_settings(settings: dict) -> dict:
    """The settings part of a teacher cache key: a setting still at the value earlier caches were made with is left
    out, so that their keys stay what they were."""
    return {name: value for name, value in settings.items() if CACHE_KEY_DEFAULTS.get(name, object()) != value}



def words_seen_of_old_record(record: dict, run_dir: Path) -> int | None:
    """The words a model recorded before `words_seen` existed had seen: for a pretraining run, its training text x
    the epochs of its log's last row (where it stopped); for a milestone, its tokens at the text's rate; unknown
    for any other stage, or when the text or the log is not on this machine."""
    data = record["inputs"].get("data")
    words = text_words(Path(data) / "train.txt") if data and record.get("stage") in ("pretrain", "milestone") else None
    if words is None:
        return None
    if record["stage"] == "milestone":
        return words_at(record["tokens"], record["train_tokens"], words)
    try:
        with open(run_dir / "log.csv", newline="", encoding="utf-8") as log:
            epochs = float(list(csv.DictReader(log))[-1]["epoch"])
    except (OSError, IndexError, KeyError, ValueError):  # no log, an empty one, or one of another shape
        return None
    return round(words * epochs)
