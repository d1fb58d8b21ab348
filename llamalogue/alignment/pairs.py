"""Preference pairs for DPO and the reward model: which training pairs, which held-out pairs, and how they are kept
apart.

A pair is a caregiver prompt, an appropriate child reply ("chosen") and a random child reply ("rejected"), each
with its speaker tag. Natural pairs come from the corpus stage (DIR/pairs/) or the paper's files; synthetic pairs
replace the chosen reply with an LLM's (the paper's file, or our teacher's). A training pair that shares a
(prompt, reply) exchange with a held-out pair is dropped: the paper's own train and evaluation files share some.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from llamalogue.corpus.dialogue_files import Pair, read_pairs
from llamalogue.teacher.llm import Teacher, default_teacher
from llamalogue.teacher.reply_cache import ReplyCache, teacher_replies
from llamalogue.teacher.reply_text import clean_reply, without_speaker_tag


def exchanges(pair: Pair) -> set[tuple[str, str]]:
    """The (prompt, reply) exchanges a pair shows the model, whitespace-normalised."""
    norm = lambda text: " ".join(text.split())  # noqa: E731
    return {(norm(pair.prompt), norm(pair.chosen)), (norm(pair.prompt), norm(pair.rejected))}


def drop_overlap(train: list[Pair], held_out: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(training pairs sharing no exchange with any held-out pair, the dropped ones)."""
    seen = set().union(*map(exchanges, held_out)) if held_out else set()
    kept, dropped = [], []
    for pair in train:
        (dropped if exchanges(pair) & seen else kept).append(pair)
    return kept, dropped


def subsample(items: list, limit: int, seed: int) -> list:
    """A seeded random subset of `limit` items in their original order (all of them when limit is 0 or larger)."""
    if not limit or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


PAPER_TRAIN_FILES = ("huggingface_dpo_format.json", "synthetic_dpo_format.json")
PAPER_EVAL_FILE = "huggingface_dpo_format_eval.json"
CORPUS_TRAIN_FILE = "dpo_words_nooverlap.jsonl"
CORPUS_EVAL_FILES = ("eval_words_nooverlap.jsonl", "eval_tokens_nooverlap.jsonl")


def default_pair_files(pairs_file, data_dir) -> tuple[Path, list[Path]]:
    """The training file and its held-out files when not given: the paper's eval file beside the paper's training
    files, the corpus stage's eval splits beside its pairs (DIR/pairs/), by default DIR/pairs/dpo_words_nooverlap.jsonl."""
    train = Path(pairs_file) if pairs_file else Path(data_dir) / "pairs" / CORPUS_TRAIN_FILE
    if not train.is_file():
        hint = "" if pairs_file else " (build it with `python -m llamalogue.corpus`, or pass --pairs-file)"
        raise FileNotFoundError(f"{train}: no such pairs file{hint}")
    names = [PAPER_EVAL_FILE] if train.name in PAPER_TRAIN_FILES else CORPUS_EVAL_FILES
    return train, [train.parent / name for name in names if (train.parent / name).is_file()]


def with_teacher_replies(pairs: list[Pair], teacher: Teacher, cache_path, seed: int) -> tuple[list[Pair], int]:
    """Synthetic pairs: chosen = the teacher's reply to the same prompt, rejected = the pair's random child reply.
    Replies come in batches and are cached (JSONL) so a rerun does not generate them again; a prompt that occurs
    several times gets one reply. Returns (pairs, number dropped because the teacher's reply came out empty)."""
    records = teacher_replies(teacher, [p.prompt for p in pairs], n=1, seed=seed, cache=ReplyCache(cache_path),
                              progress=True)
    synthetic = [Pair(p.prompt, f"*CHI: {r['replies'][0]}", p.rejected) for p, r in zip(pairs, records)
                 if r["replies"][0].strip()]
    return synthetic, len(pairs) - len(synthetic)


def transcribed_replies(pairs: list[Pair]) -> tuple[list[Pair], int, int]:
    """Synthetic pairs with the chosen reply rewritten as CHILDES transcribes (the cleaning our own teacher's replies
    get): "i can do it!" -> "I can do it !". The paper's synthetic file holds raw LLM text, while the rejected replies
    it competes with are transcripts; 85% of its chosen replies differ in orthography alone, and that is all DPO
    needs to tell the two apart (18,000 raw pairs x 1 epoch on `small`: preference accuracy 1.00, margin 11.7, real
    child replies pushed down: dialogue-MP 59.9 -> 56.2, BLiMP 57.5 -> 54.2; rewritten: 58.2 and 58.1). Returns
    (pairs, rewritten, dropped because nothing was left)."""
    kept, rewritten = [], 0
    for pair in pairs:
        raw = without_speaker_tag(pair.chosen)
        reply = clean_reply(raw)
        if reply:
            kept.append(Pair(pair.prompt, f"*CHI: {reply}", pair.rejected))
            rewritten += reply != raw
    return kept, rewritten, len(pairs) - len(kept)


DEFAULT_INIT = "runs/lm-small"  # the pretrained run an alignment stage starts from
DEFAULT_DATA = "runs/data"  # the corpus folder whose pairs/ hold the default pairs


@dataclass
class AlignmentInputs:
    """What an alignment run starts from: the pretrained model and where its preference pairs come from, as a
    command line names them. None: not given -- a new run takes the default, a resumed run its recorded input.
    All but teacher_cache are recorded in the run's config.json ("inputs"), so that --resume reads the same pairs
    and refuses other ones."""

    init: str | None = None  # the pretrained run (default: runs/lm-small)
    pairs: str | None = None  # natural (default): the real reply vs a random one; synthetic: the teacher's reply
    pairs_file: str | None = None  # default: DATA/pairs/dpo_words_nooverlap.jsonl
    eval_pairs_file: list[str] | None = None  # held-out pairs (default: the eval files beside pairs_file)
    data: str | None = None  # the corpus folder (default: runs/data)
    teacher: str | None = None  # synthetic pairs without pairs_file: the teacher's HF folder, .gguf or hub id
    teacher_cache: str | None = None  # its replies, cached (a cache, not an input: not recorded)

    def recorded(self) -> dict:
        """The inputs a run records, paths absolute so that they mean the same files from any folder."""
        def absolute(path):
            return None if path is None else str(Path(path).resolve())

        return {"init": absolute(self.init), "pairs": self.pairs, "pairs_file": absolute(self.pairs_file),
                "eval_pairs_file": None if self.eval_pairs_file is None else list(map(absolute, self.eval_pairs_file)),
                "data": absolute(self.data), "teacher": self.teacher}

    def completed(self, recorded: dict | None = None) -> "AlignmentInputs":
        """The inputs a run reads: a resumed run's recorded ones, else the ones given, else the defaults (a record
        without "inputs" reads the ones given)."""
        given = {name: value for name, value in self.recorded().items() if value is not None}
        defaults = {"init": str(Path(DEFAULT_INIT).resolve()), "pairs": "natural",
                    "data": str(Path(DEFAULT_DATA).resolve())}
        return AlignmentInputs(**{**defaults, **given, **(recorded or {}), "teacher_cache": self.teacher_cache})


def load_pairs(inputs: AlignmentInputs, limit: int = 0, eval_limit: int = 0, seed: int = 0,
               raw_synthetic: bool = False) -> tuple[list[Pair], dict[str, list[Pair]], list[str]]:
    """(training pairs, held-out sets by name, lines saying where they came from and what was dropped).

    inputs: completed (AlignmentInputs.completed). natural: the pairs as they are. synthetic with a pairs_file: a
    ready synthetic file (the paper's synthetic_dpo_format.json), its chosen replies rewritten as transcripts unless
    raw_synthetic. synthetic without: the corpus stage's natural pairs with chosen replaced by the teacher's reply.
    limit / eval_limit: seeded subsets (0: all); the limit applies before the teacher runs, so it only answers the
    prompts that are used.
    """
    kind, pairs_file = inputs.pairs, inputs.pairs_file
    if kind not in ("natural", "synthetic"):
        raise ValueError(f"--pairs {kind!r}: choose natural or synthetic")
    train_file, default_eval = default_pair_files(pairs_file, inputs.data)
    eval_files = [Path(f) for f in inputs.eval_pairs_file] if inputs.eval_pairs_file else default_eval
    for path in eval_files:
        if not path.is_file():
            raise FileNotFoundError(f"--eval-pairs-file {path}: no such file")
    held_out = {path.stem: read_pairs(path) for path in eval_files}
    train = read_pairs(train_file)  # every pair tagged (*MOT: / *CHI:), or skipped and counted there
    notes = [f"training pairs: {len(train):,} in {train_file}"]
    if kind == "synthetic" and pairs_file and not raw_synthetic:
        train, rewritten, empty = transcribed_replies(train)
        notes.append(f"chosen replies written as CHILDES transcripts: {rewritten:,} rewritten, {empty:,} pairs "
                     f"dropped (nothing left); --raw-synthetic keeps them as written")
    train, dropped = drop_overlap(train, [p for pairs in held_out.values() for p in pairs])
    if dropped:
        notes.append(f"dropped {len(dropped):,} training pairs sharing a (prompt, reply) exchange with held-out pairs")
    train = subsample(train, limit, seed)
    held_out = {name: subsample(pairs, eval_limit, seed) for name, pairs in held_out.items()}
    if kind == "synthetic" and not pairs_file:
        teacher = Teacher(inputs.teacher) if inputs.teacher else default_teacher()
        train, empty = with_teacher_replies(train, teacher, inputs.teacher_cache, seed)
        notes.append(f"chosen replies by the teacher {teacher.id}, cached in {inputs.teacher_cache}"
                     + (f"; {empty} pairs dropped (empty teacher reply)" if empty else ""))
    sizes = ", ".join(f"{name} {len(p):,}" for name, p in held_out.items())
    notes.append(f"held-out pairs: {sizes or 'none (no dialogue-MP check; pass --eval-pairs-file)'}")
    return train, held_out, notes
