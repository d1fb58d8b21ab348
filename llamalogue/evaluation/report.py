"""The report: the poster's table (value [95% CI] per task and model), paired comparisons, each suite by paradigm,
details, a plot.

Rows follow the poster (POSTER_ROWS); a task that is not on the poster (a suite added to `llamalogue.suites`) is
listed after them under "Other", in the table and the plot alike, with no other edit. A cell without a number says
why: the data are not available, the model has no training checkpoints (AoA), or the task is fine-tuning.
"""

import csv
import json
from pathlib import Path

import numpy as np

from llamalogue.evaluation.protocol import protocol_of
from llamalogue.evaluation.tasks import TaskResult
from llamalogue.run_dir import save_figure, write_text
from llamalogue.suites import Suite

POSTER_ROWS = [
    ("Zero-shot (BabyLM)", "blimp", "BLiMP"), ("", "supplement", "BLiMP suppl."), ("", "comps", "COMPS"),
    ("", "entity_tracking", "Entity tracking"), ("", "ewok", "EWoK"), ("", "reading_et", "Read. (eye track.)"),
    ("", "reading_spr", "Read. (self-paced)"), ("", "wug_adj", "Wug adj."), ("", "wug_past", "Wug past"),
    ("", "aoa", "AoA"),
    ("FT (Add'l)", "glue", "(Super)GLUE"), ("", "lexical_decision", "Lexical decision"), ("", "zorro", "Zorro"),
    ("", "dialogue_words", "Dia. MP (Words)"), ("", "dialogue_tokens", "Dia. MP (Tokens)"),
    ("Ours", "ours_words", "Dia. MP, our pairs (Words)"), ("", "ours_tokens", "Dia. MP, our pairs (Tokens)"),
]
# Why a poster row has no number when its task did not run (a model-specific reason, e.g. AoA's, comes in `notes`).
MISSING = {
    "comps": "n/a (data not available: --suite comps=DIR)",
    "wug_past": "n/a (data not available: --suite wug_past=DIR)",
    "ewok": "n/a (data not available: --suite ewok=PATH)",
    "lexical_decision": "n/a (data not available: --suite lexical_decision=FILE)",
    "aoa": "n/a (not run: --tasks aoa, on a run trained with --milestones)",
    "glue": "n/a (fine-tuning: export to HF, then the official eval_finetuning.sh; see README)",
}
PAPER_COLUMNS = {"llamalogue": "llamalogue", "dpo_natural": "DPO Natural.", "dpo_synthetic": "DPO Synth.",
                 "ppo_bleu": "PPO Bleu", "ppo_semsim": "PPO SemSim", "ppo_llm_score": "PPO LLM Score",
                 "ppo_confidence": "PPO Conf.", "baseline": "Baseline"}


def read_paper_results(path) -> dict[str, dict[str, float | None]]:
    """The poster's numbers (data/paper_results.csv): task -> column -> value (None where the poster has "—")."""
    with open(path, newline="") as f:
        return {row["task"]: {k: float(v) if v else None for k, v in row.items() if k != "task"}
                for row in csv.DictReader(f)}


def _cell(result: TaskResult | None, task: str, note: str | None) -> str:
    if result is None:
        return note or MISSING.get(task, "—")
    return f"{result.value:.2f} [{result.ci_low:.2f}, {result.ci_high:.2f}]"


def table_rows(results: dict[str, dict[str, TaskResult]]) -> list[tuple[str, str, str]]:
    """(section, task, label): the poster's rows (our own pairs only when they ran), then every other task that
    ran, in the order it ran."""
    ran = list(dict.fromkeys(task for per_task in results.values() for task in per_task))
    rows = [row for row in POSTER_ROWS if not row[1].startswith("ours_") or row[1] in ran]
    poster_tasks = {task for _, task, _ in POSTER_ROWS}
    extra = [task for task in ran if task not in poster_tasks]
    return rows + [("Other" if k == 0 else "", task, task) for k, task in enumerate(extra)]


def results_table(results: dict[str, dict[str, TaskResult]], paper: dict | None = None,
                  notes: dict[str, dict[str, str]] | None = None, protocol: str = "ours") -> str:
    """Markdown, tasks x models in the poster's layout: value [95% CI] or why there is none, each row with the
    protocol it was scored under (`protocol`); the poster's columns after ours if given."""
    models, notes = list(results), notes or {}
    header = ["", "Task", "Protocol", *models] + ([f"paper: {label}" for label in PAPER_COLUMNS.values()] if paper else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for section, task, label in table_rows(results):
        row = [section, label, protocol_of(task, protocol)]
        row += [_cell(results[m].get(task), task, notes.get(m, {}).get(task)) for m in models]
        if paper:
            row += ["" if paper.get(task, {}).get(c) is None else f"{paper[task][c]:g}" for c in PAPER_COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def words_cell(words: int | None) -> str:
    return "unknown" if words is None else f"{words / 1e6:.2f}M" if words >= 1e5 else f"{words:,}"


def details_table(results: dict[str, dict[str, TaskResult]]) -> str:
    """Markdown: per model and task, items, ties, skipped lines, over-long items, time and throughput."""
    lines = ["| Model | Task | metric | n | ties (rate) | skipped | > context | seconds | items/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, per_task in results.items():
        for task, r in per_task.items():
            rate = f"{r.ties} ({100 * r.ties / r.n:.2f}%)" if r.n else "0"
            speed = f"{r.n / r.seconds:.3g}" if r.seconds else "kept"
            lines.append(f"| {model} | {task} | {r.metric} | {r.n} | {rate} | {r.skipped} | {r.over_context} | "
                         f"{r.seconds:.1f} | {speed} |")
    return "\n".join(lines)


def comparisons_table(comparisons: list[dict]) -> str:
    lines = ["| Task | B − A | difference [95% CI] | p | test |", "|---|---|---|---|---|"]
    for c in comparisons:
        interval = f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" if "ci_low" in c else ""
        p = f"{c['p']:.3g}" if "p" in c else ""
        lines.append(f"| {c['task']} | {c['b']} − {c['a']} | {c['difference']:+.2f}{interval} | {p} | "
                     f"{c.get('test', '')} |")
    return "\n".join(lines)


def aoa_table(results: dict[str, dict[str, TaskResult]]) -> str:
    """Markdown: each model's AoA correlations with the children's, overall and by lexical category, and how many
    words had an AoA."""
    lines = ["| Model | words | Pearson r × 100 [95% CI] | Spearman ρ × 100 [95% CI] | n words |", "|---|---|---|---|---|"]
    for model, per_task in results.items():
        if "aoa" not in per_task:
            continue
        breakdown = per_task["aoa"].breakdown
        for subset in [k for k in breakdown if k not in ("checkpoints", "words")]:
            (r, r_low, r_high), (rho, rho_low, rho_high) = breakdown[subset]["pearson"], breakdown[subset]["spearman"]
            lines.append(f"| {model} | {subset} | {r:.1f} [{r_low:.1f}, {r_high:.1f}] | "
                         f"{rho:.1f} [{rho_low:.1f}, {rho_high:.1f}] | {breakdown[subset]['n']} |")
        counts = "; ".join(f"{k} {v}" for k, v in breakdown["words"].items())
        lines.append(f"| {model} | CDI words: {counts}; {len(breakdown['checkpoints'])} checkpoints | | | |")
    return "\n".join(lines)


def paradigm_table(results: dict[str, dict[str, TaskResult]], task: str) -> str | None:
    """Markdown: a minimal-pair task per paradigm (its groups), the first model's accuracy and each other model's
    difference to it, and the spread of each difference over the paradigms; None when the task has fewer than two.

    Why: a suite's accuracy is the mean over paradigms, and a model that drifts can move whole paradigms by tens of
    points in opposite directions; the spread says whether two models' totals differ by a few such flips."""
    models = [m for m in results if task in results[m] and results[m][task].metric == "accuracy"]
    # the breakdown's float entries are the paradigms; a dict is another grouping (BLiMP's fields), not shown here
    paradigms = [g for g, v in results[models[0]][task].breakdown.items() if isinstance(v, float)] if models else []
    if len(paradigms) < 2:
        return None
    first, others = models[0], models[1:]
    lines = ["| paradigm | " + " | ".join([first] + [f"{m} − {first}" for m in others]) + " |",
             "|---|" + "---|" * len(models)]
    differences = {m: [] for m in others}
    for paradigm in paradigms:
        base = results[first][task].breakdown[paradigm]
        row = [f"{base:.1f}"]
        for m in others:
            differences[m].append(results[m][task].breakdown[paradigm] - base)
            row.append(f"{differences[m][-1]:+.1f}")
        lines.append(f"| {paradigm} | " + " | ".join(row) + " |")
    if others:
        spread = [f"{float(np.std(differences[m], ddof=1)):.1f}" for m in others]
        lines.append("| sd of the differences over paradigms | | " + " | ".join(spread) + " |")
    return "\n".join(lines)


def write_report(out: Path, models: dict, suites: dict[str, Suite], results: dict[str, dict[str, TaskResult]],
                 comparisons: list[dict], settings: dict, paper: dict | None = None,
                 notes: dict[str, dict[str, str]] | None = None) -> str:
    """out/results.md (the poster's table, paired comparisons, details), out/results.json and out/results.png;
    returns the Markdown. notes: model -> task -> why that cell has no number."""
    report = [f"# Evaluation ({', '.join(results)})", "", "Value [95% bootstrap CI]: accuracy in %, Wug adj. and "
              "Wug past = Spearman ρ × 100, AoA = Pearson r × 100 (model vs children), reading = relative R² gain "
              "in %. Ties count as wrong. Protocol: ours = the official BabyLM pipeline's scoring; paper = the paper's own "
              "scripts (minicons' sum with its beginning-of-word correction; Zorro lowercased; lexical decision over "
              "every row), see llamalogue/evaluation/protocol.py.", "",
              results_table(results, paper, notes, settings.get("protocol", "ours"))]
    report += ["", "Words seen (BabyLM's word budget, since pretraining began; llamalogue.word_budget): " + "; ".join(
        f"{name} {words_cell(info.get('words_seen'))}" for name, info in models.items()) + "."]
    if paper:
        report += ["", "Paper columns: data/paper_results.csv, the poster's table with the cells the paper's repository "
                   "holds taken from its result CSVs (data/eval/README.md; its Wug adj. values besides the baseline's "
                   "look unscaled)."]
    if any("aoa" in per_task for per_task in results.values()):
        report += ["", "## AoA: model vs children", "", aoa_table(results)]
    if comparisons:
        report += ["", "## Paired comparisons", "", comparisons_table(comparisons)]
    for _, task, _ in table_rows(results):
        table = paradigm_table(results, task)
        if table:
            report += ["", f"## {task} by paradigm", "", table]
    report += ["", "## Details", "", details_table(results), ""]
    markdown = "\n".join(report)
    write_text(out / "results.md", markdown)
    write_text(out / "results.json", json.dumps({
        "models": models,
        "suites": {name: {"source": s.source, "items": len(s.items), "skipped": s.skipped, "problems": s.problems}
                   for name, s in suites.items()},
        "results": {m: {t: r.summary() for t, r in per_task.items()} for m, per_task in results.items()},
        "comparisons": comparisons,
        "notes": notes or {},
        "settings": settings,
    }, indent=2) + "\n")
    plot_results(results, out / "results.png")
    return markdown


def plot_results(results: dict[str, dict[str, TaskResult]], png_path) -> None:
    """One horizontal bar per model and task, with its 95% interval."""
    from llamalogue.runlog import plt

    rows = [(task, label) for _, task, label in table_rows(results)
            if any(task in per_task for per_task in results.values())]
    tasks, labels = [task for task, _ in rows], dict(rows)
    models = list(results)
    height = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(tasks) * max(1, len(models)) ** 0.5))
    for k, model in enumerate(models):
        ys, values, errors = [], [], [[], []]
        for t, task in enumerate(tasks):
            r = results[model].get(task)
            if r is None:
                continue
            ys.append(t + k * height)
            values.append(r.value)
            errors[0].append(max(0.0, r.value - r.ci_low))
            errors[1].append(max(0.0, r.ci_high - r.value))
        ax.barh(ys, values, height=height, xerr=errors, label=model, capsize=2)
    ax.set_yticks([t + height * (len(models) - 1) / 2 for t in range(len(tasks))], [labels[t] for t in tasks])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy % / correlation x100 / relative R² gain % (95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png_path)
    plt.close(fig)
