"""Evaluate language models on minimal pairs and the BabyLM tasks; write the poster's results table.

    python evaluate.py --model runs/lm-small --model runs/dpo-natural --out runs/eval
    python evaluate.py --model runs/lm-small --eval-data SHARED_DATA_DIR --paper      # the full suites
    python evaluate.py --model HF_DIR --suite blimp=PATH --suite zorro=PATH --tasks blimp,zorro
    python evaluate.py --model RUN --suite comps=DIR --suite wug_past=DIR
    python evaluate.py --model RUN --tasks aoa          # RUN trained with train_lm.py --milestones
    python evaluate.py --model RUN --milestones --tasks zorro,dialogue_words --protocol paper   # learning curves

Without --suite / --eval-data every suite runs on the small samples embedded in data/eval (EWoK, lexical decision,
COMPS and wug past only when given a path). Writes to --out: results.md (the table, paired comparisons, details),
results.json, predictions/<model>/<task>.jsonl (one line per item), predictions/<model>/<task>/predictions.json
(the official BabyLM layout; AoA: surprisal.json), log.csv, results.png and config.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from llamalogue.checkpoint import is_run_dir, load_config
from llamalogue.cli import fail
from llamalogue.evaluation import aoa, milestone_curve, predictions, report
from llamalogue.evaluation.lm import load_lm, model_kind
from llamalogue.evaluation.protocol import PROTOCOLS, apply_protocol
from llamalogue.evaluation.tasks import compare, evaluate_suite
from llamalogue.run_dir import clear_run, open_run, user_cache, write_json, write_text
from llamalogue.runlog import RunLog
from llamalogue.suites import EMBEDDED, SUITES, SuiteError, load_suite, suite_paths

PAPER_RESULTS = Path(__file__).resolve().parent / "data" / "paper_results.csv"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="a run directory, a Hugging Face causal-LM folder, a .gguf file, "
                   "or 'teacher' (repeat to compare; the first is the reference; default runs/lm-small)")
    p.add_argument("--suite", action="append", default=[], metavar="NAME=PATH",
                   help=f"read suite NAME from PATH; names: {', '.join(SUITES)}")
    p.add_argument("--eval-data", metavar="DIR", help="root of the full data in the layout of the project's shared data folder "
                   "(eval/babylm2025/..., eval/zorro, paper/dpo): every suite reads its full file from there")
    p.add_argument("--tasks", help="comma-separated suites to run (default: every suite that has data)")
    p.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--paper", action="store_true", help="add the paper's numbers as reference columns, and score its "
                   "own benchmarks its way (--protocol paper) unless --protocol says otherwise")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="paper: dialogue minimal pairs, Zorro and lexical decision scored as the paper's scripts did "
                   "(minicons' sum with its beginning-of-word correction, Zorro lowercased, lexical decision over every "
                   "row); ours: the official BabyLM pipeline's rules for every task (default, or paper with --paper)")
    p.add_argument("--milestones", action="store_true",
                   help="score every milestone checkpoint of each --model run (train_lm.py --milestones) instead of "
                   "the run alone: OUT/milestones.csv and milestones.png, the tasks over the training tokens seen")
    p.add_argument("--aoa-contexts", metavar="FILE", nargs="+", help="held-out utterances for AoA, one per line "
                   "(default: val.txt, dpo.txt and eval.txt of the corpus folder each run was trained on)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reduction", choices=("sum", "mean"), default="sum",
                   help="sentence score: summed token log-probs (default) or their mean per token")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; on a "
                   "busy machine 1 is often faster for small models)")
    return p.parse_args(argv)


def model_names(paths: list[str]) -> list[str]:
    names = []
    for path in paths:
        name = Path(path.rstrip("/")).name.removesuffix(".gguf") or path
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names


def main(argv=None):
    args = parse_args(argv)
    models = args.model or ["runs/lm-small"]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = dict(s.split("=", 1) for s in args.suite)
    except ValueError:
        fail(f"--suite takes NAME=PATH, got {args.suite}")
    try:
        paths, left_out = suite_paths(overrides, args.eval_data)
        for note in left_out:
            print(note)
        if args.tasks:
            wanted = args.tasks.split(",")
            missing = [t for t in wanted if t not in paths]
            if missing:
                raise SuiteError(f"--tasks {','.join(missing)}: no data for it (known: {', '.join(SUITES)}; EWoK, "
                                 "lexical decision, COMPS, wug past and our pairs need --suite NAME=PATH or "
                                 "--eval-data)")
            paths = {t: paths[t] for t in wanted}
        protocol = args.protocol or ("paper" if args.paper else "ours")
        suites = {name: apply_protocol(load_suite(name, path), protocol) for name, path in paths.items()}
        for path in models:  # fail now, not after scoring the first model for an hour
            model_kind(path)
            if args.milestones:
                milestone_curve.checkpoints(path)
        if is_run_dir(args.out):
            raise ValueError(f"--out {args.out}: is a model's run directory; its config and log would be replaced "
                             "(write the evaluation elsewhere, e.g. runs/eval)")
        # the run folder's rules: a new or empty folder, or an earlier evaluation (replaced); never other files
        open_run(args.out, "evaluate", resume=False, overwrite=False, options=())
    except (SuiteError, ValueError) as error:
        fail(error)

    out = Path(args.out)
    clear_run(out)
    log = RunLog(out)
    write_json(out / "config.json", {"stage": "evaluate", **vars(args), "model": models,
                                     "suites": {k: str(v) for k, v in paths.items()}})
    print("scale: " + "; ".join(
        f"{name} {len(s.items)} items from {s.source}"
        + (" (embedded sample)" if Path(s.source).resolve().is_relative_to(EMBEDDED) else " (given)")
        + (f", {s.skipped} lines skipped" if s.skipped else "") for name, s in suites.items()))
    kept = user_cache("scores")  # llamalogue.evaluation.score_cache
    if kept and any(model_kind(path) == "llamalogue" for path in models):
        print(f"a run's scores are kept in {kept} and read when it is scored again (LLAMALOGUE_CACHE='' scores "
              "afresh)")

    if args.milestones:
        rows = []
        for path in models:
            rows += milestone_curve.sweep(path, {n: s for n, s in suites.items() if s.kind != "aoa"}, protocol,
                                          args.batch_size, args.bootstrap, args.device)
        milestone_curve.write_curves(out, rows)
        print(f"\nwrote {out}/milestones.csv, milestones.png")
        return

    results, info, notes = {}, {}, {}
    for path, name in zip(models, model_names(models)):
        try:
            lm = load_lm(path, args.device)
        except (ValueError, FileNotFoundError) as error:
            fail(error)
        lm.name = name
        info[name] = {"path": str(path), "kind": lm.kind, "parameters": lm.parameters(), "device": str(lm.device),
                      "context": lm.context,
                      "words_seen": load_config(path)["words_seen"] if lm.kind == "llamalogue" else None}
        results[name], notes[name] = {}, {}
        for suite in suites.values():
            if suite.kind == "aoa":  # learning curves over the run's milestone checkpoints, not this one model
                try:
                    result, surprisal = aoa.evaluate_aoa(path, suite, args.aoa_contexts, batch_size=args.batch_size,
                                                         replicates=args.bootstrap, device=args.device)
                except aoa.NoCurve as reason:
                    notes[name]["aoa"] = str(reason)
                    print(f"{name:>16} {'aoa':<16} {reason}")
                    continue
                predictions.write_official(out, name, "aoa", surprisal, "surprisal.json")
                task_results = [result]
            else:
                task_results = evaluate_suite(lm, suite, args.batch_size, args.reduction, args.bootstrap, args.seed)
                predictions.write_official(out, name, suite.name,
                                           predictions.official_predictions(suite, task_results[0]))
            for result in task_results:
                results[name][result.task] = result
                speed = (f"{result.seconds:.1f}s ({result.n / result.seconds:.3g} items/s)" if result.seconds
                         else "scores kept from an earlier evaluation")
                print(f"{name:>16} {result.task:<16} {result.value:7.2f} [{result.ci_low:.2f}, {result.ci_high:.2f}]"
                      f"  n={result.n} ties={result.ties} {speed}", flush=True)
                log.log({"model": name, "task": result.task, **result.summary(), "breakdown": ""})
                per_item = out / "predictions" / name / f"{result.task}.jsonl"
                write_text(per_item, "".join(json.dumps(p) + "\n" for p in result.predictions))
        del lm

    # Paired comparisons need the same items: AoA's words are those each run could give an AoA, so it has none.
    reference = list(results)[0]
    comparisons = [{"a": reference, "b": other, **compare(results[reference][task], results[other][task],
                                                          args.bootstrap, args.seed)}
                   for other in list(results)[1:] for task in results[reference]
                   if task != "aoa" and task in results[other]]
    settings = {"batch_size": args.batch_size, "reduction": args.reduction, "bootstrap": args.bootstrap,
                "seed": args.seed, "ties": "counted wrong", "protocol": protocol}
    paper = report.read_paper_results(PAPER_RESULTS) if args.paper else None
    print("\n" + report.write_report(out, info, suites, results, comparisons, settings, paper, notes))
    print(f"\nwrote {out}/results.md, results.json, predictions/, results.png")


if __name__ == "__main__":
    main()
