"""evaluate.py against the official BabyLM 2025 pipeline: the same model (ours, exported to transformers), the same
data folder, both numbers and both times.

    python -m benchmarks official --run RUN --task blimp --data DIR --reference-python PY [--threads 1]

The official side is `evaluation_pipeline.sentence_zero_shot.run` of the pipeline's code (default: the shared
folder's reference/babylm-evaluation-pipeline-2025, or --reference DIR), run by PY: an interpreter of its own
environment with the pipeline's packages (datasets, aiohttp, scipy, pandas, statsmodels), never the project's (the
environment variable LLAMALOGUE_REFERENCE_PYTHON is the default). Ours is the package's scorer on the native
checkpoint, the way evaluate.py runs it (without bootstrap intervals). Both print one line each: the task's score
(accuracy %, or Spearman rho x 100 for the wug tests; the pipeline's report rounds to 2 decimals, so the wug score
is recomputed from its predictions.json), the items on which the two choose differently, and the seconds.

Last line: `official ratio=X.XX` = the official pipeline's seconds / ours (> 1: ours is faster).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine
from llamalogue.evaluation import load_lm
from llamalogue.evaluation.predictions import official_predictions
from llamalogue.evaluation.statistics import spearman
from llamalogue.evaluation.tasks import evaluate_suite
from llamalogue.hf import export
from llamalogue.suites import load_suite

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "babylm-evaluation-pipeline-2025"
OFFICIAL_TASK = {"blimp": "blimp", "supplement": "blimp", "entity_tracking": "entity_tracking", "ewok": "ewok",
                 "wug_adj": "wug_adj", "wug_past": "wug_past", "comps": "comps"}


def run_official(task: str, data: Path, hf_dir: Path, out: Path, python: str, reference: Path,
                 threads: int = 1) -> tuple[dict, float]:
    """(the pipeline's predictions.json, wall seconds) of `sentence_zero_shot.run` on one data folder."""
    command = [python, "-m", "evaluation_pipeline.sentence_zero_shot.run",
               "--model_path_or_name", str(Path(hf_dir).resolve()), "--backend", "causal",
               "--task", OFFICIAL_TASK[task], "--data_path", str(Path(data).resolve()),
               "--save_predictions", "--output_dir", str(Path(out).resolve())]
    env = {**os.environ, "PYTHONPATH": str(reference), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=reference, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"official pipeline failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    found = list(Path(out).glob(f"*/main/zero_shot/causal/{OFFICIAL_TASK[task]}/*/predictions.json"))
    return json.loads(found[0].read_text()), seconds


def compare(task: str, suite, ours: dict, theirs: dict, result) -> dict:
    """Our score, the official one computed from its predictions.json by the pipeline's rules, and how many items'
    chosen candidates differ. Accuracy tasks: an item is right when its "pred" is the right candidate's; the score
    is the mean over UIDs (entity tracking: over operations within a file, then files, as evaluate.py)."""
    differ = sum(a["pred"] != b["pred"] for uid in ours for a, b in zip(ours[uid]["predictions"],
                                                                      theirs.get(uid, {}).get("predictions", [])))
    if suite.kind == "wug":
        probs = np.array([p["prob"] for p in theirs[suite.name]["predictions"]])
        human = np.array([item.human_ratio for item in suite.items])
        return {"ours": result.value, "official": 100.0 * spearman(probs, human), "differ": differ}
    right = {}  # uid -> the right candidates' "pred", in file order
    for item in suite.items:
        context = "" if task == "comps" or not item.contexts else item.contexts[0]
        right.setdefault(item.group, []).append(item.candidates[0][len(context):])
    accuracy = {uid: 100.0 * np.mean([p["pred"].strip() == r.strip() for p, r in zip(theirs[uid]["predictions"], rs)])
                for uid, rs in right.items()}
    official = sum(suite.group_weights[uid] * accuracy[uid] for uid in accuracy)
    return {"ours": result.value, "official": float(official), "differ": differ, "ties": result.ties}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a llamalogue run directory")
    parser.add_argument("--task", required=True, choices=sorted(OFFICIAL_TASK))
    parser.add_argument("--data", type=Path, required=True, help="the task's data folder, in the pipeline's format")
    parser.add_argument("--reference-python", default=os.environ.get("LLAMALOGUE_REFERENCE_PYTHON"),
                        help="python of an environment with the pipeline's packages")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the pipeline's code")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-official"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.reference_python:
        print("error: --reference-python (or LLAMALOGUE_REFERENCE_PYTHON) is needed", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(machine())
    out = args.out / f"{args.run.name}-{args.task}"
    hf_dir = export(args.run, out / "hf", overwrite=True)
    suite = load_suite(args.task, args.data)
    started = time.perf_counter()
    lm = load_lm(args.run, "cpu")
    lm.weights_id = None  # timed: never the scores kept from an earlier run (llamalogue.evaluation.score_cache)
    result = evaluate_suite(lm, suite, replicates=0)[0]
    our_seconds = time.perf_counter() - started
    theirs, their_seconds = run_official(args.task, args.data, hf_dir, out / "official", args.reference_python,
                                         args.reference, args.threads)
    numbers = compare(args.task, suite, official_predictions(suite, result), theirs, result)
    print(f"{args.task}: {len(suite.items)} items from {args.data}; model {args.run} ({args.threads} thread(s))")
    print(f"  evaluate.py {numbers['ours']:.2f} in {our_seconds:.1f} s")
    print(f"  official    {numbers['official']:.2f} in {their_seconds:.1f} s; items chosen differently: "
          f"{numbers['differ']} (our ties: {numbers.get('ties', 0)})")
    print(f"official ratio={their_seconds / our_seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
