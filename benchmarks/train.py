"""Training speed: our Llama against transformers' LlamaForCausalLM, same configuration, weights, batches, loss and
optimizer (AdamW), one full training step (forward, cross-entropy, backward, optimizer step) at a time.

    python -m benchmarks train [--presets small paper] [--rounds 3] [--compile] [--device cpu]

Settings: both in float32 (the like-for-like comparison), then ours in our other settings: bfloat16 autocast (which
the pretraining uses only where it is faster: CUDA, or a CPU with AMX) and, with --compile, torch.compile (compile
time reported apart). The steps of every contender are timed in turns so all see the same machine load; the medians
are compared. Achieved FLOP/s are printed against a matrix-product peak measured in the same run.

Last line: `train ratio=X.XX` = our best setting's tokens/s / transformers' float32 tokens/s on the first preset.
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.common import alternate, matmul_peak, seconds, training_flops_per_token
from llamalogue.hf import to_hf
from llamalogue.model import Llama, ModelConfig, default_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH = {"tiny": 8, "small": 32, "paper": 8}  # windows per step on CPU (the GPU presets use larger ones)
VOCAB = 16000  # the tokenizer of the full CHILDES pretraining split


def training_step(model, optimizer, batch, autocast_dtype=None, hf: bool = False):
    """One optimisation step; returns a function that runs it."""
    x, y = batch[:, :-1], batch[:, 1:]
    device = batch.device.type

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x).logits if hf else model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def optimizer_for(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def benchmark_preset(preset: str, rounds: int, device: str, compile_model: bool, peak: float) -> dict[str, float]:
    config = ModelConfig.preset(preset, vocab_size=VOCAB)
    torch.manual_seed(0)
    ours = Llama(config).to(device).train()
    theirs = to_hf(ours).to(device).train()  # the same weights
    batch = torch.randint(0, VOCAB, (BATCH[preset], config.max_seq_len + 1), device=device)
    contenders = {
        "transformers fp32": training_step(theirs, optimizer_for(theirs), batch, hf=True),
        "ours fp32": training_step(ours, optimizer_for(ours), batch),
        "ours bf16 autocast": training_step(ours, optimizer_for(ours), batch, torch.bfloat16),
    }
    if preset != "small":  # bf16 only where it is measured to decide the CPU default; it is slow without AMX
        del contenders["ours bf16 autocast"]
    if compile_model:
        compiled = torch.compile(ours)
        step = training_step(compiled, optimizer_for(ours), batch)
        print(f"  compiling ours ({preset}) ... {seconds(step, device):.0f} s (first step, excluded)", flush=True)
        contenders["ours fp32 compiled"] = step
    times = alternate(contenders, rounds, device)
    tokens = batch.shape[0] * config.max_seq_len
    flops = training_flops_per_token(config)
    print(f"{preset}: {ours.num_parameters() / 1e6:.2f}M parameters, batch {batch.shape[0]} x {config.max_seq_len} "
          f"tokens, {flops / 1e6:.1f} MFLOP per token; median of {rounds} steps each, in turns")
    baseline = tokens / times["transformers fp32"]
    speeds = {}
    for name, t in times.items():
        speeds[name] = tokens / t
        print(f"  {name:22s} {speeds[name]:>9,.0f} tokens/s  {speeds[name] * flops / 1e9:6.1f} GFLOP/s "
              f"({100 * speeds[name] * flops / peak:4.1f}% of the fp32 matmul peak)  x{speeds[name] / baseline:.2f}")
    return speeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], choices=list(BATCH))
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per contender")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args(argv)

    start = time.time()
    peak = matmul_peak(args.device)
    print(f"device {args.device}, {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"(1024^3 product, best of 8)")
    results = {preset: benchmark_preset(preset, args.rounds, args.device, args.compile, peak) for preset in args.presets}
    peak = max(peak, matmul_peak(args.device))
    print(f"fp32 matmul peak at the end: {peak / 1e9:.0f} GFLOP/s; {time.time() - start:.0f} s in all")
    first = results[args.presets[0]]
    best = max((name for name in first if name.startswith("ours")), key=first.get)
    print(f"our best setting on {args.presets[0]}: {best}")
    print(f"train ratio={first[best] / first['transformers fp32']:.2f}")
    return 0
