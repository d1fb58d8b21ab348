"""Readers of the BabyLM 2025 suites, in the official pipeline's formats (its read_files.py): BLiMP (filtered) and
its supplement, entity tracking, EWoK, the wug tests (adjective nominalisation, past tense), COMPS, reading, and
the CDI word list of the AoA task."""

import csv

from llamalogue.suites.items import (EMBEDDED, AoAWord, ChoiceItem, ReadingItem, Suite, SuiteError, WugItem,
                                     equal_weights,
                                     file_stem, files, jsonl_records)


def load_blimp(path=EMBEDDED / "blimp", name: str = "blimp") -> Suite:
    """BabyLM 2025 BLiMP (filtered) or its supplement: .jsonl with sentence_good / sentence_bad, one file per paradigm.

    As the BabyLM pipeline: group = the UID field (the file name for the supplement, which has none), and the score
    is the mean of the paradigms' accuracies.
    """
    expected = "BabyLM 2025 .jsonl files with sentence_good/sentence_bad, e.g. <shared>/data/eval/babylm2025/blimp_filtered"
    suite = Suite(name, "choice", [], str(path))
    for file in files(name, path, ("*.jsonl",), expected):
        for number, r in jsonl_records(suite, file, ("sentence_good", "sentence_bad")):
            meta = {}
            if "field" in r:  # BLiMP proper; BabyLM writes one field two ways
                meta = {"field": r["field"].replace("syntax_semantics", "syntax/semantics"),
                        "linguistics_term": r.get("linguistics_term", "")}
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", r.get("UID") or file.stem,
                                          [r["sentence_good"], r["sentence_bad"]], meta=meta))
    return equal_weights(suite)


def load_supplement(path=EMBEDDED / "supplement") -> Suite:
    return load_blimp(path, name="supplement")


def load_entity_tracking(path=EMBEDDED / "entity_tracking") -> Suite:
    """Entity tracking (boxes): input_prefix + options, options[0] the true content; only the option is scored.

    As the BabyLM pipeline: accuracy per (file, number of operations), averaged over operations within a file, then
    over files.
    """
    expected = "entity-tracking .jsonl files with input_prefix/options, e.g. <shared>/data/eval/babylm2025/entity_tracking"
    suite = Suite("entity_tracking", "choice", [], str(path))
    for file in files("entity_tracking", path, ("*.jsonl",), expected):
        for number, r in jsonl_records(suite, file, ("input_prefix",), ("options", "numops")):
            if not isinstance(r["options"], list) or len(r["options"]) < 2 or not all(
                    isinstance(option, str) for option in r["options"]):
                suite.skip(f"{file.name}:{number}", "options is not a list of two or more texts")
                continue
            prefix = r["input_prefix"]
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", f"{file.stem}_{r['numops']}_ops",
                                          [prefix + option for option in r["options"]],
                                          contexts=[prefix] * len(r["options"])))
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
    for file in files("ewok", path, ("*.jsonl", "*.jsonl.gz"), expected):
        for number, r in jsonl_records(suite, file, ("Context1", "Target1", "Target2")):
            context = r["Context1"]
            suite.items.append(ChoiceItem(f"{file_stem(file)}:{number}", r.get("Domain") or file_stem(file),
                                          [f"{context} {r['Target1']}", f"{context} {r['Target2']}"],
                                          contexts=[context, context]))
    return equal_weights(suite)


def load_wug(path, name: str) -> Suite:
    """Wug tests, as the BabyLM pipeline reads them: "sentences" = the candidates, tab-separated (adjective
    nominalisation: -ity vs -ness; past tense: the inflections compared), "ratio" = the share of humans preferring
    the first."""
    expected = (f"{'wug_adj_nominalization' if name == 'wug_adj' else 'wug_past_tense'}.jsonl (sentences, ratio), "
                f"e.g. <shared>/data/eval/babylm2025/{'wug_adj_nominalization' if name == 'wug_adj' else 'wug_past_tense'}")
    suite = Suite(name, "wug", [], str(path))
    for file in files(name, path, ("*.jsonl",), expected):
        for number, r in jsonl_records(suite, file, ("sentences",), ("ratio",)):
            candidates = r["sentences"].split("\t")
            if len(candidates) < 2 or not all(c.strip() for c in candidates):
                suite.skip(f"{file.name}:{number}", f"expected 2 or more tab-separated sentences, got {candidates!r}")
                continue
            try:
                ratio = float(r["ratio"])
            except (TypeError, ValueError):
                suite.skip(f"{file.name}:{number}", f"ratio {r['ratio']!r} is not a number")
                continue
            suite.items.append(WugItem(f"{file.stem}:{number}", candidates, ratio))
    return suite


# The pipeline's COMPS subsets (its UIDs), by file stem.
COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before",
                 "comps_wugs_dist-in-between": "wugs_dist_in_between"}


def load_comps(path) -> Suite:
    """COMPS (Misra et al., 2023) as the BabyLM pipeline reads it: "prefix_acceptable" / "prefix_unacceptable" (a
    concept, e.g. "A dog" vs "A table"), then the same "property_phrase" ("can bark."); only the property phrase is
    scored, after its prefix. Group = the file's subset (base, wugs, wugs_dist_before, wugs_dist_in_between); the
    score is the mean of the subsets' accuracies. Not embedded: the real data are not available offline."""
    expected = "COMPS .jsonl files (comps_base, comps_wugs, ...) with prefix_acceptable/prefix_unacceptable/property_phrase"
    suite = Suite("comps", "choice", [], str(path))
    for file in files("comps", path, ("*.jsonl",), expected):
        subset = COMPS_SUBSETS.get(file.stem, "wugs_dist_in_between")  # the pipeline's fallback for other names
        for number, r in jsonl_records(suite, file, ("prefix_acceptable", "prefix_unacceptable", "property_phrase")):
            good, bad, phrase = (r[k] for k in ("prefix_acceptable", "prefix_unacceptable", "property_phrase"))
            # The contexts keep the space: the pipeline scores the property phrase's own tokens (scoring.score_texts).
            suite.items.append(ChoiceItem(f"{file.stem}:{number}", subset, [f"{good} {phrase}", f"{bad} {phrase}"],
                                          contexts=[f"{good} ", f"{bad} "]))
    return equal_weights(suite)


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
    file = files("reading", path, ("*.csv",), expected)[0]
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("item", "word", "sentence", "prev_item", "prev_word", *READING_MEASURES)
                   if c not in (reader.fieldnames or [])]
        if missing:
            raise SuiteError(f"suite reading: {file} lacks column(s) {', '.join(missing)} (expected {expected})")
        for number, row in enumerate(reader, start=2):
            if None in row or None in row.values():  # DictReader's marks of a row longer or shorter than the header
                suite.skip(f"{file.name}:{number}", f"{len(reader.fieldnames)} columns in the header, not in this row")
                continue
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
                                           row["prev_word"] if has_prev else None, measures, row=number - 2))
    return suite




def load_aoa_words(path=EMBEDDED / "aoa" / "word_list.csv") -> Suite:
    """The CDI words with the children's AoA (word_list.csv: word_clean, lexical_category, aoa in months). A word form
    listed twice (can: noun and verb) keeps its first row, as the pipeline's lookup does."""
    expected = "word_list.csv (word_clean, lexical_category, aoa), e.g. <shared>/data/eval/aoa/word_list.csv"
    suite = Suite("aoa", "aoa", [], str(path))
    file = files("aoa", path, ("*.csv",), expected)[0]
    seen = set()
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"word_clean", "lexical_category", "aoa"} <= set(reader.fieldnames or []):
            raise SuiteError(f"suite aoa: {file} has columns {reader.fieldnames} (expected {expected})")
        for number, row in enumerate(reader, start=2):
            word = " ".join((row["word_clean"] or "").lower().split())
            try:
                aoa = float(row["aoa"])
            except (TypeError, ValueError):
                suite.skip(f"{file.name}:{number}", f"aoa {row['aoa']!r} is not a number")
                continue
            if not word:
                suite.skip(f"{file.name}:{number}", "empty word_clean")
            elif word not in seen:
                seen.add(word)
                suite.items.append(AoAWord(f"{file.name}:{number}", word, row["lexical_category"] or "", aoa))
    return suite
