"""Training speed: our Llama against transformers' LlamaForCausalLM, same configuration, weights, batches and
optimizer (fused AdamW), one full training step (forward, loss, backward, optimizer step) at a time.

    python -m benchmarks train [--presets small paper] [--rounds 3] [--compile] [--loss-steps 40] [--device cpu]

Contenders: transformers in float32 (`cross_entropy(model(x).logits)`), ours in float32 and ours with bfloat16
autocast, both with our training loss (`pretraining.next_token_loss`: the output layer and cross-entropy fused and
chunked), and with --compile ours under torch.compile (compile time reported apart). Each contender's steps are
timed in turns, so that all see the same machine load, and the medians are compared; the batches are random token
ids (speed does not depend on them) with the full corpus' vocabulary of 16,000. Achieved FLOP/s are printed against
the float32 and bfloat16 matrix-product peaks measured in the same run.

bfloat16 on a CPU is only worth it where the CPU has bf16 instructions (AVX512-BF16 or AMX) and only if training
still converges the same: --loss-steps trains `small` on real dialogue (runs/data, the embedded sample; built when
missing) from the same initial weights in float32 and in bfloat16 and prints both loss curves. The pretraining's
`--dtype auto` times the same step when a run starts (llamalogue.pretraining.speed).

Last line: `train ratio=X.XX` = our best setting's tokens/s / transformers' float32 tokens/s on the first preset.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import machine, matmul_peak, training_flops_per_token
from llamalogue.measured_speed import median_seconds, seconds
from llamalogue.hf import to_hf
from llamalogue.model import Llama, ModelConfig, default_device
from llamalogue.corpus.build import DEFAULT_CHILDES
from llamalogue.pretraining.fused_loss import next_token_loss
from llamalogue.pretraining.data import Windows, prepare_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH = {"tiny": 8, "small": 32, "paper": 8}  # windows per step on CPU (the GPU presets use larger ones)
VOCAB = 16000  # the tokenizer of the full CHILDES pretraining split


def transformers_loss(model, x, y):
    return F.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(), y.flatten())


def trainer(model, loss_fn, autocast_dtype=None):
    """A function that runs one optimisation step of `model` on a batch (inputs, targets) and returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(batch):
        x, y = batch
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def benchmark_preset(preset: str, rounds: int, device: str, compile_model: bool, peaks: dict) -> dict[str, float]:
    config = ModelConfig.preset(preset, vocab_size=VOCAB)
    torch.manual_seed(0)
    ours = Llama(config).to(device).train()
    theirs = to_hf(ours).to(device).train()  # the same weights
    tokens = torch.randint(0, VOCAB, (BATCH[preset], config.max_seq_len + 1), device=device)
    batch = tokens[:, :-1], tokens[:, 1:]
    steps = {
        "transformers fp32": trainer(theirs, transformers_loss),
        "ours fp32": trainer(ours, next_token_loss),
        "ours bf16 autocast": trainer(ours, next_token_loss, torch.bfloat16),
    }
    if compile_model:
        for dtype, name in ((None, "ours fp32 compiled"), (torch.bfloat16, "ours bf16 compiled")):
            steps[name] = trainer(torch.compile(ours), next_token_loss, dtype)
            compile_s = seconds(lambda: steps[name](batch), device)
            print(f"  compiling {name} ({preset}) ... {compile_s:.0f} s (first step, excluded)", flush=True)
    times = median_seconds({name: (lambda step=step: step(batch)) for name, step in steps.items()}, rounds, device)
    tokens = batch[0].numel()
    flops = training_flops_per_token(config)
    print(f"{preset}: {ours.num_parameters() / 1e6:.2f}M parameters, batch {BATCH[preset]} x {config.max_seq_len} "
          f"tokens, {flops / 1e6:.1f} MFLOP per token; median of {rounds} steps each, in turns")
    baseline = tokens / times["transformers fp32"]
    speeds = {}
    for name, t in times.items():
        speeds[name] = tokens / t
        dtype = "bf16" if "bf16" in name else "fp32"
        print(f"  {name:22s} {speeds[name]:>9,.0f} tokens/s  {speeds[name] * flops / 1e9:6.1f} GFLOP/s "
              f"({100 * speeds[name] * flops / peaks[dtype]:4.1f}% of the {dtype} matmul peak)  "
              f"x{speeds[name] / baseline:.2f}", flush=True)
    return speeds


def loss_curves(data_dir: Path, steps: int, device: str) -> None:
    """float32 vs bfloat16 autocast: `small` trained from the same weights on the same real batches, AdamW lr 1e-3."""
    tokenizer, train_tokens, _ = prepare_data(data_dir, [DEFAULT_CHILDES], rank=0, world=1)  # the sample if missing
    config = ModelConfig.preset("small", vocab_size=tokenizer.vocab_size)
    windows = Windows(train_tokens, config.max_seq_len, device)
    order = torch.randperm(windows.count, generator=torch.Generator().manual_seed(0))
    curves = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        step = trainer(Llama(config).to(device).train(), next_token_loss, dtype)
        batches = (windows.batch(order[i * BATCH["small"] : (i + 1) * BATCH["small"]]) for i in range(steps))
        curves[name] = np.array([step(batch).item() for batch in batches])
    every = max(1, steps // 8)
    print(f"loss curves, small on {data_dir} (real dialogue), same weights and batches, AdamW lr 1e-3:")
    for name, losses in curves.items():
        print(f"  {name}: " + " ".join(f"{losses[i]:.3f}" for i in range(0, steps, every)) + f" ... {losses[-1]:.3f}")
    last = slice(-max(1, steps // 5), None)
    gap = abs(curves["bf16"][last].mean() - curves["fp32"][last].mean()) / curves["fp32"][last].mean()
    print(f"  mean of the last {len(curves['fp32'][last])} losses: fp32 {curves['fp32'][last].mean():.4f}, "
          f"bf16 {curves['bf16'][last].mean():.4f} ({100 * gap:.2f}% apart)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], choices=list(BATCH))
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per contender")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--loss-steps", type=int, default=40, help="steps of the fp32/bf16 loss-curve check (0: skip)")
    parser.add_argument("--data", type=Path, default=Path("runs/data"), help="real data for the loss-curve check")
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args(argv)
    print(machine())

    start = time.time()
    peaks = {"fp32": matmul_peak(args.device), "bf16": matmul_peak(args.device, torch.bfloat16)}
    print(f"device {args.device}, {torch.get_num_threads()} threads; matmul peaks (1024^3 product, best of 8): "
          f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    results = {p: benchmark_preset(p, args.rounds, args.device, args.compile, peaks) for p in args.presets}
    if args.loss_steps:
        loss_curves(args.data, args.loss_steps, args.device)
    print(f"matmul peaks at the end: fp32 {matmul_peak(args.device) / 1e9:.0f} GFLOP/s, bf16 "
          f"{matmul_peak(args.device, torch.bfloat16) / 1e9:.0f} GFLOP/s; {time.time() - start:.0f} s in all")
    first = results[args.presets[0]]
    best = max((name for name in first if name.startswith("ours")), key=first.get)
    print(f"our best setting on {args.presets[0]}: {best}")
    print(f"train ratio={first[best] / first['transformers fp32']:.2f}")
    return 0
