"""Fast paths chosen by measurement on this machine, never by a CPU flag alone.

Whether bfloat16 beats float32 depends on more than the instruction set: two 2-core machines that both have bf16
products (an Intel with AMX, an AMD EPYC with AVX-512-BF16 only) differ by up to 2x in how much bf16 gains, and for
small matrices it can lose. So where a stage may take a faster path -- bf16 autocast in pretraining
(llamalogue.pretraining.speed), bf16 weights for the teacher's sampling (llamalogue.teacher.llm) -- it times the
contenders on the work itself, in turns (`fastest_calls`), takes the faster (`faster`) and records the choice in
its run's config.

"Once per machine": the timings are remembered in a small JSON file (speed.json in llamalogue's per-user cache,
llamalogue.run_dir.user_cache; LLAMALOGUE_CACHE moves it, an empty value turns it off), keyed by the probe's name and
the machine (`machine_key`), so later runs on the same machine choose at once. A file that cannot be read or written
is skipped, never an error: the measurement is then simply made again.

A probe stops timing a contender as soon as it has clearly lost (`CLEARLY_LOST`): on a CPU whose bf16 products are
emulated, a bf16 pretraining step takes ~15 times the fp32 one, and timing it three times would cost most of a minute.
"""

import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from llamalogue.run_dir import user_cache

def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device: str = "cpu") -> float:
    """Wall time of one call of fn."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# When a contender has lost for sure (fastest_calls): a moment's load has been seen to double a call's time, so a
# contender within CLEARLY_LOST of the fastest is timed every round; first calls are compared with a wider margin.
CLEARLY_LOST = 3.0
FIRST_CALL_LOST = 4.0


def median_seconds(contenders: dict[str, Callable], rounds: int, device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each contender, timed in turns (A B A B ...) so that all of them see the same
    machine load; each is called once first as a warm-up (first calls pay for allocations and kernel selection)."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(seconds(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def vector_capability() -> str:
    """The widest vector instructions torch's CPU kernels use here (AVX2, AVX512, ...), and whether the processor
    multiplies bf16 in hardware (AMX, AVX-512-BF16) or torch emulates it. Two processors with one model name can
    differ in both ("AMD EPYC" names a Zen 4 with AVX-512-BF16 and an older EPYC with AVX2 only), and their speeds
    by 2x or more."""
    flags = cpu_info()[1]
    bf16 = "AMX bf16" if "amx_bf16" in flags else "AVX-512-BF16" if "avx512_bf16" in flags else "bf16 emulated"
    return f"{torch.backends.cpu.get_cpu_capability()}, {bf16}"


def machine_key(device: str) -> str:
    """What a timing depends on besides the work: the processor and its vector capability, torch's version and
    threads, the GPU. A measurement remembered under an older form of this key is simply made again."""
    gpu = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else ""
    return (f"{cpu_info()[0]} ({vector_capability()}) | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {gpu}")


def _remembered() -> dict:
    path = user_cache("speed.json")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}


def recall(probe: str, device: str = "cpu") -> dict | None:
    """What was measured for `probe` on this machine, if anything."""
    values = _remembered().get(f"{probe} @ {machine_key(device)}")
    return values if isinstance(values, dict) else None


def remember(probe: str, values: dict, device: str = "cpu") -> None:
    """Keep what was measured for `probe` on this machine (nothing, when the cache cannot be written)."""
    path = user_cache("speed.json")
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes may write at once: each its own tmp
        tmp.write_text(json.dumps({**_remembered(), f"{probe} @ {machine_key(device)}": values}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def fastest_calls(contenders: dict[str, Callable], rounds: int, device: str = "cpu") -> dict[str, float]:
    """The fastest of `rounds` timed calls of each contender, in turns after a warm-up call each; a contender that
    has clearly lost is not called again. The fastest call, not the median: load only ever adds time, so the
    least-disturbed call is the work's own time.

    Clearly lost: a warm-up call over FIRST_CALL_LOST times another contender's warm-up (a first call pays for
    allocations and kernel choices, measured at up to 1.3x a later call), or a timed call over CLEARLY_LOST times
    the fastest so far. A contender that lost at its first call keeps that call's time."""
    first = {name: seconds(fn, device) for name, fn in contenders.items()}
    best = dict(first)
    timed = [name for name in contenders if first[name] <= FIRST_CALL_LOST * min(first.values())]
    for round_ in range(rounds):
        for name in timed:
            call = seconds(contenders[name], device)
            best[name] = call if round_ == 0 else min(best[name], call)
        fastest = min(best[name] for name in timed)
        timed = [name for name in timed if best[name] <= CLEARLY_LOST * fastest]
    return best


def faster(probe: str, contenders: dict[str, Callable], device: str = "cpu", rounds: int = 3) -> dict:
    """The faster contender on this machine for the work `probe` names (which must say everything the timing
    depends on: model shape, batch...): {"choice": name, "seconds": {name: seconds per call (fastest_calls)},
    "measured": True now, False when remembered}. One contender is timed as well: its time may decide something
    else (the compile, a time budget)."""
    timings = recall(probe, device)
    measured = not (timings and set(timings) == set(contenders))
    if measured:
        with torch.random.fork_rng(devices=[torch.device(device)] if str(device).startswith("cuda") else []):
            timings = fastest_calls(contenders, rounds, device)  # the probe's own randomness stays its own
        remember(probe, timings, device)
    return {"choice": min(timings, key=timings.get), "seconds": timings, "measured": measured}
