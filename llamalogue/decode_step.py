"""One decoding step of a llamalogue model, in as few operations as possible: what `generate` runs per new token.

`DecodeStep(model)(tokens, active, cache)` computes what `model(tokens[:, None], active[:, None], cache=cache)`
computes (the same numbers, up to the order of floating-point sums: tests/test_model.py), for one token per row,
outside autocast (generation runs without it; under CPU autocast the model's attention would run in fp32, this
step's in the autocast dtype).
Why a second path: at the sizes of our models a decoding step is a few dozen products of a handful of rows, and
the time goes to launching operations, not to arithmetic (`python -m benchmarks decode`: dim 128 x 8 layers, 16
rows). So this step

- multiplies once by the query/key/value weights stacked into one matrix, and once by the gate/up weights
  (copies made when the step is built, i.e. once per `generate` call, so that a model trained between calls, as in
  PPO, is always decoded with its current weights);
- rotates queries and keys together (RoPE at each row's position, one angle table per step for every layer);
- builds the attention mask once per step, not once per layer; and uses torch's fused RMSNorm;
- attends with two explicit products (`attend`) instead of F.scaled_dot_product_attention, whose CPU kernels are
  slow for a single query: for the teacher's 64 rows x 190 keys, 8.3 ms a layer in bf16 against 1.2 ms.
- reads a prefix that every row shares (the teacher's examples) once, not once per row (`attend`'s `shared`).

The model's own forward stays the readable reference (llamalogue.model); this is its decoding-only twin.
"""

import torch
import torch.nn.functional as F

from llamalogue.model import KVCache, Llama, apply_rope, rope_cos_sin


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
           shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of one query per row, [B, H, 1, hd] -> [B, H * hd]:

        out = softmax(q k^T / sqrt(hd), over the visible keys) v

    keys and values [B, KV, S, hd]; with grouped-query attention the H query heads come in KV groups of H / KV
    consecutive heads, each group reading one key/value head (head h reads h // (H / KV)), so the queries are viewed
    as [B, KV, H / KV, hd] rather than the keys repeated. visible [B, 1, 1, S] (bool). The scores and the softmax
    are fp32 whatever the weights' dtype.

    shared: the keys and values [KV, P, hd] of a prefix that every row sees before its own S keys (the teacher's
    examples). The softmax runs over the P + S keys together; the shared part is read once for all rows, as one
    product per key/value head, [KV, B * H / KV, hd] x [KV, hd, P], where a copy per row would be read B times
    (decoding reads the keys and values of every row at every layer: memory, not arithmetic, is what it costs)."""
    batch, heads, _, head_dim = q.shape
    kv_heads = keys.size(1)
    groups = heads // kv_heads
    q = q.view(batch, kv_heads, groups, head_dim)
    scores = (q @ keys.transpose(-1, -2)).float().masked_fill(~visible, float("-inf"))  # [B, KV, H / KV, S]
    if shared is None:
        probs = (scores * head_dim**-0.5).softmax(-1).type_as(values)
        return (probs @ values).reshape(batch, heads * head_dim)
    shared_keys, shared_values = shared
    by_head = q.transpose(0, 1).reshape(kv_heads, batch * groups, head_dim)  # every row's queries of one kv head
    shared_scores = (by_head @ shared_keys.transpose(-1, -2)).float().view(kv_heads, batch, groups, -1)
    probs = (torch.cat([shared_scores.transpose(0, 1), scores], -1) * head_dim**-0.5).softmax(-1).type_as(values)
    prefix = shared_keys.size(1)
    shared_out = probs[..., :prefix].transpose(0, 1).reshape(kv_heads, batch * groups, prefix) @ shared_values
    out = probs[..., prefix:] @ values + shared_out.view(kv_heads, batch, groups, head_dim).transpose(0, 1)
    return out.reshape(batch, heads * head_dim)


class DecodeStep:
    def __init__(self, model: Llama, shared: tuple[torch.Tensor, torch.Tensor] | None = None):
        """shared: the keys and values, [layers, 1, KV, P, hd], of a prefix that fills slots 0 to P - 1 of every row
        of the caches this step decodes (generation.cache_after puts a prefix's first piece there): attended once for
        all rows (`attend`), the rows' copies of it skipped."""
        config = model.config
        self.model, self.config = model, config
        self.skipped = shared[0].size(3) if shared is not None else 0  # the slots `shared` holds in every row
        # each layer's (keys, values) [KV, P, hd] of the shared prefix, or None
        self.shared = [(shared[0][layer, 0], shared[1][layer, 0]) if shared is not None else None
                       for layer in range(config.n_layers)]
        self.q_width = config.n_heads * config.head_dim
        self.kv_width = config.n_kv_heads * config.head_dim
        with torch.no_grad():  # (the stacked copies are not parameters: they take no gradient)
            self.layers = [(
                block.attn_norm.weight,
                torch.cat([block.attn.q_proj.weight, block.attn.k_proj.weight, block.attn.v_proj.weight]),
                block.attn.o_proj.weight,
                block.mlp_norm.weight,
                torch.cat([block.mlp.gate_proj.weight, block.mlp.up_proj.weight]),
                block.mlp.down_proj.weight,
            ) for block in model.layers]

    def __call__(self, tokens: torch.Tensor, active: torch.Tensor, cache: KVCache,
                 slots: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B] (one new token per row), active [B] bool (False: padding for a finished row) -> fp32 logits
        [B, vocab] of the next token; the cache gains the tokens' keys and values, in slot cache.length of every
        row, or in `slots` [B], each row's own (a row that joined a running batch writes behind the others)."""
        config, model = self.config, self.model
        B, heads, kv_heads, hd = tokens.shape[0], config.n_heads, config.n_kv_heads, config.head_dim
        at = torch.arange(B, device=tokens.device)
        if slots is None:
            slots = torch.full((B,), cache.length, dtype=torch.long, device=tokens.device)
        width = int(slots.max()) + 1  # the slots any row attends to
        if width > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; {width} requested")
        cache.key_mask[at, slots] = active
        # the new token attends to the real tokens before it and always to itself (as in Llama.forward: a padding
        # query never has an empty row)
        mask = cache.key_mask[:, :width].clone()
        mask[at, slots] = True
        start = self.skipped
        mask = mask[:, None, None, start:]  # [B, 1, 1, width - start]
        cos, sin = rope_cos_sin(cache.next_pos[:, None, None], hd, config.rope_theta)  # [B, 1, 1, hd]

        x = model.embed(tokens)  # [B, dim]
        for layer, (attn_norm, qkv_weight, o_weight, mlp_norm, gate_up_weight, down_weight) in enumerate(self.layers):
            qkv = F.linear(F.rms_norm(x.float(), (x.size(-1),), eps=config.norm_eps).type_as(x) * attn_norm,
                           qkv_weight)
            qk = apply_rope(qkv[:, : self.q_width + self.kv_width].view(B, heads + kv_heads, 1, hd), cos, sin)
            q, k = qk[:, :heads], qk[:, heads:]  # [B, H, 1, hd], [B, KV, 1, hd]
            cache.k[layer, at, :, slots] = k[:, :, 0]
            cache.v[layer, at, :, slots] = qkv[:, self.q_width + self.kv_width :].view(B, kv_heads, hd)
            out = attend(q, cache.k[layer, :, :, start:width], cache.v[layer, :, :, start:width], mask,
                         self.shared[layer])
            x = x + F.linear(out, o_weight)
            gate, up = F.linear(F.rms_norm(x.float(), (x.size(-1),), eps=config.norm_eps).type_as(x) * mlp_norm,
                                gate_up_weight).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_weight)
        cache.length = max(cache.length, width)
        cache.next_pos = cache.next_pos + active.long()
        return model.lm_head(model.norm(x)).float()
