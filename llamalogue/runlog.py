"""What every stage writes into its run folder: the config (JSON), a CSV log, JSONL records and PNG plots."""

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


class RunLog:
    def __init__(self, run_dir, resume: bool = False):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "log.csv"
        if not resume:  # a fresh run starts a fresh log; a resumed one appends to it
            self.csv_path.unlink(missing_ok=True)

    def write_config(self, config: dict, name: str = "run_config.json") -> None:
        (self.dir / name).write_text(json.dumps(config, indent=2, default=str) + "\n")

    def log(self, row: dict) -> None:
        """Append one row to log.csv; the first row written fixes the columns."""
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def jsonl(self, name: str, record: dict) -> None:
        with (self.dir / name).open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path, columns: list[str], png_path, title: str, x: str = "step") -> None:
    """One line per column against `x`; empty cells (e.g. validation only every N steps) are skipped."""
    rows = read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in columns:
        points = [(float(r[x]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
        if points:
            ax.plot(*zip(*points), label=column, marker="." if len(points) < 30 else None)
    ax.set_xlabel(x)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
