"""Scores kept between evaluations: the same weights, texts and scoring code give the same numbers, so they are
computed once.

Every evaluation beside a base scores the base again, and BLiMP's 60,000 pairs and Zorro's 46,000 take minutes on a
CPU. So `scoring.score_texts` keeps each call's scores and lengths in llamalogue's per-user cache
(llamalogue.run_dir.user_cache: scores/KEY.npz; LLAMALOGUE_CACHE="" turns it off), under

    KEY = sha256(the run's checkpoint, tokenizer and model settings, the device type, the texts, their contexts,
                 the batch size, the reduction, word_end, the torch and sentencepiece versions, the source of the
                 code that turns a text into a score)

A retrained run, another suite file, another protocol or an edit to the model or the scorer is a new key, scored
afresh. (The protocol and the suites are not in the code part of the key: what they change reaches the scorer as the
texts and word_end, which are.) Only run directories loaded by `lm.load_lm` are kept, their files naming the weights
(`weights_id`); Hugging Face models and models in training are scored every time. A cache file that cannot be read
or written is passed over. Nothing is ever evicted: a milestone sweep adds ~2 MB per suite and checkpoint.
"""

import functools
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import sentencepiece
import torch

from llamalogue.run_dir import CHECKPOINT, TOKENIZER, file_sha256, user_cache

# The code a score depends on: the model's forward pass, the tokenizer, loading, the scorer and its tree attention.
SCORING_CODE = ("model.py", "tokenizer.py", "checkpoint.py", "evaluation/lm.py", "evaluation/scoring.py",
                "evaluation/tree.py")
recalls = 0  # calls answered from the cache in this process (a task scored from it took no scoring time)


def enabled() -> bool:
    return user_cache("scores") is not None


def weights_id(run, model_settings: dict) -> str:
    """What names a run's weights: its checkpoint's and tokenizer's SHA-256 and its model settings."""
    files = [file_sha256(Path(run) / name) for name in (CHECKPOINT, TOKENIZER)]
    return hashlib.sha256(json.dumps([files, model_settings], sort_keys=True).encode()).hexdigest()


@functools.cache
def code_digest() -> str:
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(f"{torch.__version__} {sentencepiece.__version__}".encode())
    for name in SCORING_CODE:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()


def key(weights: str | None, device: str, texts: list[str], contexts: list[str] | None, batch_size: int,
        reduction: str, word_end: bool) -> str | None:
    """The cache key of one score_texts call (None: not kept, the model has no weights_id or the cache is off)."""
    if weights is None or not enabled():
        return None
    what = [weights, device, batch_size, reduction, word_end, code_digest(), list(texts), contexts]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def recall(cache_key: str | None, n_texts: int) -> tuple[list[float], list[int]] | None:
    """(scores, lengths) kept under the key for n_texts texts, or None."""
    path = user_cache(f"scores/{cache_key}.npz") if cache_key else None
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as kept:
            scores, lengths = kept["scores"].tolist(), kept["lengths"].tolist()
    except Exception:  # a damaged or torn file (zip, npy or OS errors alike): scored again
        return None
    if not len(scores) == len(lengths) == n_texts:
        return None
    global recalls
    recalls += 1
    return scores, lengths


def keep(cache_key: str | None, scores: list[float], lengths: list[int]) -> None:
    path = user_cache(f"scores/{cache_key}.npz") if cache_key else None
    if path is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, scores=np.array(scores, dtype=np.float64), lengths=np.array(lengths, dtype=np.int64))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two evaluations keeping one key never share a file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
