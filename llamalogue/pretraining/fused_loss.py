"""The pretraining loss: the output layer and the next-token cross-entropy fused, so that the N x vocab logits are
never held at once.

    loss = mean_i [ logsumexp(W h_i) - (W h_i)[y_i] ]

`next_token_loss(net, x, y)` equals `cross_entropy(lm_head(net(x)), y)` (tests/test_pretraining.py) with far less
memory traffic; under bfloat16 autocast the products run in bf16 and the loss is accumulated in fp32.
"""

import torch

from llamalogue.checkpoint import unwrap


# rows per chunk: their probabilities (512 x vocab in fp32, 32 MB at a 16k vocabulary) stay near the CPU between the
# products and the softmax. Forward + backward of 4,096 rows, bf16 products, 2 cores: 128 rows 211 ms, 256 202,
# 512 186, 1,024 267, all at once 297.
CHUNK_ROWS = 512


class LinearCrossEntropy(torch.autograd.Function):
    """Mean next-token cross-entropy of logits = hidden @ weight^T, without ever holding all N x vocab logits.

    For row i with target y_i:   loss_i = logsumexp(z_i) - z_i[y_i],   z_i = W h_i,
    and its gradient is known in closed form:   d loss / d z_i = (softmax(z_i) - onehot(y_i)) / N.
    So the forward pass walks over chunks of rows, computes a chunk's logits, its loss, and right away the gradients
    that flow back through z = W h:   grad_h = g W,   grad_W += g^T h.   backward() only scales them by the
    incoming gradient. The logits are made and consumed chunk by chunk: far less memory traffic than
    `cross_entropy(lm_head(hidden))`, and the same numbers (tests/test_pretraining.py).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, with_grad: bool):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = torch.zeros_like(weight) if with_grad else None
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, CHUNK_ROWS):
            h, y = hidden[start : start + CHUNK_ROWS].to(compute_dtype), targets[start : start + CHUNK_ROWS]
            # softmax(z) in fp32; loss_i = -log softmax(z_i)[y_i], clamped where the target's probability underflows
            # (> 87 nats below the best token). The logits are cast first: torch.softmax(bf16, dtype=float32) gives
            # the same numbers slower (AMD EPYC, a 512 x 16,000 chunk alone: 12.6 ms against 4.6; the whole loss
            # of 4,096 rows: 365 against 347 ms)
            probs = (h @ w.T).float().softmax(dim=-1)
            rows = torch.arange(len(y), device=y.device)
            total -= probs[rows, y].clamp_min(torch.finfo(torch.float32).tiny).log().sum()
            if with_grad:  # n * d loss / d z = softmax(z) - onehot(y), formed in fp32 before the products' dtype
                # (in bf16 a probability near 1 rounds to 1, and 1 - p, the whole gradient of a well-predicted
                # token, would be lost); the 1/n is applied once, at the end
                probs[rows, y] -= 1
                g = probs.to(compute_dtype)
                grad_hidden[start : start + CHUNK_ROWS] = g @ w
                grad_weight += (g.T @ h).float()
        if with_grad:
            ctx.save_for_backward(grad_hidden.div_(n), grad_weight.div_(n))
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def next_token_loss(net, x, y) -> torch.Tensor:
    """Mean cross-entropy of predicting y from x. `net` may be wrapped (DDP, torch.compile); under autocast the
    output layer's products run in the autocast dtype, as lm_head's would."""
    model = unwrap(net)
    hidden = net(x, compute_logits=False)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # Under torch.no_grad() (validation) the gradients are never asked for: not computed. (Inside forward() grad
    # mode is always off and ctx.needs_input_grad says only what requires grad, so the caller must tell.)
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or model.lm_head.weight.requires_grad)
    return LinearCrossEntropy.apply(hidden.flatten(0, 1), model.lm_head.weight, y.flatten(), dtype, with_grad)
