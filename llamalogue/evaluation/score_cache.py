"""Scores kept between evaluations: the same weights, texts and scoring code give the same numbers, so they are
computed once.

Every evaluation beside a base scores the base again, and BLiMP's 60,000 pairs and Zorro's 46,000 take minutes on a
CPU. So `scoring.score_texts` keeps each call's scores and lengths in llamalogue's per-user cache
(llamalogue.run_dir.user_cache: scores/KEY.npz; LLAMALOGUE_CACHE="" turns it off), under

    KEY = sha256(the run's checkpoint and tokenizer, the device type, the texts, their contexts, the batch size,
                 the reduction, word_end, the source of the code that turns a text into a score)

A retrained run, another suite file, another protocol or an edit to the model or the scorer is a new key, scored
afresh. Only run directories loaded by `lm.load_lm` are kept (their files name the weights); Hugging Face models
and models in training are scored every time. A cache file that cannot be read or written is passed over.
"""

import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from llamalogue.run_dir import atomic_write, user_cache

# The code a score depends on: the model's forward pass, the tokenizer, loading, the scorer and its tree attention.
SCORING_CODE = ("model.py", "tokenizer.py", "checkpoint.py", "evaluation/lm.py", "evaluation/scoring.py",
                "evaluation/tree.py")


@functools.cache
def code_digest() -> str:
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in SCORING_CODE:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()


def key(weights_id: str | None, device: str, texts: list[str], contexts: list[str] | None, batch_size: int,
        reduction: str, word_end: bool) -> str | None:
    """The cache key of one score_texts call (None: not kept, the model has no weights_id)."""
    if weights_id is None:
        return None
    digest = hashlib.sha256(json.dumps([weights_id, device, batch_size, reduction, word_end, code_digest()]).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(b"\1")
    for context in contexts or ():
        digest.update(context.encode("utf-8") + b"\0")
    return digest.hexdigest()


def recall(cache_key: str | None) -> tuple[list[float], list[int]] | None:
    """(scores, lengths) kept under the key, or None."""
    path = user_cache(f"scores/{cache_key}.npz") if cache_key else None
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as kept:
            return kept["scores"].tolist(), kept["lengths"].tolist()
    except (OSError, ValueError, KeyError):
        return None


def keep(cache_key: str | None, scores: list[float], lengths: list[int]) -> None:
    path = user_cache(f"scores/{cache_key}.npz") if cache_key else None
    if path is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, scores=np.array(scores, dtype=np.float64), lengths=np.array(lengths, dtype=np.int64))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    except OSError:
        pass
