"""The llamalogue model: a small Llama in one readable file.

A decoder-only transformer as in Llama (Touvron et al., 2023):

    tokens -> embedding -> n_layers x [ x + Attention(RMSNorm(x)) ; x + SwiGLU(RMSNorm(x)) ] -> RMSNorm -> logits

with rotary position embeddings (RoPE) on queries and keys, grouped-query attention (fewer key/value heads than
query heads), no biases anywhere, and optionally the output projection tied to the embedding.

The layout of every weight follows Hugging Face's `LlamaForCausalLM` (including RoPE's "rotate half" convention), so
that `llamalogue.hf` converts weights one-to-one, without permutations, in both directions.

Two things beyond a training-only model:
- padding: `attention_mask` (1 = real token, 0 = padding) lets a batch hold sequences of different lengths, padded on
  the left (generation) or on the right (scoring). Positions count real tokens only, so a left-padded prompt gets the
  same positions as the unpadded one.
- a key/value cache (`KVCache`): during generation each new token attends to the stored keys and values of all
  earlier ones instead of recomputing them, so decoding a token costs one token's forward pass.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_device() -> str:
    """cuda when present, else cpu: every stage is correct on both."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ModelConfig:
    vocab_size: int = 16000
    dim: int = 128
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 8  # < n_heads: grouped-query attention (each key/value head serves n_heads / n_kv_heads queries)
    hidden_dim: int = 0  # SwiGLU width; 0 = Llama's rule: 2/3 of 4*dim, rounded up to a multiple of 32
    max_seq_len: int = 128  # the training context; RoPE itself has no length limit
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0  # off by default (and always off for DPO/PPO, where log-probs must be deterministic)

    def __post_init__(self):
        if self.hidden_dim == 0:
            self.hidden_dim = 32 * math.ceil(int(2 * 4 * self.dim / 3) / 32)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig: dim ({self.dim}) must be divisible by n_heads ({self.n_heads}), "
                f"and n_heads by n_kv_heads ({self.n_kv_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# tiny: unit tests (seconds). small: the CPU default, the size of the BabyLM llamas (~3M parameters with a 16k
# vocabulary). paper: a GPU-sized llamalogue. The exact configuration of the paper's llamalogue is not available
# offline; `paper` is our reading of "a small Llama" at 4x the width and 2x the depth of `small`.
PRESETS = {
    "tiny": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
    "small": dict(dim=128, n_layers=8, n_heads=8, n_kv_heads=8, max_seq_len=128),
    "paper": dict(dim=256, n_layers=16, n_heads=16, n_kv_heads=16, max_seq_len=256),
}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight — LayerNorm without centring or bias, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """cos and sin of the rotation angles, [..., T, head_dim], for integer positions [..., T].

    Frequency pair i rotates by angle pos * theta^(-2i/head_dim). As in HF Llama the two halves of the head
    dimension form the pairs (element j is rotated with element j + head_dim/2): the "rotate half" layout.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # [..., T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (x_j, x_{j+d/2}) pair: x*cos + rotate_half(x)*sin, where rotate_half(x) = (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len` tokens.

    key_mask marks which cached slots hold real tokens (padding slots are never attended to), next_pos is each
    row's next position (positions count real tokens only), length is the number of filled slots.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype=torch.float32):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len

    def keep_rows(self, keep: torch.Tensor):
        """Keep only the rows where `keep` [batch] is True (generation drops the rows whose reply has ended)."""
        self.k, self.v = self.k[:, keep], self.v[:, keep]
        self.key_mask, self.next_pos = self.key_mask[keep], self.next_pos[keep]

    def write_rows(self, rows: torch.Tensor, other: "KVCache"):
        """Replace these rows by the rows of `other`, a cache of as many rows filled up to its `length` (generation
        puts new rows in the places of ended ones)."""
        filled = other.length
        self.k[:, rows, :, :filled], self.v[:, rows, :, :filled] = other.k[..., :filled, :], other.v[..., :filled, :]
        self.key_mask[rows] = False
        self.key_mask[rows, :filled] = other.key_mask[:, :filled]
        self.next_pos[rows] = other.next_pos


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, attn_mask, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # CPU autocast would run attention in bfloat16, whose CPU kernels are several times slower than the float32
        # ones (benchmarks/train.py): from the projections on, attention stays in float32 (RoPE included, so that its
        # products are not rounded twice); the matrix products around it use bf16.
        fp32_attention = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if fp32_attention:
            q, k, v = q.float(), k.float(), v.float()
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:  # store this step's keys/values, then attend over everything cached so far
            start, end = cache.length, cache.length + T
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]

        # Grouped-query attention: each key/value head is shared by n_heads / n_kv_heads query heads. SDPA reads
        # the shared heads in place (enable_gqa); repeating them would copy the whole cache in every decoding step.
        gqa = self.n_kv_heads < self.n_heads
        dropout = self.dropout if self.training else 0.0
        if fp32_attention:
            with torch.autocast("cpu", enabled=False):
                out = attend(q, k, v, attn_mask, dropout, gqa)
        else:
            out = attend(q, k, v, attn_mask, dropout, gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


def attend(q, k, v, attn_mask, dropout: float, gqa: bool):
    """softmax(q k^T / sqrt(head_dim) + mask) v, with PyTorch's fused kernel; gqa: k and v have fewer heads than q,
    each serving a group of consecutive query heads."""
    if attn_mask is None:  # plain causal attention over an unpadded batch: the fastest kernel
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, enable_gqa=gqa)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a gated MLP (Shazeer, 2020)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, attn_mask, cache, layer):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, attn_mask, cache, layer))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init_weights)
        # Residual-branch outputs start smaller (GPT-2): the residual stream's variance then stays ~constant in depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.embed.weight
        return KVCache(self.config, batch, max_len, p.device, p.dtype)

    def forward(self, tokens, attention_mask=None, cache: KVCache | None = None, compute_logits: bool = True):
        """tokens [B, T] -> logits [B, T, vocab] in fp32.

        attention_mask [B, T]: 1 for real tokens, 0 for padding. With a cache, tokens continue the cached ones.
        compute_logits=False returns only the final hidden states: the pretraining loss applies the output layer
        itself, a chunk of rows at a time, instead of holding all B x T x vocab logits.
        """
        B, T = tokens.shape
        device = tokens.device
        real = torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()

        # Positions count real tokens only (left padding does not shift them); padding gets the next row position.
        offset = cache.next_pos[:, None] if cache is not None else 0
        positions = offset + (real.long().cumsum(dim=1) - 1).clamp(min=0)
        cos, sin = rope_cos_sin(positions[:, None, :], self.config.head_dim, self.config.rope_theta)  # [B,1,T,hd]

        attn_mask = None
        if cache is not None or attention_mask is not None:
            past = cache.length if cache is not None else 0
            if cache is not None:
                if past + T > cache.max_len:
                    raise ValueError(f"KV cache holds {cache.max_len} tokens; {past + T} requested")
                cache.key_mask[:, past : past + T] = real
                key_real = cache.key_mask[:, : past + T]
            else:
                key_real = real
            q_slot = torch.arange(past, past + T, device=device)[:, None]
            k_slot = torch.arange(past + T, device=device)[None, :]
            causal = k_slot <= q_slot  # [T, past+T]
            # A query attends to earlier real keys, and always to itself: a padding query then never has an empty
            # row (softmax of all -inf is NaN, and NaN would leak through 0-weights into real positions).
            attn_mask = (causal[None] & key_real[:, None, :]) | (k_slot == q_slot)[None]
            attn_mask = attn_mask[:, None]  # [B, 1, T, past+T], broadcast over heads

        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, cache, i)
        hidden = self.norm(x)
        if cache is not None:
            cache.length += T
            cache.next_pos = cache.next_pos + real.long().sum(dim=1)
        if not compute_logits:
            return hidden
        return self.lm_head(hidden).float()
