"""Checkpoints: a run's model, its resumable state and its tokenizer, saved and loaded (the rules of the folder that
holds them are llamalogue.run_dir's).

    RUN_DIR/config.json      what was trained and how: {"model": ModelConfig, "train": ..., "stage": ..., "scale": ...}
    RUN_DIR/checkpoint.pt    model weights plus whatever the stage needs to resume (optimizer, step, RNG, the reference log-probs...)
    RUN_DIR/tokenizer.model  the SentencePiece model the run was trained with

Writes are atomic: a crash or Ctrl-C while saving leaves the previous checkpoint intact, never a half-written one.
A damaged file (truncated, not JSON, fields missing) is a RunError naming it, not a traceback.
"""

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from llamalogue.model import Llama, ModelConfig
from llamalogue.old_runs import upgrade_record
from llamalogue.run_dir import CHECKPOINT, CONFIG, TOKENIZER, RunError, atomic_write, file_sha256, write_json
from llamalogue.tokenizer import Tokenizer


def unwrap(model):
    """The plain Llama inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(run_dir, model, tokenizer: Tokenizer, config: dict, state: dict | None = None) -> None:
    """Save weights + resumable state (optimizer, step, RNG...) and the run's config, atomically.

    The run's tokenizer is copied in once; a run is never given another tokenizer than the one it holds."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    tokenizer_path = run_dir / TOKENIZER
    if not tokenizer_path.exists():
        atomic_write(tokenizer_path, lambda tmp: shutil.copyfile(tokenizer.model_path, tmp))
    elif file_sha256(tokenizer_path) != file_sha256(tokenizer.model_path):
        raise RunError(f"{tokenizer_path}: the run holds another tokenizer than {tokenizer.model_path}; not saved")
    write_json(run_dir / CONFIG, {**config, "model": model.config.to_dict()})
    payload = {"model": model.state_dict(), **(state or {})}
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(payload, tmp))


def is_run_dir(path) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in (CONFIG, CHECKPOINT, TOKENIZER))


def _require_run_dir(run_dir: Path) -> None:
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir}: not a llamalogue run directory (expected {CONFIG}, {CHECKPOINT} and {TOKENIZER}; "
                       f"train one with `python train_lm.py --out {run_dir}`)")


def load_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    _require_run_dir(run_dir)
    try:
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(f"{run_dir / CONFIG}: unreadable ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise RunError(f"{run_dir / CONFIG}: not a llamalogue run config (no \"model\" settings)")
    return upgrade_record(config, run_dir)


def check_run(run_dir) -> None:
    """A RunError now, before any work, when the run's config or checkpoint is damaged (a cheap check: the config
    parses and the checkpoint's zip archive is whole; torch.save writes a zip whose directory is at its end)."""
    load_config(run_dir)
    _check_zip(Path(run_dir) / CHECKPOINT)


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path}: damaged or truncated (not a whole zip archive)")


def load_state(run_dir, device="cpu") -> dict:
    """The whole checkpoint dictionary (weights and resumable state)."""
    run_dir = Path(run_dir)
    _require_run_dir(run_dir)
    _check_zip(run_dir / CHECKPOINT)
    try:
        state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{run_dir / CHECKPOINT}: damaged or truncated ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{run_dir / CHECKPOINT}: not a llamalogue checkpoint (no model weights)")
    return state


def load_model(run_dir, device="cpu") -> tuple[Llama, Tokenizer]:
    """The trained model (in eval mode) and its tokenizer."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    try:
        model = Llama(ModelConfig(**config["model"]))
        model.load_state_dict(load_state(run_dir, device)["model"])
    except (TypeError, ValueError, RuntimeError) as error:  # fields missing or null; weights of another shape
        first_line = str(error).strip().splitlines()[0]
        raise RunError(f"{run_dir}: the checkpoint does not match its config ({first_line})") from None
    return model.to(device).eval(), Tokenizer(run_dir / TOKENIZER)
