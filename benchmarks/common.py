"""What the speed benchmarks share: the machine they ran on, timing, a matmul peak measured in the same run, and
FLOP counts."""

import torch

from llamalogue.measured_speed import cpu_info, seconds
from llamalogue.model import ModelConfig


def machine() -> str:
    """The line every benchmark prints first: the CPU model, whether it has AMX or AVX-512-BF16 (the two bf16 paths
    whose speed ratios differ by up to 2x between machines), torch's threads, and the GPU if one is used."""
    model, flags = cpu_info()
    bf16 = ("AMX" if "amx_tile" in flags else "AVX-512-BF16, no AMX" if "avx512_bf16" in flags
            else "no AMX, no AVX-512-BF16")
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"machine: {model} ({bf16}), {torch.get_num_threads()} torch threads{gpu}"


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
