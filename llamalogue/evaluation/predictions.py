"""Per-item predictions in the official BabyLM 2025 layout, so that the pipeline's collate_preds.py and a BabyLM
submission can use our runs:

    OUT/predictions/<model>/<task>/predictions.json     {uid: {"predictions": [{"id": "<uid>_<k>", "pred": ...}]}}

uid is the pipeline's UID (BLiMP paradigm, supplement file, EWoK domain, entity-tracking "<file>_<n>_ops", COMPS
subset, the wug task's name; "reading" for reading), k counts the items of that uid in file order, and "pred" is
what the pipeline writes: the chosen completion (BLiMP: the sentence; EWoK: " " + the target; entity tracking: the
option; COMPS: the whole sentence), for the wug tests with "prob" = p(first candidate), for reading the surprisal
("pred") and the previous word's ("prev_pred"). Our rule for ties holds here too: the right candidate is "pred" only
when it wins strictly, so collating these files gives our accuracies (the pipeline's own argmax would count a tie as
right). AoA writes the pipeline's AoA_word/surprisal.json layout ({"metadata", "results": [{"step", "target_word",
"context_id", "context", "surprisal"}]}) beside it. The collation reads predictions in the data files' line order:
a suite with skipped lines (see results.json) gives files that no longer line up with the official data.
"""

import json
import math
from pathlib import Path

from llamalogue.evaluation.tasks import TaskResult
from llamalogue.run_dir import write_text
from llamalogue.suites import Suite


def _numbered(uid: str, counts: dict[str, int]) -> str:
    counts[uid] = counts.get(uid, -1) + 1
    return f"{uid}_{counts[uid]}"


def official_predictions(suite: Suite, result: TaskResult) -> dict:
    """{uid: {"predictions": [...]}} of one suite's scored items (see the module docstring)."""
    layout: dict[str, dict[str, list]] = {}
    counts: dict[str, int] = {}
    if suite.kind == "reading":
        layout["reading"] = {"predictions": [
            {"id": p["row"], "pred": p["surprisal"],
             "prev_pred": math.nan if p["prev_surprisal"] is None else p["prev_surprisal"]}
            for p in result.predictions]}
        return layout
    for item, prediction in zip(suite.items, result.predictions):
        choice = prediction["choice"]
        if suite.kind == "wug":
            uid = suite.name
            record = {"pred": item.candidates[choice], "prob": prediction["p_first"]}
        else:
            uid, candidate = item.group, item.candidates[choice]
            context = item.contexts[choice] if item.contexts else ""
            record = {"pred": candidate if suite.name == "comps" else candidate[len(context):]}
        layout.setdefault(uid, {"predictions": []})["predictions"].append({"id": _numbered(uid, counts), **record})
    return layout


def write_official(out: Path, model: str, task: str, layout: dict, file_name: str = "predictions.json") -> Path:
    """OUT/predictions/<model>/<task>/<file_name>."""
    path = Path(out) / "predictions" / model / task / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(layout))
    return path
