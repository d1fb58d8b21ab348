"""BabyLM's word budget: how many words of input a model has been exposed to since its pretraining began.

BabyLM limits a model's input in words (strict-small: 10M), teacher feedback included, and names its checkpoints by
the words seen. Every run records `words_seen` in its config.json, carried forward from its --init:

    pretraining   the words of its training text x the epochs trained (a part of an epoch, its share)
    DPO           + the words of every pair trained on (prompt, chosen and rejected reply), each time it is seen;
                    for synthetic pairs the chosen replies are the teacher's, so its text is counted there
    PPO           + the words of every prompt and of every reply the policy sampled (its reward is a number: the
                    policy is never shown the teacher's text)

A word is a whitespace-separated token holding a letter or a digit that is not a speaker tag (`count_words`), so
`*MOT:`, commas and terminators are not words. A run whose --init records no count carries None: unknown, not 0.
"""

import functools
import os
import re

WORD = re.compile(r"\S*[^\W_]\S*")  # a token holding a letter or a digit
SPEAKER_TAG = re.compile(r"(?<!\S)\*[^\s:]+:(?!\S)")  # `*MOT:`: holds letters, is no word


def count_words(text: str) -> int:
    return len(WORD.findall(text)) - len(SPEAKER_TAG.findall(text))


@functools.lru_cache(maxsize=8)
def _file_words(path: str, modified: float) -> int:
    with open(path, encoding="utf-8") as f:
        return count_words(f.read())


def text_words(path) -> int | None:
    """The words of a text file (e.g. a corpus folder's train.txt), counted once per version of the file; None when
    it is not on this machine."""
    try:
        return _file_words(str(path), os.path.getmtime(path))
    except FileNotFoundError:
        return None


def pair_words(pairs) -> list[int]:
    """The words one showing of each preference pair adds: its prompt, chosen and rejected reply."""
    return [count_words(p.prompt) + count_words(p.chosen) + count_words(p.rejected) for p in pairs]


def plus(carried: int | None, words: int) -> int | None:
    """words added to a count carried from --init (None, unknown, stays unknown)."""
    return None if carried is None else carried + round(words)
