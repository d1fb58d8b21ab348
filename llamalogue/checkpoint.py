"""Run directories: where every stage keeps its model, its state and its logs.

    RUN_DIR/config.json      what was trained and how: {"model": ModelConfig, "train": ..., "stage": ..., "scale": ...}
    RUN_DIR/checkpoint.pt    model weights plus whatever the stage needs to resume (optimizer, scheduler, step, RNG)
    RUN_DIR/tokenizer.model  the SentencePiece model the run was trained with

Writes are atomic (write a temporary file, then os.replace): a crash or Ctrl-C while saving leaves the previous
checkpoint intact, never a half-written one.
"""

import json
import os
import shutil
from pathlib import Path

import torch

from llamalogue.model import Llama, ModelConfig
from llamalogue.tokenizer import Tokenizer

CONFIG, CHECKPOINT, TOKENIZER = "config.json", "checkpoint.pt", "tokenizer.model"


def _atomic_replace(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def unwrap(model):
    """The plain Llama inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(run_dir, model, tokenizer: Tokenizer, config: dict, state: dict | None = None) -> None:
    """Save weights + resumable state (optimizer, scheduler, step, RNG...) and the run's config, atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    config = {**config, "model": model.config.to_dict()}
    _atomic_replace(run_dir / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    if not (run_dir / TOKENIZER).exists() or os.path.getsize(run_dir / TOKENIZER) != os.path.getsize(tokenizer.model_path):
        _atomic_replace(run_dir / TOKENIZER, lambda p: shutil.copyfile(tokenizer.model_path, p))
    payload = {"model": model.state_dict(), **(state or {})}
    _atomic_replace(run_dir / CHECKPOINT, lambda p: torch.save(payload, p))


def is_run_dir(path) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in (CONFIG, CHECKPOINT, TOKENIZER))


def _require_run_dir(run_dir: Path) -> None:
    if not is_run_dir(run_dir):
        raise FileNotFoundError(
            f"{run_dir}: not a llamalogue run directory (expected {CONFIG}, {CHECKPOINT} and {TOKENIZER}; "
            f"train one with `python train_lm.py --out {run_dir}`)"
        )


def load_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    _require_run_dir(run_dir)
    return json.loads((run_dir / CONFIG).read_text())


def load_state(run_dir, device="cpu") -> dict:
    """The whole checkpoint dictionary (weights and resumable state)."""
    run_dir = Path(run_dir)
    _require_run_dir(run_dir)
    return torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)


def load_model(run_dir, device="cpu") -> tuple[Llama, Tokenizer]:
    """The trained model (in eval mode) and its tokenizer."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = Llama(ModelConfig(**config["model"]))
    model.load_state_dict(load_state(run_dir, device)["model"])
    return model.to(device).eval(), Tokenizer(run_dir / TOKENIZER)
