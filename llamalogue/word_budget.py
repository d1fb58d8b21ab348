"""BabyLM's word budget: how many words of input a model has been exposed to since its pretraining began.

BabyLM limits a model's input in words (strict-small: 10M), teacher feedback included, and names its checkpoints by
the words seen. Every run records `words_seen` in its config.json, carried forward from its --init:

    pretraining   the training tokens seen x the words per token of its training text (`words_at`): one epoch
                  is the words of the text, a part of an epoch its share
    DPO           + the words of every row it trained on, each time it is seen: the prompt in the chosen row and in
                    the rejected row, and the two replies (for synthetic pairs the chosen replies are the
                    teacher's, so its text is counted there)
    RL            + the words of every episode: the prompt and the reply the policy sampled (PPO, RLOO, GRPO,
                    Dr. GRPO alike; the reward is a number, the policy is never shown the teacher's text)
    reward model  + its rows' words x its epochs (its trunk is a model that read them)

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
    """The words one showing of each preference pair adds: its two rows, the prompt before each reply."""
    return [2 * count_words(p.prompt) + count_words(p.chosen) + count_words(p.rejected) for p in pairs]


def words_at(tokens: int, train_tokens: int, train_words: int) -> int:
    """The words seen after `tokens` training tokens of a text of train_words words in train_tokens tokens."""
    return round(train_words * tokens / train_tokens)


def plus(carried: int | None, words: int) -> int | None:
    """words added to a count carried from --init (None, unknown, stays unknown)."""
    return None if carried is None else carried + round(words)
