"""Side by side, what RL runs (PPO and the critic-free algorithms) did: reward, KL and diversity start -> end, the
training reward model's raw score beside the held-out judge's on the same replies (reward hacking: the first rising,
the second flat; "—" for a run without --judge), the share of generic replies, and the 10 sample replies
before -> after. An interaction run (python -m llamalogue.interaction) has samples without rewards and none of
these columns: its replies before -> after alone.

    python scripts/ppo_report.py runs/ppo-confidence runs/ppo-pmi runs/ppo-preference > ppo_report.md
    python scripts/ppo_report.py runs/interaction

Reads each run's summary.json (means over the first and last tenth of the steps) and samples.jsonl (the same 10
prompts answered before and after training, with the run's sampling settings and a fixed seed).
"""

import argparse
import json
import sys
from pathlib import Path

from llamalogue.cli import fail

COLUMNS = [("reward_mean", "task reward", 3), ("kl", "KL (nats/reply)", 2), ("distinct_frac", "distinct_frac", 2),
           ("top_reply_frac", "top_reply_frac", 2), ("reply_len", "reply tokens", 1),
           ("reward_raw_mean", "training reward (raw)", 3), ("judge_mean", "held-out judge", 3),
           ("generic_share", "generic share", 2)]


def cell(values: dict | None, digits: int) -> str:
    """start → end; — for a column the run did not log (or a mean over no value, None)."""
    if not values or None in (values["start"], values["end"]):
        return "—"
    return f"{values['start']:.{digits}f} → {values['end']:.{digits}f}"


def reply(sample: dict) -> str:
    """A sample's reply, with its task reward when the run scored one."""
    reward = sample.get("reward")
    return sample["reply"] if reward is None else f"{sample['reply']} ({reward:.2f})"


def read_run(run: Path) -> tuple[dict, list[dict]]:
    summary_path, samples_path = run / "summary.json", run / "samples.jsonl"
    for path in (summary_path, samples_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (is {run} a finished RL or interaction run?)")
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    return json.loads(summary_path.read_text()), samples


def report(runs: list[Path]) -> str:
    lines = ["| run | steps | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    details = []
    for run in runs:
        summary, samples = read_run(run)
        cells = [cell(summary.get(key), digits) for key, _, digits in COLUMNS]
        lines.append(f"| {run.name} | {summary['steps']} | " + " | ".join(cells) + " |")
        before = [s for s in samples if s["phase"] == "before"]
        after = {s["prompt"]: s for s in samples if s["phase"] == "after"}
        details += ["", f"### {run.name}", "", "| caregiver | before | after |", "|---|---|---|"]
        for sample in before:
            later = after.get(sample["prompt"], {"reply": "—"})
            details.append(f"| {sample['prompt']} | {reply(sample)} | {reply(later)} |")
    return "\n".join(lines + details) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="RL or interaction run directories")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(report(args.runs))
    except FileNotFoundError as error:
        fail(error)


if __name__ == "__main__":
    main()
