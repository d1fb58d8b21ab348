"""A run's learning curve: the tasks scored at each of its milestone checkpoints (`evaluate.py --milestones`), as the
paper scored dialogue minimal pairs, Zorro and lexical decision at each of its 20 pretraining checkpoints.

    OUT/milestones.csv   run, checkpoint, tokens, words, task, protocol, value, ci_low, ci_high, n
    OUT/milestones.png   one panel per task: the value over the training tokens seen (log scale), one line per run

The milestones are those `train_lm.py --milestones` kept (RUN/milestones/chck_*, by training tokens), then the run's
own final checkpoint. Words seen: BabyLM counts a model's input in words and names its checkpoints by them, so each
checkpoint's words seen (its record's, llamalogue.word_budget) stand beside its tokens.
"""

import csv
from pathlib import Path

from llamalogue.checkpoint import load_config
from llamalogue.evaluation.lm import load_lm
from llamalogue.evaluation.protocol import protocol_of
from llamalogue.evaluation.tasks import evaluate_suite
from llamalogue.pretraining.milestones import find_milestones
from llamalogue.run_dir import save_figure
from llamalogue.runlog import plt

COLUMNS = ["run", "checkpoint", "tokens", "words", "task", "protocol", "value", "ci_low", "ci_high", "n"]


def checkpoints(run) -> list[tuple[int, Path]]:
    """(training tokens, run directory) of every milestone, then the run itself; ValueError for a run without any."""
    found = find_milestones(run)
    if not found:
        raise ValueError(f"--milestones: {run} has no milestone checkpoints (train it with `python train_lm.py "
                         f"--milestones ...`)")
    tokens = load_config(run)["tokens"]  # None: a run that did not record it, known by its milestones only
    return found + ([(tokens, Path(run))] if tokens and tokens > found[-1][0] else [])


def sweep(run, suites: dict, protocol: str, batch_size: int, replicates: int, device: str | None) -> list[dict]:
    """One row per (checkpoint, task): the task's value with its 95% interval."""
    rows = []
    for tokens, path in checkpoints(run):
        words = load_config(path)["words_seen"]
        lm = load_lm(path, device)
        for suite in suites.values():
            for result in evaluate_suite(lm, suite, batch_size, "sum", replicates):
                rows.append({"run": Path(run).name, "checkpoint": path.name, "tokens": tokens,
                             "words": "" if words is None else words, "task": result.task,
                             "protocol": protocol_of(result.task, protocol), "value": round(result.value, 4),
                             "ci_low": round(result.ci_low, 4), "ci_high": round(result.ci_high, 4), "n": result.n})
                print(f"{path.name:>14} {tokens:>13,} tokens  {result.task:<16} {result.value:7.2f} "
                      f"[{result.ci_low:.2f}, {result.ci_high:.2f}]", flush=True)
    return rows


def write_curves(out: Path, rows: list[dict]) -> None:
    with (out / "milestones.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for run in dict.fromkeys(row["run"] for row in rows):
            points = [row for row in rows if row["task"] == task and row["run"] == run]
            ax.plot([p["tokens"] for p in points], [p["value"] for p in points], marker=".", label=run)
            ax.fill_between([p["tokens"] for p in points], [p["ci_low"] for p in points],
                            [p["ci_high"] for p in points], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens seen")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    save_figure(fig, out / "milestones.png")
    plt.close(fig)
