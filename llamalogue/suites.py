"""The evaluation suites: which files each task reads, and how their lines become items to score.

Every suite takes a path (a file or a folder) and defaults to the small samples embedded in `data/eval/` (see its
README for sources and licences). Three kinds of item:

- `ChoiceItem`: candidate texts of which the first is the right one (minimal pairs: good vs bad; entity tracking: the
  true continuation vs four distractors). Scored by log-probability; accuracy.
- `WugItem`: two candidate derivations of a nonce adjective (-ity vs -ness) and the share of humans preferring the
  first; Spearman correlation of the model's preference with the humans'.
- `ReadingItem`: a word in its sentence context with human reading times; surprisal as a regression predictor.

A line that cannot be read (not JSON, a field missing) is skipped and counted, never fatal; a path that does not exist
is one clear error saying what was expected where.
"""

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent.parent / "data" / "eval"

# The paper's dialogue minimal pairs: the evaluation rows of its two CSV files (the first 18,000 rows trained DPO).
# See the paper data's README (shared data folder, paper/README.md): word-matched = rows 18,000-25,547 (== huggingface_dpo_format_eval.json),
# token-matched = rows 18,000-25,519 of tok_pairs_no_overlap_1.csv.
PAPER_EVAL_ROWS = {"len_pairs_no_overlap_1.csv": (18000, 25548), "tok_pairs_no_overlap_1.csv": (18000, 25520)}


@dataclass
class ChoiceItem:
    id: str
    group: str  # breakdown key: BLiMP UID, Zorro paradigm, entity-tracking "<split>_<n>_ops", ...
    candidates: list[str]  # full texts; candidates[0] is the right one
    context: str = ""  # if set, only each candidate's continuation after this shared context is scored
    meta: dict = field(default_factory=dict)  # extra breakdown keys (BLiMP field, linguistics_term)


@dataclass
class WugItem:
    id: str
    candidates: list[str]  # [-ity sentence, -ness sentence]
    human_ratio: float  # share of humans preferring the first


@dataclass
class ReadingItem:
    id: str
    context: str  # the sentence up to the word
    word: str
    prev_context: str | None  # the same for the previous word (spill-over); None for a sentence's second word
    prev_word: str | None
    measures: dict  # reading times and covariates from the CSV (None where empty)


@dataclass
class Suite:
    name: str
    kind: str  # "choice" | "wug" | "reading"
    items: list
    source: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few skipped lines, "file:line: reason"
    # choice suites: the weight of each group's accuracy in the task's score (BabyLM averages over paradigms)
    group_weights: dict[str, float] = field(default_factory=dict)

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < 5:
            self.problems.append(f"{where}: {reason}")


class SuiteError(ValueError):
    """A suite's path is missing or holds nothing usable (one line: what was expected where)."""


def _files(name: str, path, patterns: tuple[str, ...], expected: str) -> list[Path]:
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"suite {name}: {path} does not exist (expected {expected})")
    files = [path] if path.is_file() else sorted(p for pattern in patterns for p in path.glob(pattern))
    if not files:
        raise SuiteError(f"suite {name}: no {' or '.join(patterns)} files in {path} (expected {expected})")
    return files


def _jsonl(suite: Suite, file: Path, required: tuple[str, ...]):
    """(line number, record) for every line of a .jsonl or .jsonl.gz file with the required fields."""
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
            missing = [k for k in required if not isinstance(record, dict) or record.get(k) in (None, "")]
            if missing:
                suite.skip(f"{file.name}:{number}", f"missing {', '.join(missing)}")
                continue
            yield number, record


def _stem(file: Path) -> str:
    return file.name.split(".")[0]


def _equal_weights(suite: Suite) -> Suite:
    groups = sorted({item.group for item in suite.items})
    suite.group_weights = {g: 1 / len(groups) for g in groups}
    return suite


def load_blimp(path=EMBEDDED / "blimp", name: str = "blimp") -> Suite:
    """BabyLM 2025 BLiMP (filtered) or its supplement: .jsonl with sentence_good / sentence_bad, one file per paradigm.

    As the BabyLM pipeline: group = the UID field (the file name for the supplement, which has none), and the score
    is the mean of the paradigms' accuracies.
    """
    expected = "BabyLM 2025 .jsonl files with sentence_good/sentence_bad, e.g. <shared>/data/eval/babylm2025/blimp_filtered"
    suite = Suite(name, "choice", [], str(path))
    for file in _files(name, path, ("*.jsonl",), expected):
        for number, r in _jsonl(suite, file, ("sentence_good", "sentence_bad")):
            meta = {}
            if "field" in r:  # BLiMP proper; BabyLM writes one field two ways
                meta = {"field": r["field"].replace("syntax_semantics", "syntax/semantics"),
                        "linguistics_term": r.get("linguistics_term", "")}
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", r.get("UID") or file.stem,
                                          [r["sentence_good"], r["sentence_bad"]], meta=meta))
    return _equal_weights(suite)


def load_supplement(path=EMBEDDED / "supplement") -> Suite:
    return load_blimp(path, name="supplement")


def load_zorro(path=EMBEDDED / "zorro") -> Suite:
    """Zorro: one paradigm per .txt file, lines alternate bad, good (line 1 of each pair ungrammatical).

    Checked by inspection, e.g. agreement_determiner_noun-between_neighbors.txt: "this colors must be white ."
    (line 1) then "this color must be white ." (line 2).
    """
    expected = "Zorro .txt files (lines alternating bad, good), e.g. <shared>/data/eval/zorro"
    suite = Suite("zorro", "choice", [], str(path))
    for file in _files("zorro", path, ("*.txt",), expected):
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) % 2:
            suite.skip(f"{file.name}:{len(lines)}", "odd number of lines: last line has no partner")
        for i in range(0, len(lines) - 1, 2):
            bad, good = lines[i], lines[i + 1]
            suite.items.append(ChoiceItem(f"{file.stem}:{i + 1}", file.stem, [good, bad]))
    return _equal_weights(suite)


def load_entity_tracking(path=EMBEDDED / "entity_tracking") -> Suite:
    """Entity tracking (boxes): input_prefix + options, options[0] the true content; only the option is scored.

    As the BabyLM pipeline: accuracy per (file, number of operations), averaged over operations within a file, then
    over files.
    """
    expected = "entity-tracking .jsonl files with input_prefix/options, e.g. <shared>/data/eval/babylm2025/entity_tracking"
    suite = Suite("entity_tracking", "choice", [], str(path))
    for file in _files("entity_tracking", path, ("*.jsonl",), expected):
        for number, r in _jsonl(suite, file, ("input_prefix", "options", "numops")):
            if not isinstance(r["options"], list) or len(r["options"]) < 2:
                suite.skip(f"{file.name}:{number}", "options is not a list of two or more")
                continue
            prefix = r["input_prefix"]
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", f"{file.stem}_{r['numops']}_ops",
                                          [prefix + option for option in r["options"]], context=prefix))
    splits: dict[str, set] = {}
    for item in suite.items:
        splits.setdefault(item.group.rsplit("_", 2)[0], set()).add(item.group)
    suite.group_weights = {g: 1 / len(splits) / len(groups) for groups in splits.values() for g in groups}
    return suite


def load_ewok(path) -> Suite:
    """EWoK (never embedded: its licence forbids republishing). As the BabyLM pipeline: Target1 vs Target2 after
    Context1, only the target scored; mean of the domains' accuracies."""
    expected = "EWoK .jsonl or .jsonl.gz files with Context1/Target1/Target2, e.g. <shared>/data/eval/babylm2025/ewok_filtered"
    suite = Suite("ewok", "choice", [], str(path))
    for file in _files("ewok", path, ("*.jsonl", "*.jsonl.gz"), expected):
        for number, r in _jsonl(suite, file, ("Context1", "Target1", "Target2")):
            context = r["Context1"]
            suite.items.append(ChoiceItem(f"{_stem(file)}:{number}", r.get("Domain") or _stem(file),
                                          [f"{context} {r['Target1']}", f"{context} {r['Target2']}"], context=context))
    return _equal_weights(suite)


def load_wug_adj(path=EMBEDDED / "wug_adj") -> Suite:
    """Wug adjective nominalisation: "sentences" = two tab-separated candidates, "ratio" = human preference for the
    first."""
    expected = "wug_adj_nominalization.jsonl (sentences, ratio), e.g. <shared>/data/eval/babylm2025/wug_adj_nominalization"
    suite = Suite("wug_adj", "wug", [], str(path))
    for file in _files("wug_adj", path, ("*.jsonl",), expected):
        for number, r in _jsonl(suite, file, ("sentences", "ratio")):
            candidates = str(r["sentences"]).split("\t")
            if len(candidates) != 2:
                suite.skip(f"{file.name}:{number}", f"expected 2 tab-separated sentences, got {len(candidates)}")
                continue
            try:
                ratio = float(r["ratio"])
            except (TypeError, ValueError):
                suite.skip(f"{file.name}:{number}", f"ratio {r['ratio']!r} is not a number")
                continue
            suite.items.append(WugItem(f"{file.stem}:{number}", candidates, ratio))
    return suite


READING_MEASURES = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound", "self_paced_reading_time",
                    "Subtlex_log10", "length", "context_length", "prev_length")


def load_reading(path=EMBEDDED / "reading" / "reading_data.csv") -> Suite:
    """Per-word reading data (BabyLM 2025 reading_data.csv): the context `item`, the `word`, the previous word's
    `prev_item`/`prev_word`, eye-tracking and self-paced reading times and the covariates of the regressions.

    The file lost the context "None" (the word) to an empty cell once; an empty context is rebuilt from the first
    context_length words of `sentence`.
    """
    expected = "reading_data.csv (item, word, prev_item, prev_word, RT columns), e.g. <shared>/data/eval/babylm2025/reading"
    suite = Suite("reading", "reading", [], str(path))
    file = _files("reading", path, ("*.csv",), expected)[0]
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("item", "word", "sentence", "prev_item", "prev_word", *READING_MEASURES)
                   if c not in (reader.fieldnames or [])]
        if missing:
            raise SuiteError(f"suite reading: {file} lacks column(s) {', '.join(missing)} (expected {expected})")
        for number, row in enumerate(reader, start=2):
            try:
                measures = {k: float(row[k]) if row[k] != "" else None for k in READING_MEASURES}
            except ValueError as e:
                suite.skip(f"{file.name}:{number}", str(e))
                continue
            context = row["item"] or " ".join(row["sentence"].split()[: int(measures["context_length"] or 0)])
            if not context or not row["word"]:
                suite.skip(f"{file.name}:{number}", "no context or word")
                continue
            has_prev = bool(row["prev_item"]) and bool(row["prev_word"])
            suite.items.append(ReadingItem(f"{file.name}:{number}", context, row["word"],
                                           row["prev_item"] if has_prev else None,
                                           row["prev_word"] if has_prev else None, measures))
    return suite


def load_dialogue(path, name: str) -> Suite:
    """Dialogue minimal pairs: "prompt reply" with the appropriate reply vs a random one (words or tokens matched).

    Reads what `llamalogue.corpus.read_pairs` reads: our corpus stage's JSONL, the paper's JSON, and the paper's
    CSVs, of which only the evaluation rows are kept (PAPER_EVAL_ROWS). A folder is our corpus output: its
    pairs/eval_<words|tokens>_nooverlap.jsonl.
    """
    from llamalogue.dialogue_files import CorpusError, read_pairs  # the pair formats' one reader

    path = Path(path)
    unit = "tokens" if "tokens" in name else "words"
    if path.is_dir():
        path = path / "pairs" / f"eval_{unit}_nooverlap.jsonl"
    if not path.is_file():
        raise SuiteError(f"suite {name}: {path} does not exist (expected the paper's huggingface_dpo_format_eval.json / "
                         f"{'tok' if unit == 'tokens' else 'len'}_pairs_no_overlap_1.csv, or a corpus folder with "
                         f"pairs/eval_{unit}_nooverlap.jsonl)")
    try:
        pairs = read_pairs(path)
    except CorpusError as error:
        raise SuiteError(f"suite {name}: {error}") from None
    first, end = PAPER_EVAL_ROWS.get(path.name, (0, len(pairs)))
    suite = Suite(name, "choice", [], str(path), group_weights={name: 1.0})
    for i, pair in enumerate(pairs[first:end], start=first):
        suite.items.append(ChoiceItem(f"{path.name}:{i}", name, [f"{pair.prompt} {pair.chosen}",
                                                                 f"{pair.prompt} {pair.rejected}"]))
    return suite


def load_lexical_decision(path) -> Suite:
    """Lexical decision: a real word (`lexeme`) should be more probable than a matched nonword (`wug`).

    The paper's set (bbunzeck/lexical-decision) lives on the Hugging Face hub, not here: pass a .csv / .tsv / .jsonl
    with those two columns.
    """
    expected = "a .csv, .tsv or .jsonl file with columns lexeme and wug"
    file = _files("lexical_decision", path, ("*.csv", "*.tsv", "*.jsonl"), expected)[0]
    suite = Suite("lexical_decision", "choice", [], str(file), group_weights={"lexical_decision": 1.0})
    if file.suffix == ".jsonl":
        rows = _jsonl(suite, file, ("lexeme", "wug"))
    else:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if file.suffix == ".tsv" else ",")
            if not {"lexeme", "wug"} <= set(reader.fieldnames or []):
                raise SuiteError(f"suite lexical_decision: {file} has columns {reader.fieldnames} (expected {expected})")
            rows = list(enumerate(reader, start=2))
    for number, r in rows:
        if not r.get("lexeme") or not r.get("wug"):
            suite.skip(f"{file.name}:{number}", "empty lexeme or wug")
            continue
        suite.items.append(ChoiceItem(f"{file.name}:{number}", "lexical_decision", [r["lexeme"], r["wug"]]))
    return suite


# name -> (loader, embedded default or None, where the full data lives under a --eval-data root)
SUITES = {
    "blimp": (load_blimp, EMBEDDED / "blimp", "eval/babylm2025/blimp_filtered"),
    "supplement": (load_supplement, EMBEDDED / "supplement", "eval/babylm2025/supplement_filtered"),
    "entity_tracking": (load_entity_tracking, EMBEDDED / "entity_tracking", "eval/babylm2025/entity_tracking"),
    "ewok": (load_ewok, None, "eval/babylm2025/ewok_filtered"),
    "reading": (load_reading, EMBEDDED / "reading" / "reading_data.csv", "eval/babylm2025/reading/reading_data.csv"),
    "wug_adj": (load_wug_adj, EMBEDDED / "wug_adj", "eval/babylm2025/wug_adj_nominalization"),
    "lexical_decision": (load_lexical_decision, None, None),
    "zorro": (load_zorro, EMBEDDED / "zorro", "eval/zorro"),
    "dialogue_words": (lambda p: load_dialogue(p, "dialogue_words"), EMBEDDED / "dialogue" / "words_eval_sample.json",
                       "paper/dpo/huggingface_dpo_format_eval.json"),
    "dialogue_tokens": (lambda p: load_dialogue(p, "dialogue_tokens"), EMBEDDED / "dialogue" / "tokens_eval_sample.json",
                        "paper/dpo/tok_pairs_no_overlap_1.csv"),
    "ours_words": (lambda p: load_dialogue(p, "ours_words"), None, None),
    "ours_tokens": (lambda p: load_dialogue(p, "ours_tokens"), None, None),
}


def suite_paths(overrides: dict[str, str], eval_data=None) -> tuple[dict[str, Path], list[str]]:
    """Which file or folder each suite reads, and notes on what was left out.

    --suite NAME=PATH wins; else, with --eval-data DIR, the full file in DIR's layout (a suite missing there is
    left out with a note: not everyone has EWoK); else the embedded sample. Suites without data (EWoK, lexical
    decision, our corpus pairs unless given) are left out.
    """
    unknown = sorted(set(overrides) - set(SUITES))
    if unknown:
        raise SuiteError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    paths, notes = {}, []
    for name, (_, embedded, relative) in SUITES.items():
        if name in overrides:
            paths[name] = Path(overrides[name])
        elif eval_data is not None and relative is not None:
            if (Path(eval_data) / relative).exists():
                paths[name] = Path(eval_data) / relative
            else:
                notes.append(f"{name}: left out, {Path(eval_data) / relative} does not exist")
        elif embedded is not None:
            paths[name] = embedded
    return paths, notes


def load_suite(name: str, path) -> Suite:
    suite = SUITES[name][0](path)
    if not suite.items:
        problems = f": {'; '.join(suite.problems)}" if suite.problems else ""
        raise SuiteError(f"suite {name}: no usable items in {path} ({suite.skipped} lines skipped{problems})")
    return suite
