"""The teacher in int8: how far dynamic int8 quantization moves SmolLM2's next-token distribution, and how much
faster it makes a decoding step -- the measurement behind docs/benchmarks.md's choice not to quantize the teacher.

    python -m benchmarks teacher_int8 [--steps 10] [--rows 64] [--repeats 5] [--threads 1]

The contexts are the teacher's own: the chat contexts of the few-shot examples' mother turns, as it samples child
replies after them. The fp32 teacher (our Llama, llamalogue.hf.from_hf) samples --steps tokens after each at
temperature 0.7; every variant is then fed the same tokens, and at each step its next-token distribution at
temperature 0.7 is compared with fp32's:

    KL(p_fp32 || p_variant) = sum_v p_fp32(v) (log p_fp32(v) - log p_variant(v))      (nats per token, mean)

and the share of steps whose most probable token is fp32's ("top-1 agrees"). Speed: one decoding step of --rows rows
after a context of the contexts' longest length, the variant against fp32 in turns (median_seconds).

The variants (torch.ao.quantization.quantize_dynamic: int8 weights per output channel, activations quantized per
call, fbgemm):
    bf16            every weight in bfloat16 (the sampler where bf16 products are native)
    int8            every matrix product of the blocks and the output layer in int8
    int8 head       the output layer alone (49,152 x 576, a third of a step)
    smoothquant     int8 everywhere after SmoothQuant (Xiao et al. 2023): each input channel j of the attention and
                    MLP input products scaled by s_j = max|X_j|^a / max|W_j|^(1-a), a = 0.5, max|X_j| from the
                    contexts' prefill, the 1/s_j folded into the RMSNorm weight before it, so that outlier
                    activation channels lose less to one scale per row
    smoothquant-down  the same, with the MLP's down projection left in fp32 (its input has no norm to fold into)
"""

import argparse
import copy

import torch
import torch.nn as nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from benchmarks.common import machine
from llamalogue.hf import from_hf
from llamalogue.measured_speed import median_seconds
from llamalogue.model import KVCache
from llamalogue.teacher.few_shot import DEFAULT_EXAMPLES
from llamalogue.teacher.llm import Teacher

TEMPERATURE = 0.7
ALPHA = 0.5  # SmoothQuant's migration strength


def quantized(model, chosen=lambda name: True):
    """A copy of model whose nn.Linear modules named `chosen` run in int8."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and chosen(name)]
    return quantize_dynamic(copy.deepcopy(model), {name: per_channel_dynamic_qconfig for name in names})


def input_maxima(model, tokens, mask) -> dict[str, torch.Tensor]:
    """max |X_j| over the real tokens of the prefill, per input channel, of every attention and MLP input product."""
    maxima, hooks = {}, []
    for i, block in enumerate(model.layers):
        for name, module in ((f"{i}.attn", block.attn.q_proj), (f"{i}.mlp", block.mlp.gate_proj)):
            def keep(_, inputs, __, name=name):
                x = inputs[0][mask.bool()].abs().amax(0)
                maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
            hooks.append(module.register_forward_hook(keep))
    with torch.no_grad():
        model(tokens, mask)
    for hook in hooks:
        hook.remove()
    return maxima


def smoothed(model, maxima: dict[str, torch.Tensor]):
    """A copy of model with SmoothQuant's scales: W_j * s_j in the products, the norm's weight / s_j before them."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            for norm, products, key in ((block.attn_norm, (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj),
                                         f"{i}.attn"),
                                        (block.mlp_norm, (block.mlp.gate_proj, block.mlp.up_proj), f"{i}.mlp")):
                weight_max = torch.stack([p.weight.abs().amax(0) for p in products]).amax(0)
                s = (maxima[key].clamp(min=1e-5) ** ALPHA / weight_max.clamp(min=1e-5) ** (1 - ALPHA))
                norm.weight.div_(s)
                for product in products:
                    product.weight.mul_(s)
    return model


def next_token_logprobs(model, tokens, mask, fed: list[torch.Tensor] | None, steps: int, seed: int):
    """(log p of each step's next token at TEMPERATURE [steps x rows x vocab], the tokens fed): sampled when fed is
    None, else the given ones."""
    rows, width = tokens.shape
    cache = KVCache(model.config, rows, width + steps, tokens.device, dtype=next(model.parameters()).dtype)
    generator = torch.Generator().manual_seed(seed)
    logprobs, chosen = [], []
    with torch.no_grad():
        logits = model(tokens, mask, cache=cache)[:, -1].float()
        for step in range(steps):
            logprob = (logits / TEMPERATURE).log_softmax(-1)
            token = fed[step] if fed else torch.multinomial(logprob.exp(), 1, generator=generator)[:, 0]
            logprobs.append(logprob)
            chosen.append(token)
            logits = model(token[:, None], torch.ones(rows, 1, dtype=torch.long), cache=cache)[:, -1].float()
    return torch.stack(logprobs), chosen


def decode_step_call(model, rows: int, width: int):
    """One decoding step of `rows` rows after `width` cached tokens (what the keys and values hold does not change
    the step's time: the cache is marked full, not computed), the cache reset before each call."""
    cache = KVCache(model.config, rows, width + 1, "cpu", dtype=next(model.parameters()).dtype)
    token = torch.zeros(rows, 1, dtype=torch.long)

    def step():
        cache.length, cache.next_pos = width, torch.full((rows,), width)
        cache.key_mask[:, :width] = True
        with torch.no_grad():
            model(token, cache=cache)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks teacher_int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="decoding steps compared per context")
    parser.add_argument("--rows", type=int, default=64, help="rows of the timed decoding step")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())

    teacher = Teacher(device="cpu", backend="llamalogue")
    fp32 = teacher.ours
    contexts = [teacher.context_ids(teacher.child_messages(mother)) for mother, _ in DEFAULT_EXAMPLES]
    tokens, mask = teacher.left_padded(contexts)
    reference, fed = next_token_logprobs(fp32, tokens, mask, None, args.steps, seed=0)
    maxima = input_maxima(fp32, tokens, mask)
    variants = {"bf16": lambda: from_hf(teacher.model, dtype=torch.bfloat16).requires_grad_(False),
                "int8": lambda: quantized(fp32),
                "int8 head": lambda: quantized(fp32, lambda name: name == "lm_head"),
                "smoothquant": lambda: quantized(smoothed(fp32, maxima)),
                "smoothquant-down": lambda: quantized(smoothed(fp32, maxima), lambda name: "down_proj" not in name)}
    print(f"teacher {teacher.id}: {len(contexts)} contexts of {min(map(len, contexts))}-{max(map(len, contexts))} "
          f"tokens, {args.steps} steps each at temperature {TEMPERATURE}; a decoding step of {args.rows} rows timed "
          f"against fp32's, median of {args.repeats}, {args.threads} thread(s)")
    print(f"  {'variant':18s} {'KL (nats/token)':>16s} {'top-1 agrees':>13s} {'step time vs fp32':>18s}")
    fp32_step = decode_step_call(fp32, args.rows, tokens.shape[1])
    for name, make in variants.items():
        model = make()
        logprobs, _ = next_token_logprobs(model, tokens, mask, fed, args.steps, seed=0)
        p = reference.exp()
        kl = (p * (reference - logprobs)).sum(-1).mean().item()
        agrees = (reference.argmax(-1) == logprobs.argmax(-1)).float().mean().item()
        median = median_seconds({"fp32": fp32_step, name: decode_step_call(model, args.rows, tokens.shape[1])},
                                args.repeats)
        print(f"  {name:18s} {kl:16.4f} {agrees:12.1%} {median['fp32'] / median[name]:17.2f}x")


if __name__ == "__main__":
    main()
