"""Fast paths chosen by measurement (llamalogue.measured_speed, llamalogue.pretraining.speed): the faster contender
wins, the choice is remembered per machine, and a run records what it chose."""

import json
import time

import pytest
import torch

from llamalogue.measured_speed import faster, machine_key, recall, remember
from llamalogue.model import Llama, ModelConfig
from llamalogue.pretraining import speed


def counting(delay: float, calls: list):
    def work():
        calls.append(delay)
        time.sleep(delay)
    return work


def test_the_faster_contender_wins_and_is_remembered_for_this_machine(tmp_path, monkeypatch):
    cache = tmp_path / "speed.json"
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    calls = []
    first = faster("toy work", {"slow": counting(0.03, calls), "quick": counting(0.001, calls)})
    assert first["choice"] == "quick" and first["measured"]
    assert first["seconds"]["slow"] > first["seconds"]["quick"]
    assert len(calls) == 2 * 3  # a warm-up and two timed rounds each
    key = f"toy work @ {machine_key('cpu')}"
    assert json.loads(cache.read_text())[key] == first["seconds"]

    again = faster("toy work", {"slow": counting(0.03, calls), "quick": counting(0.001, calls)})
    assert again == {**first, "measured": False} and len(calls) == 6  # remembered: nothing run again
    other = faster("other work", {"slow": counting(0.03, calls), "quick": counting(0.001, calls)})
    assert other["measured"] and len(json.loads(cache.read_text())) == 2  # another probe, another entry


def test_a_damaged_or_disabled_memory_only_means_measuring_again(tmp_path, monkeypatch):
    cache = tmp_path / "speed.json"
    cache.write_text("{not json")
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    calls = []
    assert faster("toy", {"a": counting(0.0, calls), "b": counting(0.01, calls)})["choice"] == "a"
    assert json.loads(cache.read_text())  # rewritten whole
    monkeypatch.setenv("LLAMALOGUE_CACHE", "")  # no memory at all
    assert faster("toy", {"a": counting(0.0, calls), "b": counting(0.01, calls)})["measured"]
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path / "file" / "inside"))
    (tmp_path / "file").write_text("a file where a folder should be")
    assert faster("toy", {"a": counting(0.0, calls), "b": counting(0.01, calls)})["choice"] == "a"


def test_probes_leave_the_model_and_the_random_stream_as_they_were():
    """Timing steps of the run's own model must not change its training: no gradients left, no random draws
    taken from the run's stream."""
    torch.manual_seed(0)
    model = Llama(ModelConfig.preset("tiny", vocab_size=300, dropout=0.1))
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    chosen = speed.choose_speed(model, (2, 16), "auto", "auto", steps_left=10, device="cpu")
    assert torch.equal(torch.rand(3), expected)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert chosen["dtype"] in ("float32", "bfloat16") and set(chosen["step_seconds"]) == {"float32", "bfloat16"}
    assert chosen["compile"] is False and "under the" in chosen["why"]  # 10 tiny steps: never worth trying


@pytest.mark.parametrize("mode, steps, expected", [("on", 1, True), ("off", 10**9, False), ("auto", 10**9, "try")])
def test_compile_is_taken_by_hand_or_tried_when_the_run_is_long_enough(mode, steps, expected):
    model = Llama(ModelConfig.preset("tiny", vocab_size=300))
    chosen = speed.choose_speed(model, (2, 16), "float32", mode, steps_left=steps, device="cpu")
    assert chosen["compile"] == expected and chosen["dtype"] == "float32"


def test_a_compile_measured_on_this_machine_decides_by_the_time_it_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    model = Llama(ModelConfig.preset("tiny", vocab_size=300))
    eager = speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=1, device="cpu")["step_seconds"]["float32"]
    probe = f"compiled (float32) {speed.probe_name(model, (2, 16))}"
    remember(probe, {"compile_s": 100 * eager, "step_s": eager / 2})  # half a step saved per step: pays after 200 steps
    assert speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=300, device="cpu")["compile"] is True
    assert speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=100, device="cpu")["compile"] is False
    remember(probe, {"compile_s": 1.0, "step_s": 2 * eager})  # slower when compiled: never, however long
    chosen = speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=10**9, device="cpu")
    assert chosen["compile"] is False and "compiled here before" in chosen["why"]


def test_a_tried_compile_that_is_not_faster_trains_eagerly_and_is_remembered(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))

    class SlowerModule(torch.nn.Module):  # what torch.compile returns, its steps slower instead of faster
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args, **kwargs):
            time.sleep(0.05)
            return self._orig_mod(*args, **kwargs)
    monkeypatch.setattr(torch, "compile", SlowerModule)
    model = Llama(ModelConfig.preset("tiny", vocab_size=300))
    chosen = speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=10**9, device="cpu")
    net, seconds = speed.compiled_or_eager(model, (2, 16), chosen, "cpu")
    assert net is model and seconds is None and "training eagerly" in capsys.readouterr().out
    assert recall(f"compiled (float32) {speed.probe_name(model, (2, 16))}")["step_s"] >= 0.05
    assert speed.choose_speed(model, (2, 16), "float32", "auto", steps_left=10**9, device="cpu")["compile"] is False


def test_a_resumed_run_keeps_its_dtype():
    model = Llama(ModelConfig.preset("tiny", vocab_size=300))
    chosen = speed.choose_speed(model, (2, 16), "auto", "off", steps_left=5, device="cpu",
                                recorded={"dtype": "bfloat16", "compile": True})
    assert chosen["dtype"] == "bfloat16" and set(chosen["step_seconds"]) == {"bfloat16"}


def test_a_failed_compile_trains_eagerly_with_one_line(monkeypatch, capsys):
    def broken_compile(module):
        def fail(*args, **kwargs):
            raise RuntimeError("no C compiler found\nlong traceback")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = Llama(ModelConfig.preset("tiny", vocab_size=300))
    net, seconds = speed.compiled_or_eager(model, (2, 16), {"dtype": "float32", "compile": True}, "cpu")
    assert net is model and seconds is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "torch.compile failed (RuntimeError: no C compiler found); training eagerly" in out
    assert all(p.grad is None for p in model.parameters())
