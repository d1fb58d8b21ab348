"""The run directory: the rules every training stage (pretraining, DPO, the reward model, RL, interaction) shares,
written once.

    RUN/config.json      the run's record: its stage, its settings ("train"), its inputs ("inputs": the data folder
                         and the SHA-256 of its tokenizer, the --init run...) and, once saved, the model's shape
    RUN/checkpoint.pt    weights and what the stage needs to resume (llamalogue.checkpoint)
    RUN/tokenizer.model  the SentencePiece model the run was trained with
    RUN/log.csv          one row per logged step (llamalogue.runlog.RunLog)

The rules (`open_run`, `check_inputs` and `clear_run` apply 1-3, and llamalogue.run_shell applies them to every
training stage):

1. A new run needs a folder that does not exist yet, is empty, or holds a run of ours (config.json with a "stage").
   A folder that holds other files is never taken: those files are not ours to replace.
2. A folder that holds a checkpoint is replaced only with --overwrite, and --overwrite empties it first (teacher
   caches excepted, `KEPT_ON_OVERWRITE`), so no old checkpoint, log or plot stays beside the new run's files, even
   when the new run is killed before its first save. Never the --init run or the data folder (`protected`).
3. --resume needs the run's checkpoint, and goes on only with the inputs the run recorded: the same stage, the same
   data folder, the same tokenizer (by SHA-256)... A different one is refused in one line, and nothing is written.
4. Every file is written whole or not at all (`atomic_write`: a temporary file beside it, then os.replace).
5. Ctrl-C (`StopOnCtrlC`) asks the loop to finish its step, save and stop; a second Ctrl-C kills as usual.
"""

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

from llamalogue.old_runs import upgrade_record

CONFIG, CHECKPOINT, TOKENIZER = "config.json", "checkpoint.pt", "tokenizer.model"
KEPT_ON_OVERWRITE = frozenset({"teacher.jsonl"})  # caches of teacher replies: valid whichever run reads them
PATH_INPUTS = frozenset({"data", "init", "pairs_file", "prompts"})  # the same file or folder however it is written
RUN_SUBFOLDERS = frozenset({"milestones", "steps", "predictions"})  # the only folders a run writes inside its own:
# copies of the weights on the way (pretraining's milestones, RL's --keep-every steps) and per-item predictions


class RunError(ValueError):
    """A run that cannot start or go on; the message is one line naming the folder, file or argument at fault.
    (A ValueError: bad input, which every command line reports in one line.)"""


def atomic_write(path, write) -> None:
    """write(tmp_path) fills a temporary file beside `path`, which then replaces `path` in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def save_figure(fig, path) -> None:
    """A matplotlib figure as PNG (or the format `path` names), written whole."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))


def user_cache(name: str) -> Path | None:
    """A path in llamalogue's per-user cache (LLAMALOGUE_CACHE, default ~/.cache/llamalogue; set empty: no cache),
    which holds only what can always be made again and is kept to save time -- speed measurements
    (llamalogue.measured_speed), teachers converted from GGUF (llamalogue.hf), evaluated runs' scores
    (llamalogue.evaluation.score_cache). Never a run's input or output."""
    root = os.environ.get("LLAMALOGUE_CACHE")
    if root == "":
        return None
    return (Path(root) if root else Path.home() / ".cache" / "llamalogue") / name


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(run_dir) -> dict | None:
    """RUN/config.json when it is a record of ours (a JSON object with a "stage"), else None."""
    try:
        record = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return upgrade_record(record, run_dir) if isinstance(record, dict) and "stage" in record else None


def _same_path(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def resume_record(out_dir, stage: str | None = None) -> dict:
    """The record of the run in out_dir, which --resume continues; RunError when there is none to continue."""
    config = Path(out_dir) / CONFIG
    if not config.is_file() or not (Path(out_dir) / CHECKPOINT).is_file():
        raise RunError(f"--resume: {out_dir} holds no checkpoint to resume")
    record = read_record(out_dir)
    if record is None or not isinstance(record.get("train"), dict):
        raise RunError(f"--resume: {config}: damaged or not a llamalogue run record (no \"train\" settings)")
    if stage and record["stage"] != stage:
        raise RunError(f"--resume: {out_dir} is a {record['stage']} run, not a {stage} run")
    return record


def check_inputs(out_dir, record: dict, inputs: dict) -> None:
    """A resumed run goes on only with what it was made from: every input given must equal the recorded one."""
    for name, value in inputs.items():
        saved = record["inputs"].get(name)
        if value is not None and saved is not None and str(saved) != str(value) and not (
                name in PATH_INPUTS and _same_path(saved, value)):
            raise RunError(f"--resume {out_dir}: the run was made from {name} {saved}, not {value}; "
                           f"resume it with its own inputs or start a new --out")
    sha = inputs.get("tokenizer_sha256")
    if sha and (Path(out_dir) / TOKENIZER).is_file() and file_sha256(Path(out_dir) / TOKENIZER) != sha:
        raise RunError(f"--resume {out_dir}: its {TOKENIZER} is not the tokenizer of the data given "
                       f"({inputs.get('data')})")


def open_run(out_dir, stage: str, resume: bool, overwrite: bool, protected: dict | None = None,
             options: tuple[str, ...] = ("--resume", "--overwrite")) -> dict | None:
    """Check rules 1-3 for a run of `stage` in out_dir; nothing is written. The inputs of a resumed run are checked
    by check_inputs, and clear_run prepares a new run's folder, once the stage has read its inputs (in rank 0 only).

    protected: {"--init": RUN, "--data": DIR}, folders --out must neither be nor hold. options: the flags the command
    has, named in the messages. Returns the saved record when resuming, None for a new run."""
    out_dir = Path(out_dir)
    for option, path in (protected or {}).items():
        if path is not None and _same_path(out_dir, path):
            raise RunError(f"--out {out_dir}: is the {option} folder; write the run elsewhere")
        if path is not None and Path(path).resolve().is_relative_to(out_dir.resolve()):
            raise RunError(f"--out {out_dir}: holds the {option} folder {path}; write the run elsewhere")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir}: is a file, not a folder")
    if resume:
        return resume_record(out_dir, stage)
    record = read_record(out_dir) if out_dir.is_dir() else None
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in KEPT_ON_OVERWRITE) if out_dir.is_dir() else []
    if others and record is None:
        raise RunError(f"--out {out_dir}: holds files that are not a llamalogue run ({', '.join(others[:3])}"
                       f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder")
    foreign = [name for name in others if (out_dir / name).is_dir() and name not in RUN_SUBFOLDERS]
    if foreign:  # an export, an evaluation, another run kept inside this one: not ours to delete
        raise RunError(f"--out {out_dir}: holds the folder {out_dir / foreign[0]}, which is not part of the run; "
                       f"move it or choose another --out")
    if (out_dir / CHECKPOINT).is_file() and not overwrite:
        ways = [f"pass {flag} to {verb} it" for flag, verb in (("--resume", "continue"), ("--overwrite", "replace"))
                if flag in options]
        raise RunError(f"--out {out_dir}: already holds a checkpoint; {', '.join(ways + ['choose another --out'])}")
    return None


def clear_run(out_dir) -> None:
    """Make out_dir an empty folder for a new run: the files of the run it held are deleted (open_run has checked
    that it held nothing else), KEPT_ON_OVERWRITE excepted. A record without checkpoint is a run killed before it
    saved: replaced as well."""
    out_dir = Path(out_dir)
    for path in out_dir.iterdir() if out_dir.is_dir() else []:
        if path.name in RUN_SUBFOLDERS and path.is_dir():
            shutil.rmtree(path)
        elif path.name not in KEPT_ON_OVERWRITE and not path.is_dir():
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def data_inputs(data_dir) -> dict:
    """The record of a corpus folder a run trains on: its path and its tokenizer's SHA-256."""
    return {"data": str(Path(data_dir).resolve()), "tokenizer_sha256": file_sha256(Path(data_dir) / TOKENIZER)}


def recorded_data(record: dict) -> Path | None:
    """The corpus folder a pretraining run was trained on."""
    data = record["inputs"].get("data")
    return Path(data) if data else None


def init_inputs(init_dir) -> dict:
    """The record of the run a stage starts from: its path and its checkpoint's SHA-256 (a retrained --init is
    another reference model, which a resumed PPO run must not be paired with)."""
    return {"init": str(Path(init_dir).resolve()), "init_sha256": file_sha256(Path(init_dir) / CHECKPOINT)}


class StopOnCtrlC:
    """`with StopOnCtrlC() as stop:` ... `if stop.requested:` save and leave the loop.

    The first Ctrl-C (SIGINT) only sets the flag, so the loop finishes its step and saves a checkpoint that
    --resume continues; the handler is then the previous one again, so a second Ctrl-C interrupts at once."""

    requested = False

    def __enter__(self):
        self.requested = False
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, *_):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *_):
        signal.signal(signal.SIGINT, self.previous)
