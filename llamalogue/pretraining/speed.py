"""How pretraining runs fast on this machine: bfloat16 autocast or float32, torch.compile or eager -- each chosen by
measurement (llamalogue.measured_speed: measured once per machine, then remembered), never by a CPU flag, and
recorded in the run's config ("speed").

- Autocast (`--dtype auto`): one training step of the run's own model on a batch of its own shape is timed in
  float32 and under bfloat16 autocast, and the faster is taken. Under autocast the matrix products run in bf16 while
  the weights, the residual stream and the loss stay fp32 (benchmarks/train.py --loss-steps shows the same loss
  curve); on CPUs whose bf16 products are emulated it simply measures slower.
- Compilation (`--compile auto`): torch.compile costs a compile c first and then makes a step take s_c instead of
  the eager s. Over the S steps left it pays when

      S * (s - s_c)  >  c

  Where c and s_c were measured on this machine for this model and batch, that decides. Where they were not, a
  compile is tried on a run long enough for the best gain seen on our machines to pay (S * s >=
  COMPILE_WORTH_TRYING_S), timed, remembered, and kept only if its steps are faster: on one of our CPUs compiling
  made a `small` step 1.29x faster, on another not at all. `--compile on|off` decide by hand. A compile that fails
  (no C compiler, an operator it cannot trace) falls back to eager with one line.

A resumed run keeps the dtype it began with (the same numbers as the run it continues); whether to compile is
decided again, as it changes only speed.
"""

import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from llamalogue.measured_speed import faster, fastest_calls, median_seconds, recall, remember
from llamalogue.pretraining.fused_loss import next_token_loss

# `python -m benchmarks train --presets small --compile`, 2 threads, alone: on an Intel with AMX the compile took
# ~50 s and made a step 1.29x faster, which pays after 50 * 1.29 / 0.29 = ~220 s of eager training; on an AMD EPYC
# (AVX-512-BF16, no AMX) 39 s for no gain (5,395 vs 5,517 tokens/s). A first try needs a run longer than that.
COMPILE_WORTH_TRYING_S = 300.0
COMPILE_CHOICES = ("auto", "on", "off")


def autocast_context(dtype: str, device: str):
    """The context a step's forward pass runs in: bf16 autocast, or nothing (plain float32)."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()


def random_batch(model, batch_shape: tuple[int, int], device: str):
    """Inputs and targets of the run's shape (speed does not depend on the tokens), drawn from a generator of their
    own: the run's random stream is not touched."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(model.config.vocab_size, (2, *batch_shape), generator=generator).to(device)


def time_step(model, x, y, dtype: str, device: str):
    """One forward and backward pass of the model in `dtype`, its gradients then dropped."""
    def step():
        with autocast_context(dtype, device):
            loss = next_token_loss(model, x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def probe_name(model, batch_shape: tuple[int, int]) -> str:
    return f"pretraining step, {model.num_parameters():,}-parameter Llama, batch {batch_shape}"


def choose_speed(model, batch_shape: tuple[int, int], dtype: str, compile_mode: str, steps_left: int, device: str,
                 recorded: dict | None = None, budget_s: float = 0.0) -> dict:
    """The run's speed settings: {"dtype", "compile" (True, False or "try"), "step_seconds" (eager, per dtype
    timed), "why", and with a time budget "steps"}. `recorded`: what a resumed run chose when it began (its dtype
    is kept). `budget_s` > 0: the steps that fit in it at the eager step's time s, measured now (a remembered time
    chooses the dtype, but a moment's load when it was measured must not shorten every later run's budget),

        steps = budget_s / s

    and the compile is decided on min(steps_left, steps)."""
    if recorded:
        dtype = recorded["dtype"]
    x, y = random_batch(model, batch_shape, device)
    candidates = ("float32", "bfloat16") if dtype == "auto" else (dtype,)
    probe = probe_name(model, batch_shape)
    timed = faster(probe, {name: time_step(model, x, y, name, device) for name in candidates}, device)
    chosen, step = timed["choice"], timed["seconds"][timed["choice"]]
    budget, fitting = "", {}
    if budget_s > 0:
        if not timed["measured"]:  # remembered, perhaps under another load: what fits now is timed now
            step = fastest_calls({chosen: time_step(model, x, y, chosen, device)}, rounds=2, device=device)[chosen]
        fitting = {"steps": max(1, int(budget_s / step))}
        steps_left = min(steps_left, fitting["steps"])
        budget = f"; {fitting['steps']:,} steps of {step:.3f} s fit in the {budget_s / 60:g}-minute budget"
    compiled = recall(f"compiled ({chosen}) {probe}", device)  # {"compile_s", "step_s"} measured here before
    if compile_mode != "auto":
        use_compile, why = compile_mode == "on", f"--compile {compile_mode}"
    elif compiled:
        saved = steps_left * (step - compiled["step_s"])
        use_compile = saved > compiled["compile_s"]
        why = (f"compiled here before: a step {compiled['step_s']:.3f} s after a {compiled['compile_s']:.0f} s "
               f"compile, so {steps_left:,} steps would save {saved:,.0f} s: {'compiled' if use_compile else 'eager'}")
    else:
        use_compile = "try" if steps_left * step >= COMPILE_WORTH_TRYING_S else False
        why = (f"{steps_left:,} steps x {step:.3f} s = {steps_left * step:,.0f} s of eager training, "
               + (f"enough to try a compile (then timed and remembered)" if use_compile else
                  f"under the {COMPILE_WORTH_TRYING_S:,.0f} s a first compile needs"))
    times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in timed["seconds"].items())
    measured = "measured now" if timed["measured"] else "as measured before on this machine"
    return {"dtype": chosen, "compile": use_compile, "step_seconds": timed["seconds"],
            "why": f"dtype {chosen} (a step: {times}; {measured}){budget}; compile: {why}",
            **fitting}


def compiled_or_eager(model, batch_shape: tuple[int, int], speed: dict, device: str):
    """(the module to train, the compile's seconds or None) for the speed chosen: torch.compile(model), compiled
    now on one step of the run's shape so that a failure shows here and falls back to the eager model with one
    line. A compile tried for the first time on this machine ("try") is timed against the eager step, remembered,
    and kept only if faster."""
    if not speed["compile"]:
        return model, None
    x, y = random_batch(model, batch_shape, device)
    compiled = torch.compile(model)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
            step = time_step(compiled, x, y, speed["dtype"], device)
            step()  # the compile; dropout's draws stay out of the run's random stream
            compile_s = time.perf_counter() - start
            step_s = median_seconds({"compiled": step}, rounds=3, device=device)["compiled"]
    except Exception as error:  # noqa: BLE001 -- any compiler failure: training goes on eagerly
        model.zero_grad(set_to_none=True)
        print(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:160]}); training eagerly")
        return model, None
    remember(f"compiled ({speed['dtype']}) {probe_name(model, batch_shape)}",
             {"compile_s": compile_s, "step_s": step_s}, device)
    eager_s = speed["step_seconds"][speed["dtype"]]
    if speed["compile"] == "try" and step_s >= eager_s:
        print(f"torch.compile: a step {step_s:.3f} s compiled, {eager_s:.3f} s eager (remembered); training eagerly")
        return model, None
    return compiled, round(compile_s, 1)


def speed_of_the_run(model, batch_shape: tuple[int, int], config, micro_steps_left: int, device: str,
                     record: dict | None, rank: int, world: int):
    """(the module to train, the speed settings) of a run, the same in every process: rank 0 measures and chooses
    (choose_speed), every process takes its choice and compiles for itself, then keeps what rank 0 kept (a tried
    compile is timed in each process, and their timings may differ). A new run's time budget (config.minutes)
    gives speed["steps"], its micro-steps; a resumed run keeps the schedule it began with."""
    budget_s = 60 * config.minutes if record is None else 0.0
    speed = [choose_speed(model, batch_shape, config.dtype, config.compile, micro_steps_left, device,
                          record.get("speed") if record else None, budget_s) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(speed, src=0)
    speed = speed[0]
    net, speed["compile_seconds"] = compiled_or_eager(model, batch_shape, speed, device)
    if world > 1:
        compiled = [net is not model]
        dist.broadcast_object_list(compiled, src=0)
        if compiled[0] != (net is not model):
            net = torch.compile(model) if compiled[0] else model
    return net, speed
