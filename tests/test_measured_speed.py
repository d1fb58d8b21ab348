"""Fast paths chosen by measurement (llamalogue.measured_speed, llamalogue.pretraining.speed): the faster contender
wins, the choice is remembered per machine, and a run records what it chose."""

import json
import time

import pytest
import torch

from llamalogue import measured_speed
from llamalogue.measured_speed import faster, machine_key, recall, remember, vector_capability
from llamalogue.model import Llama, ModelConfig
from llamalogue.pretraining import speed


@pytest.fixture
def clock(monkeypatch):
    """Contenders that say how long each call took: the probe's decisions tested without timing anything. A
    contender is a list of call times, called in order (its last repeated)."""
    def fake_seconds(fn, device="cpu"):
        return fn()
    monkeypatch.setattr(measured_speed, "seconds", fake_seconds)

    def contender(*times, calls: list):
        times = list(times)

        def call():
            calls.append(times[0])
            return times.pop(0) if len(times) > 1 else times[0]
        return call
    return contender


def test_the_faster_contender_wins_and_is_remembered_for_this_machine(tmp_path, monkeypatch, clock):
    cache = tmp_path / "speed.json"
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    slow, quick = [], []
    first = faster("toy work", {"slow": clock(1.5, calls=slow), "quick": clock(1.0, calls=quick)})
    assert first == {"choice": "quick", "seconds": {"slow": 1.5, "quick": 1.0}, "measured": True}
    assert len(slow) == len(quick) == 1 + 3  # close to each other: a warm-up and three timed rounds each
    key = f"toy work @ {machine_key('cpu')}"
    assert json.loads(cache.read_text())[key] == first["seconds"]

    again = faster("toy work", {"slow": clock(1.5, calls=slow), "quick": clock(1.0, calls=quick)})
    assert again == {**first, "measured": False} and len(slow) == len(quick) == 4  # remembered: nothing run again
    other = faster("other work", {"slow": clock(1.5, calls=slow), "quick": clock(1.0, calls=quick)})
    assert other["measured"] and len(json.loads(cache.read_text())) == 2  # another probe, another entry


def test_a_contender_that_has_clearly_lost_is_timed_no_more(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("LLAMALOGUE_CACHE", "")
    emulated, native = [], []  # bf16 emulated: ~10x an fp32 step on an AVX2-only CPU
    timed = faster("step", {"float32": clock(1.2, 1.0, calls=native), "bfloat16": clock(10.0, calls=emulated)})
    assert timed["choice"] == "float32" and timed["seconds"] == {"float32": 1.0, "bfloat16": 10.0}
    assert len(emulated) == 1 and len(native) == 4  # lost at its first call: never timed
    slower, quick = [], []  # 3.5x at the first call is within its margin; 3.5x again when timed is not
    timed = faster("step", {"slower": clock(3.5, calls=slower), "quick": clock(1.0, calls=quick)})
    assert timed["seconds"]["slower"] == 3.5 and len(slower) == 2 and len(quick) == 4


def test_the_machine_key_names_the_vector_capability_and_older_keys_are_measured_again(tmp_path, monkeypatch,
                                                                                      clock):
    """One model name covers machines of different speed ("AMD EPYC": AVX2 only, or AVX-512 with bf16 products):
    the key names torch's CPU capability and the bf16 path, so one machine's choice is never another's."""
    key = machine_key("cpu")
    assert torch.backends.cpu.get_cpu_capability() in key and vector_capability() in key
    assert any(path in vector_capability() for path in ("AMX bf16", "AVX-512-BF16", "bf16 emulated"))
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    model_name = measured_speed.cpu_info()[0]
    older_key = f"{model_name} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
    (tmp_path / "speed.json").write_text(json.dumps({f"step @ {older_key}": {"a": 9.0, "b": 1.0}}))
    calls = []
    timed = faster("step", {"a": clock(1.0, calls=calls), "b": clock(1.5, calls=calls)})
    assert timed["measured"] and timed["choice"] == "a" and calls  # the older entry was not taken


def test_a_contender_is_timed_by_its_fastest_call(monkeypatch, clock):
    """Load only ever adds time: one disturbed call must not make the faster contender lose."""
    monkeypatch.setenv("LLAMALOGUE_CACHE", "")
    disturbed, steady = [], []
    timed = faster("step", {"disturbed": clock(1.1, 2.5, 0.9, 0.9, calls=disturbed),
                            "steady": clock(1.0, calls=steady)})
    assert timed["choice"] == "disturbed" and timed["seconds"]["disturbed"] == 0.9


def test_a_damaged_or_disabled_memory_only_means_measuring_again(tmp_path, monkeypatch, clock):
    cache = tmp_path / "speed.json"
    cache.write_text("{not json")
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
    calls = []
    assert faster("toy", {"a": clock(1.0, calls=calls), "b": clock(1.5, calls=calls)})["choice"] == "a"
    assert json.loads(cache.read_text())  # rewritten whole
    monkeypatch.setenv("LLAMALOGUE_CACHE", "")  # no memory at all
    assert faster("toy", {"a": clock(1.0, calls=calls), "b": clock(1.5, calls=calls)})["measured"]
    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path / "file" / "inside"))
    (tmp_path / "file").write_text("a file where a folder should be")
    assert faster("toy", {"a": clock(1.0, calls=calls), "b": clock(1.5, calls=calls)})["choice"] == "a"


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
    assert set(chosen["step_seconds"]) == {"float32", "bfloat16"}
    assert chosen["dtype"] == min(chosen["step_seconds"], key=chosen["step_seconds"].get)  # the faster one taken
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
