"""How pretraining runs fast on this machine: bfloat16 autocast or float32, torch.compile or eager -- each chosen by
measurement (llamalogue.measured_speed), never by a CPU flag, and recorded in the run's config ("speed").

- Autocast (`--dtype auto`): one training step of the run's own model on a batch of its own shape is timed in
  float32 and under bfloat16 autocast, and the faster is taken. Under autocast the matrix products run in bf16 while
  the weights, the residual stream and the loss stay fp32 (benchmarks/train.py --loss-steps shows the same loss
  curve); on CPUs whose bf16 products are emulated it simply measures slower.
- Compilation (`--compile auto`): torch.compile makes a step faster but costs a compile first, so it pays only on
  a run long enough. With s the measured eager step and S the steps left, it is taken when

      S * s  >=  COMPILE_PAYS_AFTER_S        (seconds of eager training that the compile's cost is worth)

  `--compile on|off` decide by hand. A compile that fails (no C compiler, an operator it cannot trace) falls back to
  eager with one line.

A resumed run keeps the dtype it began with (the same numbers as the run it continues); whether to compile is
decided again, as it changes only speed.
"""

import time
from contextlib import nullcontext

import torch

from llamalogue.measured_speed import faster
from llamalogue.pretraining.fused_loss import next_token_loss

# Measured with `python -m benchmarks train --presets small --compile` (2 threads, alone): the compile takes ~50 s
# and saves ~?% of each step, so it pays after ~? s of eager training; with a margin for the evaluation's own
# compile (the model in eval mode is traced again).
COMPILE_PAYS_AFTER_S = 600.0
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


def choose_speed(model, batch_shape: tuple[int, int], dtype: str, compile_mode: str, steps_left: int, device: str,
                 recorded: dict | None = None) -> dict:
    """The run's speed settings: {"dtype", "compile", "step_seconds" (eager, per dtype timed), "why"}. `recorded`:
    what a resumed run chose when it began (its dtype is kept)."""
    if recorded:
        dtype = recorded["dtype"]
    x, y = random_batch(model, batch_shape, device)
    candidates = ("float32", "bfloat16") if dtype == "auto" else (dtype,)
    timed = faster(f"pretraining step, {model.num_parameters():,}-parameter Llama, batch {batch_shape}",
                   {name: time_step(model, x, y, name, device) for name in candidates}, device)
    chosen, step_seconds = timed["choice"], timed["seconds"][timed["choice"]]
    eager_seconds = step_seconds * steps_left
    if compile_mode == "auto":
        use_compile = eager_seconds >= COMPILE_PAYS_AFTER_S
        why = (f"compile: {steps_left:,} steps x {step_seconds:.3f} s = {eager_seconds:,.0f} s of eager training, "
               f"{'at least' if use_compile else 'under'} the {COMPILE_PAYS_AFTER_S:,.0f} s after which it pays")
    else:
        use_compile, why = compile_mode == "on", f"compile: --compile {compile_mode}"
    times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in timed["seconds"].items())
    measured = "measured now" if timed["measured"] else "as measured before on this machine"
    return {"dtype": chosen, "compile": use_compile, "step_seconds": timed["seconds"],
            "why": f"dtype {chosen} (a step: {times}; {measured}); {why}"}


def compiled_or_eager(model, batch_shape: tuple[int, int], dtype: str, device: str):
    """torch.compile(model), compiled now on one step of the run's shape so that a failure shows here and falls
    back to the eager model with one line. Returns (the module to train, the compile's seconds or None)."""
    x, y = random_batch(model, batch_shape, device)
    compiled = torch.compile(model)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
            time_step(compiled, x, y, dtype, device)()  # dropout's draws stay out of the run's random stream
    except Exception as error:  # noqa: BLE001 -- any compiler failure: training goes on eagerly
        model.zero_grad(set_to_none=True)
        print(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:160]}); training eagerly")
        return model, None
    return compiled, round(time.perf_counter() - start, 1)
