"""The files of a corpus folder that the later stages read: preference pairs (ours and the paper's formats), caregiver
prompts, and the triplets of a split.

Bad lines follow one rule everywhere: a line (record) that cannot be used is skipped and counted, and the reader
says so once on stderr, naming file:line and why for the first few; a file with no usable line at all is a
CorpusError, since a training or an evaluation on nothing would be meaningless.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llamalogue.corpus.transcripts import CHILD_ROLE, ROLE_TAGS, CorpusError

SHOWN_BAD_LINES = 3  # file:line reasons printed; the count says how many in all
SPEAKER_TAG = re.compile(r"^\*\w+:")  # `*MOT:`, `*CHI:`: how every turn of a pair starts


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: str    # "*MOT: what is that ?"
    chosen: str    # "*CHI: it looks like a gun ."
    rejected: str  # "*CHI: you do it like that ."


class BadLines:
    """The skipped lines of one file: add(line, reason), then report() once."""

    def __init__(self, path: Path):
        self.path, self.reasons = path, []

    def add(self, line: int, reason: str) -> None:
        self.reasons.append(f"{self.path}:{line}: {reason}")

    def report(self, kept: int, what: str, required: bool = True) -> None:
        """Warn once about the skipped lines; with none kept, a CorpusError unless not required (a cache)."""
        if not kept and required:
            detail = f" ({'; '.join(self.reasons[:SHOWN_BAD_LINES])})" if self.reasons else ""
            raise CorpusError(f"{self.path}: no usable {what}{detail}")
        if self.reasons:
            more = f"; {len(self.reasons) - SHOWN_BAD_LINES} more" if len(self.reasons) > SHOWN_BAD_LINES else ""
            print(f"warning: {self.path}: {len(self.reasons)} bad line(s) skipped, {kept:,} {what} kept "
                  f"({'; '.join(self.reasons[:SHOWN_BAD_LINES])}{more})", file=sys.stderr)


def _pair(prompt, chosen, rejected) -> Pair:
    """A pair with speaker tags (the paper's synthetic file has none: `*MOT: `/`*CHI: ` added); ValueError names
    what is wrong with a record."""
    for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} is {'missing' if text is None else repr(text)}")
    prompt, chosen, rejected = prompt.strip(), chosen.strip(), rejected.strip()
    if not prompt.startswith("*"):
        prompt = f"{ROLE_TAGS['Mother']} {prompt}"
        chosen, rejected = (f"{ROLE_TAGS[CHILD_ROLE]} {chosen}", f"{ROLE_TAGS[CHILD_ROLE]} {rejected}")
    for name, text in (("prompt", prompt), ("chosen reply", chosen), ("rejected reply", rejected)):
        if not SPEAKER_TAG.match(text):
            raise ValueError(f"{name} {text!r} does not start with a speaker tag such as '*CHI:'")
    return Pair(prompt, chosen, rejected)


def _records(path: Path):
    """(line number, (prompt, chosen, rejected) or the ValueError why not) for every record of the file."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                        yield number, (record.get("prompt"), record.get("chosen"), record.get("rejected"))
                    except (ValueError, AttributeError) as error:
                        yield number, ValueError(f"not a JSON object ({error})")
    elif path.suffix == ".json":  # the paper's huggingface_dpo_format*.json: one JSON list
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise CorpusError(f"{path}: not JSON ({error})") from None
        if not isinstance(records, list):
            raise CorpusError(f"{path}: not a list of pairs")
        for number, record in enumerate(records, start=1):  # "line" = the record's position in the list
            yield number, ((record.get("prompt"), record.get("chosen"), record.get("rejected"))
                           if isinstance(record, dict) else ValueError("not a JSON object"))
    elif path.suffix == ".csv":  # the paper's len_pairs / tok_pairs: pospair, negpair = `*MOT: p<TAB>*CHI: r`
        with path.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                positive = (row.get("pospair") or "").split("\t", 1)
                negative = (row.get("negpair") or "").split("\t", 1)
                if len(positive) != 2 or len(negative) != 2:
                    yield number, ValueError("pospair/negpair are not `prompt<TAB>reply`")
                elif positive[0].strip() != negative[0].strip():
                    yield number, ValueError("pospair and negpair have different prompts")
                else:
                    yield number, (positive[0], positive[1], negative[1])
    else:
        raise CorpusError(f"{path}: unknown pairs format (expected .jsonl, .json or .csv)")


def pair_records(path) -> Iterator[tuple[int, int, Pair | ValueError]]:
    """(index, place, the pair or the ValueError why the record is none) for every record of a pairs file, in order.
    index counts every record, readable or not, so that skipping one never shifts the rows after it (the paper's
    evaluation rows are chosen by index); place is the record's line in the file (its position in a .json list).
    The formats: those of `read_pairs`; a file that is none of them is a CorpusError."""
    path = Path(path)
    try:
        for index, (place, record) in enumerate(_records(path)):
            try:
                if isinstance(record, Exception):
                    raise record
                yield index, place, _pair(*record)
            except ValueError as error:
                yield index, place, error
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None


def read_pairs(path) -> list[Pair]:
    """Preference pairs with speaker tags, from our JSONL (`pairs/*.jsonl`) or the paper's files:
    `huggingface_dpo_format*.json` (tags included), `synthetic_dpo_format.json` (no tags: `*MOT: `/`*CHI: ` added),
    `len_pairs_no_overlap_1.csv` / `tok_pairs_no_overlap_1.csv` (columns pospair, negpair). Bad records are skipped
    and counted (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such pairs file")
    pairs, bad = [], BadLines(path)
    for _, place, pair in pair_records(path):
        if isinstance(pair, ValueError):
            bad.add(place, str(pair))
        else:
            pairs.append(pair)
    bad.report(len(pairs), "pairs")
    return pairs


def read_prompts(path) -> list[str]:
    """Caregiver prompts, one utterance per line without speaker tag (DIR/prompts.txt)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such prompts file")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None


def read_documents(path: Path) -> list[str]:
    """The triplets ("documents") of a split file: blocks of lines separated by a blank line."""
    return [block for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]

