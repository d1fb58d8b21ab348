"""What a suite is: its items (three kinds), the Suite that holds them with its skipped lines, and the helpers every
reader shares (finding the files, reading JSONL line by line with the bad-line rule, equal paradigm weights).

- `ChoiceItem`: candidate texts of which the first is the right one (minimal pairs: good vs bad; entity tracking: the
  true continuation vs four distractors; COMPS: the property after the right concept vs after a wrong one). Scored
  by log-probability; accuracy.
- `WugItem`: candidate inflections of a nonce word (adjective -ity vs -ness; past tense) and the share of humans
  preferring the first; Spearman correlation of the model's preference with the humans'.
- `ReadingItem`: a word in its sentence context with human reading times; surprisal as a regression predictor.
- `AoAWord`: a CDI word with the children's age of acquisition (the AoA task scores it in held-out utterances).
"""

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent.parent.parent / "data" / "eval"


@dataclass
class ChoiceItem:
    id: str
    group: str  # the BabyLM pipeline's UID: BLiMP paradigm, entity-tracking "<split>_<n>_ops", COMPS subset, ...
    candidates: list[str]  # full texts; candidates[0] is the right one
    contexts: list[str] = field(default_factory=list)  # per candidate: only the text after it is scored (empty: all)
    meta: dict = field(default_factory=dict)  # extra breakdown keys (BLiMP field, linguistics_term)


@dataclass
class WugItem:
    id: str
    candidates: list[str]  # e.g. [-ity sentence, -ness sentence]
    human_ratio: float  # share of humans preferring the first


@dataclass
class ReadingItem:
    id: str
    context: str  # the sentence up to the word
    word: str
    prev_context: str | None  # the same for the previous word (spill-over); None for a sentence's second word
    prev_word: str | None
    measures: dict  # reading times and covariates from the CSV (None where empty)
    row: int  # 0-based data row of the CSV (the pipeline's prediction id)


@dataclass
class AoAWord:
    id: str
    word: str  # the form looked up in text (the CDI list's word_clean), e.g. "ball", "ice cream"
    category: str  # lexical category: nouns, predicates, function_words
    child_aoa: float  # months at which half of the children produce it (Wordbank)


@dataclass
class Suite:
    name: str
    kind: str  # "choice" | "wug" | "reading" | "aoa" | "aoa"
    items: list
    source: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few skipped lines, "file:line: reason"
    # choice suites: the weight of each group's accuracy in the task's score (BabyLM averages over paradigms)
    group_weights: dict[str, float] = field(default_factory=dict)
    word_end: bool = False  # the paper's protocol: a text's score also counts its last word ending there

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < 5:
            self.problems.append(f"{where}: {reason}")


class SuiteError(ValueError):
    """A suite's path is missing or holds nothing usable (one line: what was expected where)."""


def files(name: str, path, patterns: tuple[str, ...], expected: str) -> list[Path]:
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"suite {name}: {path} does not exist (expected {expected})")
    files = [path] if path.is_file() else sorted(p for pattern in patterns for p in path.glob(pattern))
    if not files:
        raise SuiteError(f"suite {name}: no {' or '.join(patterns)} files in {path} (expected {expected})")
    return files


def jsonl_records(suite: Suite, file: Path, texts: tuple[str, ...], others: tuple[str, ...] = ()):
    """(line number, record) for every line of a .jsonl or .jsonl.gz file whose `texts` fields are non-empty strings
    and whose `others` are there (not null); any other line is skipped with its file:line."""
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                suite.skip(f"{file.name}:{number}", f"not JSON ({e.msg})")
                continue
            if not isinstance(record, dict):
                suite.skip(f"{file.name}:{number}", "not a JSON object")
                continue
            missing = [k for k in others if record.get(k) is None]
            missing += [k for k in texts if not isinstance(record.get(k), str) or not record[k].strip()]
            if missing:
                suite.skip(f"{file.name}:{number}", f"missing, null or not text: {', '.join(missing)}")
                continue
            yield number, record


def file_stem(file: Path) -> str:
    return file.name.split(".")[0]


def equal_weights(suite: Suite) -> Suite:
    groups = sorted({item.group for item in suite.items})
    suite.group_weights = {g: 1 / len(groups) for g in groups}
    return suite


