"""What every stage writes into its run folder besides its checkpoint: a CSV log, JSONL records and PNG plots."""

import csv
import json
import time
from pathlib import Path

import matplotlib

from llamalogue.run_dir import atomic_write, save_figure

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


class RunLog:
    """RUN/log.csv, one row per logged step, and RUN/*.jsonl records.

    A new run starts a new log. A resumed run (resume_step: the step of the checkpoint it goes on from) keeps the rows
    up to that step and drops the later ones, which the run is about to do again, and a row torn by a kill; so the
    log of a run killed and resumed reads like the log of a run never stopped."""

    def __init__(self, run_dir, resume_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "log.csv"
        if resume_step is None:
            self.csv_path.unlink(missing_ok=True)
        else:
            if self.csv_path.exists():
                self._keep_until(resume_step)
            for records in self.dir.glob("*.jsonl"):
                self._keep_records_until(records, resume_step)

    @staticmethod
    def _keep_records_until(path: Path, step: int) -> None:
        """A JSONL record with a "step" after the checkpoint's (PPO's training samples) is written again: dropped.
        Records without a step (a teacher cache) are kept; so is the file, untouched, when nothing is dropped."""
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

        def after(line: str) -> bool:
            try:
                record = json.loads(line)
            except ValueError:
                return True  # a line torn by a kill
            return isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step

        kept = [line for line in lines if not after(line)]
        if len(kept) < len(lines):
            atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))

    def _keep_until(self, step: int) -> None:
        with self.csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = [row for row in reader if None not in row and None not in row.values()
                    and row.get("step", "").isdigit() and int(row["step"]) <= step]
        if not columns:
            self.csv_path.unlink()
            return
        atomic_write(self.csv_path, lambda tmp: _write_rows(tmp, columns, rows))

    def log(self, row: dict) -> None:
        """Append one row to log.csv; the first row written fixes the columns: a later row's values go under the
        header's names whatever their order, a column the header lacks is dropped, one the row lacks left empty (a
        run resumed by a version that logs more columns keeps its log readable)."""
        new = not self.csv_path.exists()
        columns = list(row)
        if not new:
            with self.csv_path.open(newline="") as f:
                columns = next(csv.reader(f), columns)
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def jsonl(self, name: str, record: dict) -> None:
        with (self.dir / name).open("a") as f:
            f.write(json.dumps(record) + "\n")


class Window:
    """The sums of a log's metrics over the items (pairs, episodes) trained on since its last row, and how fast
    they went: a row logs their means."""

    def __init__(self, metrics):
        self.metrics = list(metrics)
        self.start()

    def start(self) -> None:
        self.sums, self.items, self.started = dict.fromkeys(self.metrics, 0.0), 0, time.time()

    def add(self, sums: dict, items: int) -> None:
        """A step's sums of the metrics over its `items` items."""
        self.sums = {metric: self.sums[metric] + sums[metric] for metric in self.metrics}
        self.items += items

    def close(self) -> tuple[dict, float]:
        """(the mean of each metric per item, items per second); the next window starts now."""
        means = {metric: value / self.items for metric, value in self.sums.items()}
        per_second = self.items / (time.time() - self.started)
        self.start()
        return means, per_second


def _write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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
    save_figure(fig, png_path)
    plt.close(fig)
