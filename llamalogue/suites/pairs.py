"""Readers of the custom benchmarks: Zorro (realigned when a file lost a line), the dialogue minimal pairs (the
paper's and our corpus stage's) and lexical decision."""

import csv
import difflib
from pathlib import Path

import numpy as np

from llamalogue.corpus.dialogue_files import pair_records
from llamalogue.corpus.transcripts import CorpusError
from llamalogue.suites.items import EMBEDDED, ChoiceItem, Suite, SuiteError, equal_weights, files, jsonl_records

# The paper's dialogue minimal pairs: the evaluation rows of its two CSV files (the first 18,000 rows trained DPO).
# See the paper data's README (shared data folder, paper/README.md): word-matched = rows 18,000-25,547 (== huggingface_dpo_format_eval.json),
# token-matched = rows 18,000-25,519 of tok_pairs_no_overlap_1.csv.
PAPER_EVAL_ROWS = {"len_pairs_no_overlap_1.csv": (18000, 25548), "tok_pairs_no_overlap_1.csv": (18000, 25520)}


def pair_dissimilarity(a: str, b: str) -> float:
    """1 - (matching characters of a and b) * 2 / (len a + len b), difflib's ratio: ~0.05 for a Zorro minimal pair
    ("this colors must be white ." / "this color must be white ."), larger for two different items."""
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def orphan_line(lines: list[str]) -> int:
    """In a file of minimal pairs that lost one line (an odd count), the index of the line left without a partner.

    The orphan stands at an even index k: lines (0,1) ... (k-2,k-1) pair up before it and (k+1,k+2) ... after it.
    Among all such k, the one whose pairs are the most alike in total:

        k* = argmin_k  sum_{i < k, i even} d(i, i+1)  +  sum_{i > k, i odd} d(i, i+1)

    (d = pair_dissimilarity; prefix and suffix sums make it one pass). Checked on 230 random deletions from the
    real Zorro files: the orphan found exactly 201 times, one pair away otherwise (load_zorro leaves out the pairs
    beside it: no item mispaired in those 230).
    """
    d = np.array([pair_dissimilarity(lines[i], lines[i + 1]) for i in range(len(lines) - 1)])
    before = np.concatenate([[0.0], np.cumsum(d[0::2])])  # before[m]: pairs (0,1) .. (2m-2, 2m-1)
    after = np.concatenate([np.cumsum(d[1::2][::-1])[::-1], [0.0]])  # after[m]: pairs (2m+1, 2m+2) .. the end
    candidates = range(0, len(lines), 2)
    return min(candidates, key=lambda k: before[k // 2] + after[k // 2])


def load_zorro(path=EMBEDDED / "zorro") -> Suite:
    """Zorro: one paradigm per .txt file, lines alternate bad, good (line 1 of each pair ungrammatical).

    Checked by inspection, e.g. agreement_determiner_noun-between_neighbors.txt: "this colors must be white ."
    (line 1) then "this color must be white ." (line 2). A file with an odd number of lines lost one: the line left
    without a partner (`orphan_line`) is skipped with its file:line, the pairs after it realigned, and the pair on
    each side of it left out too (counted): where neighbouring items differ by one word ("Michael saw ..." / "Michael
    had saw ..."), the orphan found can be one pair off, and those two pairs are the only ones that could be mispaired.
    """
    expected = "Zorro .txt files (lines alternating bad, good), e.g. <shared>/data/eval/zorro"
    suite = Suite("zorro", "choice", [], str(path))
    for file in files("zorro", path, ("*.txt",), expected):
        numbered = [(n, line.strip()) for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1)
                    if line.strip()]
        uncertain = set()
        if len(numbered) % 2:
            orphan = orphan_line([line for _, line in numbered])
            suite.skip(f"{file.name}:{numbered[orphan][0]}", "no partner (the file has an odd number of lines); the "
                       "pairs after it are realigned")
            uncertain = {numbered[i][0] for i in (orphan - 2, orphan + 1) if 0 <= i < len(numbered) - 1}
            del numbered[orphan]
        for (number, bad), (_, good) in zip(numbered[0::2], numbered[1::2]):
            if number in uncertain:
                suite.skip(f"{file.name}:{number}", "the pair beside a lost line, left out (alignment uncertain)")
                continue
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", file.stem, [good, bad]))
    return equal_weights(suite)


def load_dialogue(path, name: str) -> Suite:
    """Dialogue minimal pairs: "prompt reply" with the appropriate reply vs a random one (words or tokens matched).

    Reads our corpus stage's JSONL, the paper's JSON, and the paper's CSVs, of which only the evaluation rows are
    kept (PAPER_EVAL_ROWS); replies without speaker tags get *MOT: / *CHI:. A folder is our corpus output: its
    pairs/eval_<words|tokens>_nooverlap.jsonl.
    """
    path = Path(path)
    unit = "tokens" if "tokens" in name else "words"
    if path.is_dir():
        path = path / "pairs" / f"eval_{unit}_nooverlap.jsonl"
    if not path.is_file():
        raise SuiteError(f"suite {name}: {path} does not exist (expected the paper's huggingface_dpo_format_eval.json / "
                         f"{'tok' if unit == 'tokens' else 'len'}_pairs_no_overlap_1.csv, or a corpus folder with "
                         f"pairs/eval_{unit}_nooverlap.jsonl)")
    first, end = PAPER_EVAL_ROWS.get(path.name, (0, None))
    suite = Suite(name, "choice", [], str(path), group_weights={name: 1.0})
    try:
        records = list(pair_records(path))  # the formats' one reader (llamalogue.corpus.dialogue_files)
    except CorpusError as error:
        raise SuiteError(f"suite {name}: {error}") from None
    for index, place, pair in records:
        if isinstance(pair, ValueError):  # a bad record: skipped with its place, the rows after it keep their index
            suite.skip(f"{path.name}:{place}", str(pair))
        elif first <= index and (end is None or index < end):
            suite.items.append(ChoiceItem(f"{path.name}:{index}", name, [f"{pair.prompt} {pair.chosen}",
                                                                          f"{pair.prompt} {pair.rejected}"]))
    return suite


def load_lexical_decision(path) -> Suite:
    """Lexical decision: a real word (`lexeme`) should be more probable than a matched nonword (`wug`).

    The paper's set (bbunzeck/lexical-decision) lives on the Hugging Face hub, not here: pass a .csv / .tsv / .jsonl
    with those two columns.
    """
    expected = "a .csv, .tsv or .jsonl file with columns lexeme and wug"
    file = files("lexical_decision", path, ("*.csv", "*.tsv", "*.jsonl"), expected)[0]
    suite = Suite("lexical_decision", "choice", [], str(file), group_weights={"lexical_decision": 1.0})
    if file.suffix == ".jsonl":
        rows = jsonl_records(suite, file, ("lexeme", "wug"))
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


