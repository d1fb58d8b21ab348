"""Pretraining on real dialogue: the data pipeline, the learning-rate schedule, exact resumption, Ctrl-C, NaN
handling, the CLI and DDP."""

import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_lm
from llamalogue.checkpoint import load_model, load_state
from llamalogue.corpus.dialogue_files import read_documents
from llamalogue.model import Llama, ModelConfig
from llamalogue.pretraining.data import Windows, tokenized_split
from llamalogue.pretraining.fused_loss import next_token_loss
from llamalogue.pretraining.config import TrainConfig
from llamalogue.pretraining.data import PretrainingInputs
from llamalogue.pretraining.training import train
from llamalogue.run_dir import RunError
from llamalogue.run_shell import RunFolder
from llamalogue.schedules import learning_rate
from llamalogue.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """tiny models train fastest on one thread, and far faster on a machine busy with other jobs (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> dict:
    """The options of a `tiny` run, without samples unless asked for."""
    return {"preset": "tiny", "samples": 0, **overrides}


def new_run(out: Path, data: Path, options: dict) -> dict:
    """A new run in `out` on the corpus `data` (as train_lm.py --data DATA --out OUT)."""
    return train(RunFolder(out), PretrainingInputs(data=data), options)


def resume_run(out: Path, options: dict) -> dict:
    """The run in `out` goes on with its own data (as train_lm.py --resume without --data)."""
    return train(RunFolder(out, resume=True), PretrainingInputs(), options)


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_triplets_are_packed_as_bos_text_eos(corpus_small_build):
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    tokens = tokenized_split(corpus_small_build, "val", tokenizer)
    documents = read_documents(corpus_small_build / "val.txt")
    assert tokens.dtype == np.uint16 and (corpus_small_build / "val.bin").exists()
    assert (tokens == tokenizer.bos_id).sum() == len(documents) == (tokens == tokenizer.eos_id).sum()
    first = tokens[: np.argmax(tokens == tokenizer.eos_id) + 1].tolist()
    assert first == [tokenizer.bos_id, *tokenizer.encode(documents[0]), tokenizer.eos_id]
    windows = Windows(tokens, seq_len=16, device="cpu")
    x, y = windows.batch(torch.tensor([0, 1]))
    assert x.shape == (2, 16) and torch.equal(x[0, 1:], y[0, :-1]) and y[0, -1] == x[1, 0]  # every target once


def test_fused_loss_gives_the_cross_entropy_of_the_logits_and_its_gradients():
    torch.manual_seed(0)
    model = Llama(ModelConfig.preset("tiny", vocab_size=2**16))  # 600 rows: two chunks of 512 rows
    x, y = torch.randint(0, 2**16, (2, 2, 300)).unbind(0)
    exact = copy.deepcopy(model).double()  # the reference in float64: fp32 cross_entropy is itself ~1e-8 off
    expected = F.cross_entropy(exact(x).flatten(0, 1), y.flatten())
    expected.backward()
    loss = next_token_loss(model, x, y)
    (2 * loss).backward()  # the incoming gradient scales both gradients
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for (name, p), q in zip(model.named_parameters(), exact.parameters()):
        assert torch.allclose(p.grad.double(), 2 * q.grad, rtol=1e-4, atol=5e-8), name


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_learning_rate_warms_up_to_the_peak_then_decays_to_the_floor(decay):
    def lr(step, min_ratio=0.1):
        return learning_rate(step, 110, peak=2.0, warmup_steps=10, decay=decay, min_ratio=min_ratio)

    assert [lr(s) for s in (0, 4, 9)] == pytest.approx([0.2, 1.0, 2.0])  # peak * (step + 1) / warmup
    assert lr(10) == pytest.approx(2.0)  # progress 0: the peak
    assert lr(35) == pytest.approx(2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2 if decay == "cosine"
                                          else 0.1 + 0.9 * 0.75))  # progress 1/4
    assert lr(60) == pytest.approx(2.0 * 0.55)  # progress 1/2: both shapes are halfway
    assert lr(110) == pytest.approx(0.2) and lr(500) == pytest.approx(0.2)  # the floor, peak * min_ratio, and no lower
    assert lr(110, min_ratio=0.0) == pytest.approx(0.0, abs=1e-12) and lr(60, min_ratio=0.0) == pytest.approx(1.0)
    assert all(lr(s) > lr(s + 1) for s in range(10, 110))  # falls at every step after the warmup


def test_an_unknown_decay_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match="'step'.*cosine, linear"):
        learning_rate(50, 100, 1.0, 10, decay="step")


def test_training_learns_and_writes_its_run_folder(corpus_small_build, tmp_path):
    summary = new_run(tmp_path, corpus_small_build, tiny(max_steps=40, samples=2))
    log = rows(tmp_path)
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s"} <= set(log[0])
    val = [float(r["val_loss"]) for r in log if r["val_loss"]]
    vocab = Tokenizer(corpus_small_build / "tokenizer.model").vocab_size
    assert val[-1] < val[0] < np.log(vocab) + 0.5  # from about uniform guessing to better
    assert summary["step"] == 40 and summary["val_loss"] == pytest.approx(val[-1], abs=1e-4)
    config = TrainConfig.from_preset("tiny")
    total_steps = json.loads((tmp_path / "config.json").read_text())["total_steps"]
    assert [float(r["lr"]) for r in log] == pytest.approx(  # the rate each logged step was taken with
        [learning_rate(int(r["step"]) - 1, total_steps, config.lr, config.warmup_steps, "cosine", config.min_lr_ratio)
         for r in log], rel=1e-3)
    for name in ("config.json", "checkpoint.pt", "tokenizer.model", "loss.png", "samples.txt"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "samples.txt").read_text().count("*CHI:") == 2


def test_n_steps_then_resume_n_steps_equals_2n_steps_bitwise(corpus_small_build, tmp_path):
    config = tiny(dropout=0.1, eval_every=4)  # dropout: the RNG state must come back too
    new_run(tmp_path / "straight", corpus_small_build, {**config, "max_steps": 12})
    new_run(tmp_path / "resumed", corpus_small_build, {**config, "max_steps": 6})
    resume_run(tmp_path / "resumed", {"max_steps": 12})  # its own data and settings
    straight, resumed = load_state(tmp_path / "straight"), load_state(tmp_path / "resumed")
    assert resumed["step"] == straight["step"] == 12
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    validation = [{r["step"]: r["val_loss"] for r in rows(tmp_path / run) if r["val_loss"]}
                  for run in ("straight", "resumed")]
    assert validation[0]["8"] == validation[1]["8"] and validation[0]["12"] == validation[1]["12"]


def test_a_remembered_step_time_chooses_the_dtype_but_the_budget_is_timed_now(corpus_small_build, tmp_path,
                                                                             monkeypatch):
    """A step time remembered from another run (perhaps measured while another job ran: 4 s here) still chooses
    the dtype, but the steps that fit in --minutes come from a step timed when the run starts (0.25 s here)."""
    from llamalogue.pretraining import speed
    monkeypatch.setattr(speed, "faster", lambda probe, contenders, device: {
        "choice": "float32", "seconds": {"float32": 4.0}, "measured": False})
    timed_now = []
    monkeypatch.setattr(speed, "fastest_calls", lambda contenders, rounds, device: timed_now.append(
        list(contenders)) or {name: 0.25 for name in contenders})
    new_run(tmp_path, corpus_small_build, tiny(dtype="float32", minutes=6 * 0.5 / 60, max_steps=2))
    record = json.loads((tmp_path / "config.json").read_text())
    assert timed_now == [["float32"]] and record["total_steps"] == 12
    assert "12 steps of 0.250 s fit" in record["speed"]["why"]


def test_a_time_budget_ends_the_schedule_at_the_steps_that_fit_and_resume_keeps_it(corpus_small_build, tmp_path,
                                                                                    monkeypatch):
    """--minutes: the steps that fit at the measured step time (here said to be 0.5 s) end the schedule, and the
    epochs they make are recorded, so that a resumed run goes on to the same end (not to a new budget's)."""
    from llamalogue.pretraining import speed
    monkeypatch.setattr(speed, "faster", lambda probe, contenders, device: {
        "choice": "float32", "seconds": {"float32": 0.5}, "measured": True})
    summary = new_run(tmp_path, corpus_small_build, tiny(dtype="float32", minutes=6 * 0.5 / 60, max_steps=4))
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["total_steps"] == 6 and summary["step"] == 4 and "6 steps of 0.500 s fit" in record["speed"]["why"]
    epoch_steps = round(6 / record["train"]["epochs"])
    assert epoch_steps > 6 and round(record["train"]["epochs"] * epoch_steps) == 6  # fewer than one epoch
    monkeypatch.setattr(speed, "faster", lambda probe, contenders, device: {  # now twice as fast: not re-planned
        "choice": "float32", "seconds": {"float32": 0.25}, "measured": False})
    assert resume_run(tmp_path, {})["step"] == 6
    log, config = rows(tmp_path), TrainConfig.from_preset("tiny")
    assert float(log[-1]["lr"]) == pytest.approx(learning_rate(5, 6, config.lr, config.warmup_steps, "cosine",
                                                               config.min_lr_ratio), rel=1e-3)


def test_resume_refuses_a_different_configuration(corpus_small_build, tmp_path):
    new_run(tmp_path, corpus_small_build, tiny(max_steps=2))
    with pytest.raises(RunError, match="lr=0.003, not 0.1"):
        resume_run(tmp_path, tiny(max_steps=4, lr=0.1))
    with pytest.raises(RunError, match="lr=0.003, not 0.1"):
        resume_run(tmp_path, {"lr": 0.1})
    with pytest.raises(RunError, match="--resume"):  # nor is a finished run overwritten by accident
        new_run(tmp_path, corpus_small_build, tiny(max_steps=4))


def test_ctrl_c_saves_the_step_exits_130_and_resume_continues(corpus_small_build, tmp_path, monkeypatch):
    forward, calls = Llama.forward, []

    def forward_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and self.training:  # during step 3
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Llama, "forward", forward_then_ctrl_c)
    argv = ["--preset", "tiny", "--data", str(corpus_small_build), "--out", str(tmp_path), "--threads", "1"]
    assert train_lm.main([*argv, "--max-steps", "8"]) == 130  # 130: stopped by SIGINT, as a shell reports it
    assert load_state(tmp_path)["step"] == 3
    monkeypatch.setattr(Llama, "forward", forward)
    assert train_lm.main(["--resume", "--out", str(tmp_path), "--max-steps", "8", "--threads", "1"]) == 0
    assert load_state(tmp_path)["step"] == 8


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus_small_build, tmp_path, monkeypatch,
                                                             no_speed_probe):
    forward, calls = Llama.forward, []

    def forward_blowing_up(self, *args, **kwargs):
        calls.append(1)
        logits = forward(self, *args, **kwargs)
        return logits * float("nan") if len(calls) > 5 and self.training else logits

    monkeypatch.setattr(Llama, "forward", forward_blowing_up)
    with pytest.raises(RunError, match="loss is nan.*last good checkpoint"):
        new_run(tmp_path, corpus_small_build, tiny(max_steps=20, eval_every=5, log_every=1))
    state = load_state(tmp_path)
    assert state["step"] == 5 and all(torch.isfinite(w).all() for w in state["model"].values())


def test_cli_trains_and_explains_bad_arguments_in_one_line(corpus_small_build, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_lm.main(["--preset", "tiny", "--data", str(corpus_small_build), "--out", str(out), "--max-steps", "3",
                          "--threads", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "preset tiny" in stdout and "training tokens" in stdout and "epochs" in stdout
    assert [r["step"] for r in rows(out)][-1] == "3"
    with pytest.raises(SystemExit) as exit_:
        train_lm.main(["--preset", "tiny", "--out", str(tmp_path / "none"), "--resume"])
    assert exit_.value.code == 2
    refused = capsys.readouterr().err.strip()
    assert refused.count("\n") == 0 and "no checkpoint" in refused


def test_a_larger_model_trains_with_the_presets_optimisation_and_resumes_as_it(corpus_small_build, tmp_path,
                                                                                 capsys):
    out = tmp_path / "run"
    command = ["--preset", "tiny", "--model", "small", "--data", str(corpus_small_build), "--out", str(out),
               "--batch-size", "2", "--threads", "1"]
    assert train_lm.main([*command, "--max-steps", "2"]) == 0
    assert "preset tiny, model small" in capsys.readouterr().out
    model, _ = load_model(out)
    assert model.config == ModelConfig.preset("small", vocab_size=model.config.vocab_size)  # small's size ...
    train = json.loads((out / "config.json").read_text())["train"]
    tiny = TrainConfig.from_preset("tiny")
    assert (train["lr"], train["warmup_steps"]) == (tiny.lr, tiny.warmup_steps)  # ... with tiny's schedule
    assert train_lm.main(["--resume", "--out", str(out), "--max-steps", "3", "--threads", "1"]) == 0
    assert load_model(out)[0].config == model.config and [r["step"] for r in rows(out)][-1] == "3"
    with pytest.raises(SystemExit):
        train_lm.main([*command, "--model", "huge", "--out", str(tmp_path / "none")])
    assert "--model" in capsys.readouterr().err


def test_prepare_only_tokenizes_the_data_and_trains_nothing(corpus_small_build, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("tokenizer.model", "train.txt", "val.txt"):
        (data / name).write_bytes((corpus_small_build / name).read_bytes())
    assert train_lm.main(["--data", str(data), "--prepare-only"]) == 0
    tokens = {split: np.fromfile(data / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")}
    printed = capsys.readouterr().out
    assert f"{data}: train.bin {len(tokens['train']):,} tokens, val.bin {len(tokens['val']):,} tokens" in printed
    assert sorted(p.name for p in data.iterdir()) == ["tokenizer.model", "train.bin", "train.txt", "val.bin", "val.txt"]


def test_two_processes_train_like_one_with_the_double_batch(corpus_small_build, tmp_path):
    """torchrun + gloo on CPU: DDP averages the gradients of two half batches = the gradient of the whole batch.
    (The one test that needs real processes: torchrun starts them.)"""
    common = ["--preset", "tiny", "--data", str(corpus_small_build), "--max-steps", "4", "--eval-every", "4",
              "--dtype", "float32", "--threads", "1"]  # bf16 rounding would magnify the different summation order
    assert train_lm.main([*common, "--out", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train_lm.py", *common, "--out", str(tmp_path / "two"), "--batch-size", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    # A worker's own error comes first in stderr, torchrun's summary of the failure last: show both.
    assert two.returncode == 0, two.stderr[:3000] + "\n...\n" + two.stderr[-1500:]
    assert "2 process(es)" in two.stdout
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
        assert float(a["val_loss"] or 0) == pytest.approx(float(b["val_loss"] or 0), abs=1e-4)
