"""The evaluation suites: which files each task reads, and how their lines become items to score.

Every suite takes a path (a file or a folder) and defaults to the small samples embedded in `data/eval/` (see its
README for sources and licences); `SUITES` is the registry: a suite added there is run, tabled and plotted by
evaluate.py with no other edit. The items (`items`), the BabyLM 2025 readers (`babylm`) and the custom benchmarks'
readers (`pairs`: Zorro, dialogue minimal pairs, lexical decision) each have their module.

Bad input, one rule everywhere: a line (a record) that cannot be read (not JSON, a field missing or null, not a
pair) is skipped and counted with its file:line, never fatal and never shifting the lines after it (a Zorro file
that lost a line is realigned: `pairs.orphan_line`); a path that does not exist, or that holds nothing usable, is
one clear error saying what was expected where.
"""

from pathlib import Path

from llamalogue.suites.babylm import (load_aoa_words, load_blimp, load_comps, load_entity_tracking, load_ewok,
                                      load_reading, load_supplement, load_wug)
from llamalogue.suites.items import (EMBEDDED, AoAWord, ChoiceItem, ReadingItem, Suite, SuiteError, WugItem)
from llamalogue.suites.pairs import load_dialogue, load_lexical_decision, load_zorro

__all__ = ["EMBEDDED", "SUITES", "AoAWord", "ChoiceItem", "ReadingItem", "Suite", "SuiteError", "WugItem",
           "load_aoa_words", "load_blimp", "load_comps", "load_dialogue", "load_entity_tracking", "load_ewok",
           "load_lexical_decision", "load_reading", "load_suite", "load_supplement", "load_wug", "load_zorro",
           "suite_paths"]

# name -> (loader, embedded default or None, where the full data lives under a --eval-data root)
SUITES = {
    "blimp": (load_blimp, EMBEDDED / "blimp", "eval/babylm2025/blimp_filtered"),
    "supplement": (load_supplement, EMBEDDED / "supplement", "eval/babylm2025/supplement_filtered"),
    "entity_tracking": (load_entity_tracking, EMBEDDED / "entity_tracking", "eval/babylm2025/entity_tracking"),
    "ewok": (load_ewok, None, "eval/babylm2025/ewok_filtered"),
    "reading": (load_reading, EMBEDDED / "reading" / "reading_data.csv", "eval/babylm2025/reading/reading_data.csv"),
    "wug_adj": (lambda p: load_wug(p, "wug_adj"), EMBEDDED / "wug_adj", "eval/babylm2025/wug_adj_nominalization"),
    "wug_past": (lambda p: load_wug(p, "wug_past"), None, "eval/babylm2025/wug_past_tense"),
    "comps": (load_comps, None, "eval/babylm2025/comps"),
    "lexical_decision": (load_lexical_decision, None, None),
    "zorro": (load_zorro, EMBEDDED / "zorro", "eval/zorro"),
    "dialogue_words": (lambda p: load_dialogue(p, "dialogue_words"), EMBEDDED / "dialogue" / "words_eval_sample.json",
                       "paper/dpo/huggingface_dpo_format_eval.json"),
    "dialogue_tokens": (lambda p: load_dialogue(p, "dialogue_tokens"), EMBEDDED / "dialogue" / "tokens_eval_sample.json",
                        "paper/dpo/tok_pairs_no_overlap_1.csv"),
    "ours_words": (lambda p: load_dialogue(p, "ours_words"), None, None),
    "ours_tokens": (lambda p: load_dialogue(p, "ours_tokens"), None, None),
    "aoa": (load_aoa_words, EMBEDDED / "aoa" / "word_list.csv", "eval/aoa/word_list.csv"),
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
