"""Pretraining data: the corpus stage's triplets as token streams (DIR/train.bin, DIR/val.bin), cut into windows.

Each triplet becomes one sequence [BOS] tokens [EOS]; the sequences are concatenated into one long token stream
(uint16, built on first use) and cut into windows of max_seq_len + 1 tokens that overlap by one token, so that every
token after the first is predicted exactly once per epoch. A window may span the end of one triplet and the start of
the next: EOS/BOS mark the border, as in GPT-style packing. The window order of an epoch is
llamalogue.schedules.epoch_order: a function of (seed, epoch) alone.

A run reads its corpus folder once (`read_corpus`: a new run's --data, a resumed run's own), as a `Corpus`: the
tokenizer, the two token streams and the words of the training text (llamalogue.word_budget).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llamalogue.corpus.build import DEFAULT_CHILDES, build_corpus
from llamalogue.corpus.dialogue_files import read_documents
from llamalogue.run_dir import TOKENIZER, RunError, atomic_write, recorded_data
from llamalogue.tokenizer import Tokenizer
from llamalogue.word_budget import text_words, words_at


def tokenized_split(data_dir: Path, split: str, tokenizer: Tokenizer) -> np.ndarray:
    """DIR/<split>.bin: every triplet of DIR/<split>.txt as [BOS] ... [EOS], concatenated, as uint16.

    Built on first use and rebuilt when the text or the tokenizer is newer; a .bin without its .txt (data carried
    to another machine pre-tokenized) is used as it is.
    """
    text, cache = data_dir / f"{split}.txt", data_dir / f"{split}.bin"
    newest_input = max(text.stat().st_mtime, Path(tokenizer.model_path).stat().st_mtime) if text.exists() else 0
    if cache.exists() and cache.stat().st_mtime >= newest_input:
        return np.fromfile(cache, dtype=np.uint16)
    if not text.exists():
        raise RunError(f"{text}: missing (build the data with `python -m llamalogue.corpus --out {data_dir}`)")
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise RunError(f"{tokenizer.model_path}: vocabulary of {tokenizer.vocab_size} does not fit uint16")
    documents = read_documents(text)
    if not documents:
        raise RunError(f"{text}: no triplets (blank-line separated blocks) in it")
    ids = [[tokenizer.bos_id, *doc, tokenizer.eos_id] for doc in tokenizer.encode_batch(documents)]
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=np.uint16)
    atomic_write(cache, tokens.tofile)
    return tokens


class Windows:
    """A token stream cut into windows of seq_len + 1 tokens (inputs and the targets shifted by one)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, device):
        self.tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.seq_len = seq_len
        self.count = (len(tokens) - 1) // seq_len
        self.offsets = torch.arange(seq_len + 1, device=device)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tokens[indices.to(self.tokens.device)[:, None] * self.seq_len + self.offsets]
        return rows[:, :-1], rows[:, 1:]


DEFAULT_DATA = Path("runs/data")  # train_lm.py's corpus folder when no --data is given


def corpus_source(data_dir: Path | None, childes: list[Path] | None) -> tuple[Path, list[Path] | None]:
    """The corpus folder and the transcripts to build it from when it holds no corpus yet. Only the default folder is
    built from the embedded sample: a --data DIR without a corpus is a mistake (a typo), never quietly the sample."""
    if data_dir is None:
        return DEFAULT_DATA, childes or [DEFAULT_CHILDES]
    return Path(data_dir), childes


def prepare_data(data_dir: Path, childes: list[Path] | None, rank: int, world: int):
    """The tokenizer and the train/val token streams of a corpus folder. When DIR holds no corpus yet it is built
    from the transcripts `childes` (rank 0); without them that is a RunError naming DIR."""
    if data_dir.exists() and not data_dir.is_dir():
        raise RunError(f"--data {data_dir}: is a file, not a corpus folder")
    has_split = all((data_dir / f"{s}.txt").exists() or (data_dir / f"{s}.bin").exists() for s in ("train", "val"))
    if not ((data_dir / TOKENIZER).exists() and has_split):
        if childes is None:
            raise RunError(f"--data {data_dir}: holds no corpus ({TOKENIZER} and the train/val splits); build it "
                           f"with `python -m llamalogue.corpus --childes PATH --out {data_dir}` or pass --childes")
        if rank == 0:
            print(f"{data_dir}: no corpus yet; building it from {' '.join(map(str, childes))}")
            build_corpus(childes, data_dir)
    if world > 1:
        dist.barrier()
    tokenizer = Tokenizer(data_dir / TOKENIZER)
    if rank == 0:
        splits = {s: tokenized_split(data_dir, s, tokenizer) for s in ("train", "val")}
    if world > 1:
        dist.barrier()
    if rank != 0:
        splits = {s: tokenized_split(data_dir, s, tokenizer) for s in ("train", "val")}
    return tokenizer, splits["train"], splits["val"]


@dataclass
class PretrainingInputs:
    """What a pretraining run reads: train_lm.py's --data and --childes."""

    data: Path | None = None  # the corpus folder; None: the run's own when resuming, else DEFAULT_DATA
    childes: list[Path] | None = None  # transcripts to build `data` from when it holds no corpus yet (new runs)


@dataclass
class Corpus:
    """A run's text: its corpus folder, tokenizer and token streams, and the words of its training text (None: the
    text is not on this machine)."""

    folder: Path
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    train_words: int | None

    def record(self) -> dict:
        return {"train_tokens": len(self.train_tokens), "val_tokens": len(self.val_tokens),
                "train_words": self.train_words}

    def words_at(self, tokens: int) -> int | None:
        """The words seen after `tokens` training tokens (llamalogue.word_budget.words_at; None: unknown)."""
        return None if self.train_words is None else words_at(tokens, len(self.train_tokens), self.train_words)


def read_corpus(inputs: PretrainingInputs, saved: dict | None, rank: int, world: int) -> Corpus:
    """The corpus a run trains on. A new run's --data, built from --childes (or, the default folder, from the
    embedded sample) when it holds none yet; a resumed run's own, the recorded one unless --data names it, never
    built."""
    if saved is None:
        folder, childes = corpus_source(inputs.data, inputs.childes)
    else:
        folder, childes = Path(inputs.data or recorded_data(saved) or DEFAULT_DATA), None
    tokenizer, train_tokens, val_tokens = prepare_data(folder, childes, rank, world)
    return Corpus(folder, tokenizer, train_tokens, val_tokens, text_words(folder / "train.txt"))
