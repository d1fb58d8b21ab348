"""The pretraining loss: the output layer and the next-token cross-entropy fused, so that the N x vocab logits are
never held at once.

    loss = mean_i [ logsumexp(W h_i) - (W h_i)[y_i] ]

`next_token_loss(net, x, y)` equals `cross_entropy(lm_head(net(x)), y)` (tests/test_pretraining.py) with far less
memory traffic; under bfloat16 autocast the products run in bf16 and the loss is accumulated in fp32.
"""

import torch

from llamalogue.checkpoint import unwrap


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
        chunk = max(256, 2**24 // weight.shape[0])  # ~16M logits (64 MB in fp32) at a time
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = torch.zeros_like(weight) if with_grad else None
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            h, y = hidden[start : start + chunk].to(compute_dtype), targets[start : start + chunk]
            logits = (h @ w.T).float()
            top = logits.amax(dim=-1, keepdim=True)  # subtracted before exp: no overflow
            exp = (logits - top).exp_()
            norm = exp.sum(dim=-1, keepdim=True)
            total += ((top + norm.log()).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if with_grad:
                g = exp.div_(norm * n)  # softmax / n
                g[torch.arange(len(y), device=y.device), y] -= 1 / n
                g = g.to(compute_dtype)
                grad_hidden[start : start + chunk] = g @ w
                grad_weight += (g.T @ h).float()
        if with_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
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
