"""What the speed benchmarks share: timing, a matmul peak measured in the same run, and FLOP counts."""

import statistics
import time

import torch

from llamalogue.model import ModelConfig


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device: str = "cpu") -> float:
    """Wall time of one call of fn."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(contenders: dict, rounds: int, device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each contender, timed in turns (A B A B ...) so that all of them see the same
    machine load; each is called once first as a warm-up."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(seconds(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(device: str = "cpu", dtype=torch.float32, n: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of an n x n x n matrix product, the best of `repeats`: the machine's practical peak right now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(seconds(lambda: a @ b, device) for _ in range(repeats + 1))
    return 2 * n**3 / best


def training_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
    """FLOPs of one training step per token: 6 per weight of every matrix product (2 forward, 4 backward), the output
    layer included, plus 12 * n_layers * seq_len * dim for attention scores and weighted values (the PaLM paper's
    count, appendix B; it counts the full T x T product although causal attention needs half of it)."""
    kv_dim = config.n_kv_heads * config.head_dim
    per_layer = 2 * config.dim * config.dim + 2 * config.dim * kv_dim + 3 * config.dim * config.hidden_dim
    matrices = config.n_layers * per_layer + config.dim * config.vocab_size
    return 6 * matrices + 12 * config.n_layers * (seq_len or config.max_seq_len) * config.dim
