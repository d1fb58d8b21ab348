"""Pretraining: next-token prediction on child-caregiver dialogue, one loop read top to bottom (as nanoGPT's train.py).

The data are the corpus stage's triplets (three consecutive turns, `*MOT: ... *CHI: ... *MOT: ...`). Each triplet
becomes one sequence [BOS] tokens [EOS]; the sequences are concatenated into one long token stream (DIR/<split>.bin,
uint16, built on first use) and cut into windows of max_seq_len + 1 tokens that overlap by one token, so that every
token after the first is predicted exactly once per epoch. A window may span the end of one triplet and the start of
the next: EOS/BOS mark the border, as in GPT-style packing.

One optimisation step:

    for each of grad_accum micro-batches:   loss = cross_entropy(model(x), y) / grad_accum;  loss.backward()
    clip the gradient norm to grad_clip;    AdamW step;    learning rate = warmup then cosine (lr_at)

where cross_entropy(model(x), y) is computed by `next_token_loss`, which fuses the output layer and the loss and
never holds all the logits at once (`LinearCrossEntropy`). Under bfloat16 autocast (CUDA, and CPUs with bf16
instructions) the matrix products run in bf16, the weights, the residual stream and the loss stay in fp32.

Everything a run needs to continue exactly is in its checkpoint: weights, AdamW moments, the scheduler's step and the
RNG states. The data order is a function of (seed, epoch), so the step number alone says where in the data the run
was. Hence N steps, then `--resume` for N more, equals 2N steps in one go, bit for bit on CPU.

Several processes (`torchrun --nproc_per_node=K train_lm.py ...`): each process is one DistributedDataParallel
replica and takes its own slice of every global batch; gradients are averaged across processes, so K processes with
batch B train like one process with batch K*B. Only rank 0 logs and writes the checkpoint.
"""

import dataclasses
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from llamalogue.checkpoint import is_run_dir, load_config, load_state, save_checkpoint, unwrap
from llamalogue.corpus import DEFAULT_CHILDES, read_documents, build_corpus, read_prompts
from llamalogue.generation import generate
from llamalogue.milestones import save_milestones
from llamalogue.model import Llama, ModelConfig, default_device
from llamalogue.runlog import RunLog, plot_curves
from llamalogue.tokenizer import Tokenizer, format_prompt, reply_stop_ids


class TrainingError(Exception):
    """A run that cannot start or go on; the message names the file or argument at fault."""


@dataclass
class TrainConfig:
    preset: str = "small"  # the ModelConfig preset of the model trained
    batch_size: int = 32  # windows per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimisation step
    epochs: float = 10.0  # passes over the training split (the paper: 10; `small` on CPU: 6); fixes the LR schedule
    max_steps: int = 0  # stop after this step (0: at the end of the schedule); `--resume` can go on from there
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only: never on norms or the embedding
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 200  # steps between validation runs and checkpoints (also at the end of every epoch)
    eval_tokens: int = 100_000  # validation tokens scored each time (the first windows of val.bin)
    log_every: int = 10  # steps between log.csv rows
    seed: int = 1337
    dtype: str = "auto"  # auto: bfloat16 autocast on CUDA and bf16-capable CPUs (autocast_dtype) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    samples: int = 5  # replies generated to real caregiver prompts at the end
    milestones: tuple[int, ...] = ()  # training-token counts at which to keep a checkpoint (llamalogue.milestones)

    @classmethod
    def preset_config(cls, name: str, **overrides) -> "TrainConfig":
        """A preset with some options changed (None: keep the preset's)."""
        if name not in PRESETS:
            raise TrainingError(f"--preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
        return cls(**PRESETS[name]).replace(**overrides)

    @classmethod
    def from_run(cls, run_dir, **overrides) -> "TrainConfig":
        """The configuration a run was trained with (to resume it), with some options changed."""
        if not is_run_dir(run_dir):
            raise TrainingError(f"--resume: {run_dir} holds no checkpoint to resume")
        return cls(**load_config(run_dir)["train"]).replace(**overrides)

    def replace(self, **overrides) -> "TrainConfig":
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TrainingError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# tiny: tests (seconds). small: the CPU default: 6 epochs of the embedded sample (~3M tokens) fit in ~5-6 minutes on
# 2 cores; the paper's 10 epochs on the full corpus are `--epochs 10` (as scripts/gpu_run.sh does). paper: the GPU
# run on the full CHILDES pretraining split (~10M tokens; 10 epochs).
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=8, epochs=1, lr=3e-3, warmup_steps=5, eval_every=20, eval_tokens=4_000,
                 log_every=5, samples=2),
    "small": dict(preset="small", batch_size=32, epochs=6, lr=2e-3, warmup_steps=100, eval_every=200,
                  eval_tokens=50_000),
    "paper": dict(preset="paper", batch_size=64, epochs=10, lr=1e-3, warmup_steps=500, eval_every=1000,
                  eval_tokens=500_000, log_every=50),
}


# What a resumed run may change: where it stops, how often it reports, and speed-only settings. (A new `epochs`
# changes the schedule's length: allowed, to extend a run.)
RESUME_MAY_CHANGE = {"epochs", "max_steps", "eval_every", "eval_tokens", "log_every", "compile", "samples",
                     "milestones"}


# ----------------------------------------------------------------------------------------------------------------
# Data


def tokenized_split(data_dir: Path, split: str, tokenizer: Tokenizer) -> np.ndarray:
    """DIR/<split>.bin: every triplet of DIR/<split>.txt as [BOS] ... [EOS], concatenated, as uint16.

    Built on first use and rebuilt when the text or the tokenizer is newer; a .bin without its .txt (data carried
    to another machine pre-tokenized) is used as it is.
    """
    text, cache = data_dir / f"{split}.txt", data_dir / f"{split}.bin"
    newest_input = max(text.stat().st_mtime, Path(tokenizer.model_path).stat().st_mtime) if text.exists() else 0
    if cache.exists() and cache.stat().st_mtime >= newest_input:
        return np.fromfile(cache, dtype=np.uint16)
    if not text.exists():
        raise TrainingError(f"{text}: missing (build the data with `python -m llamalogue.corpus --out {data_dir}`)")
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise TrainingError(f"{tokenizer.model_path}: vocabulary of {tokenizer.vocab_size} does not fit uint16")
    documents = read_documents(text)
    if not documents:
        raise TrainingError(f"{text}: no triplets (blank-line separated blocks) in it")
    ids = [[tokenizer.bos_id, *doc, tokenizer.eos_id] for doc in tokenizer.encode_batch(documents)]
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=np.uint16)
    tmp = cache.with_name(cache.name + ".tmp")
    tokens.tofile(tmp)
    os.replace(tmp, cache)
    return tokens


class Windows:
    """A token stream cut into windows of seq_len + 1 tokens (inputs and the targets shifted by one)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, device):
        self.tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.seq_len = seq_len
        self.count = (len(tokens) - 1) // seq_len
        self.offsets = torch.arange(seq_len + 1, device=device)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tokens[indices.to(self.tokens.device)[:, None] * self.seq_len + self.offsets]
        return rows[:, :-1], rows[:, 1:]


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The window order of an epoch: a permutation that depends only on (seed, epoch), so resuming needs no state."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


# ----------------------------------------------------------------------------------------------------------------
# Optimisation


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to min_lr_ratio at total_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: Llama, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the linear layers' matrices only (not on norms, not on the (tied) embedding).
    fused: one kernel updates all parameters (CPU and CUDA)."""
    decay, no_decay = [], []
    embedding = model.embed.weight
    for p in model.parameters():
        (decay if p.dim() == 2 and p is not embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


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
    def forward(ctx, hidden, weight, targets, compute_dtype):
        n = hidden.shape[0]
        chunk = max(256, 2**24 // weight.shape[0])  # ~16M logits (64 MB in fp32) at a time
        with_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
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
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def next_token_loss(net, x, y) -> torch.Tensor:
    """Mean cross-entropy of predicting y from x. `net` may be wrapped (DDP, torch.compile); under autocast the
    output layer's products run in the autocast dtype, as lm_head's would."""
    model = unwrap(net)
    hidden = net(x, compute_logits=False)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return LinearCrossEntropy.apply(hidden.flatten(0, 1), model.lm_head.weight, y.flatten(), dtype)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def autocast_dtype(config: TrainConfig, device: str):
    """None (plain float32) or the autocast dtype. auto: bfloat16 on CUDA and on CPUs with bf16 instructions, where
    benchmarks/train.py measures it faster than float32 with the same loss curve; float32 on other CPUs, where
    bfloat16 matrix products are emulated and slow."""
    if config.dtype not in ("auto", "float32", "bfloat16"):
        raise TrainingError(f"--dtype {config.dtype!r}: choose auto, float32 or bfloat16")
    if config.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") or cpu_has_bf16() else None
    return torch.bfloat16 if config.dtype == "bfloat16" else None


@torch.no_grad()
def evaluate(model, windows: Windows, config: TrainConfig, autocast, rank: int, world: int) -> float:
    """Mean next-token loss on the first eval_tokens of the validation windows (all processes share the work)."""
    model.eval()
    count = min(windows.count, max(1, config.eval_tokens // windows.seq_len))
    indices = torch.arange(count)[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=windows.tokens.device)  # summed loss, tokens
    for start in range(0, len(indices), config.batch_size):
        x, y = windows.batch(indices[start : start + config.batch_size])
        with autocast:
            total[0] += next_token_loss(model, x, y).double() * y.numel()
        total[1] += y.numel()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


# ----------------------------------------------------------------------------------------------------------------
# The run


def prepare_data(data_dir: Path, childes: list[Path] | None, rank: int, world: int):
    """The tokenizer and the train/val token streams; builds the corpus (rank 0) when DIR lacks it."""
    has_split = all((data_dir / f"{s}.txt").exists() or (data_dir / f"{s}.bin").exists() for s in ("train", "val"))
    if rank == 0 and not ((data_dir / "tokenizer.model").exists() and has_split):
        print(f"{data_dir}: no corpus yet; building it from {' '.join(map(str, childes or [DEFAULT_CHILDES]))}")
        build_corpus(childes, data_dir)
    if world > 1:
        dist.barrier()
    tokenizer = Tokenizer(data_dir / "tokenizer.model")
    if rank == 0:
        splits = {s: tokenized_split(data_dir, s, tokenizer) for s in ("train", "val")}
    if world > 1:
        dist.barrier()
    if rank != 0:
        splits = {s: tokenized_split(data_dir, s, tokenizer) for s in ("train", "val")}
    return tokenizer, splits["train"], splits["val"]


def distributed_setup(device: str | None):
    """(rank, world size, device): torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them, one process."""
    device = device or default_device()
    if "RANK" not in os.environ:
        return 0, 1, device
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def sample_replies(model, tokenizer: Tokenizer, prompts: list[str], seed: int) -> list[tuple[str, str]]:
    """Replies of the model to caregiver prompts, as in dialogue: [BOS] *MOT: prompt \\n *CHI: -> reply."""
    contexts = [format_prompt(tokenizer, p) for p in prompts]
    out = generate(model, contexts, max_new_tokens=30, temperature=0.7, top_p=0.9, stop_ids=reply_stop_ids(tokenizer),
                   generator=torch.Generator(device=model.embed.weight.device).manual_seed(seed))
    return [(p, tokenizer.decode(ids).strip()) for p, ids in zip(prompts, out.tokens)]


def train(config: TrainConfig, data_dir, out_dir, resume: bool = False, overwrite: bool = False,
          childes: list[Path] | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Pretrain a model; returns a summary (steps, tokens, losses, tokens/s, wall time). See the module docstring."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if resume:
        saved = TrainConfig.from_run(out_dir)
        changed = [f.name for f in fields(config) if f.name not in RESUME_MAY_CHANGE
                   and getattr(config, f.name) != getattr(saved, f.name)]
        if changed:
            raise TrainingError(f"--resume {out_dir}: the run was trained with other {', '.join(changed)} "
                                f"({', '.join(f'{n}={getattr(saved, n)!r}' for n in changed)})")
    elif is_run_dir(out_dir) and not overwrite:
        raise TrainingError(f"--out {out_dir}: already holds a checkpoint; pass --resume to continue it, "
                            f"--overwrite to replace it, or another --out")

    rank, world, device = distributed_setup(device)
    main_process = rank == 0
    try:
        tokenizer, train_tokens, val_tokens = prepare_data(data_dir, childes, rank, world)
        torch.manual_seed(config.seed)  # the same initial weights in every process
        model_config = ModelConfig.preset(config.preset, vocab_size=tokenizer.vocab_size, dropout=config.dropout)
        model = Llama(model_config).to(device)
        train_windows = Windows(train_tokens, model_config.max_seq_len, device)
        val_windows = Windows(val_tokens, model_config.max_seq_len, device)
        windows_per_step = config.batch_size * config.grad_accum * world
        steps_per_epoch = train_windows.count // windows_per_step
        if steps_per_epoch == 0:
            raise TrainingError(f"{data_dir / 'train.bin'}: {len(train_tokens)} tokens make {train_windows.count} "
                                f"windows, fewer than one batch of {windows_per_step}")
        if val_windows.count == 0:
            raise TrainingError(f"{data_dir / 'val.bin'}: {len(val_tokens)} tokens, less than one window")
        total_steps = max(1, round(config.epochs * steps_per_epoch))
        stop_step = min(total_steps, config.max_steps) if config.max_steps > 0 else total_steps

        optimizer = make_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config, total_steps))
        step = 0
        if resume:
            state = load_state(out_dir, device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = state["step"]
            torch.set_rng_state(state["rng"]["torch"])
            if device.startswith("cuda") and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"])
        autocast_to = autocast_dtype(config, device)
        autocast = torch.autocast(device.split(":")[0], dtype=autocast_to) if autocast_to else nullcontext()
        net = torch.compile(model) if config.compile else model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if "cuda" in device else None)

        tokens_per_step = windows_per_step * model_config.max_seq_len
        scale = (f"preset {config.preset}: {model.num_parameters() / 1e6:.2f}M parameters, "
                 f"{len(train_tokens):,} training tokens ({data_dir}), {config.epochs:g} epochs = "
                 f"{total_steps:,} steps of {tokens_per_step:,} tokens ({world} process(es) x {config.grad_accum} x "
                 f"{config.batch_size} windows of {model_config.max_seq_len}), {device} {autocast_to or torch.float32}")
        run_config = {"train": asdict(config), "stage": "pretrain", "scale": scale, "data": str(data_dir),
                      "train_tokens": len(train_tokens), "val_tokens": len(val_tokens), "total_steps": total_steps}
        log = RunLog(out_dir, resume=resume) if main_process else None
        if main_process:
            log.write_config(run_config)
            print(scale)
            if stop_step < total_steps:
                print(f"stopping at step {stop_step:,} (--max-steps); `--resume` continues the same schedule")

        def save():
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                     "rng": {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state() if device.startswith("cuda") else None}}
            save_checkpoint(out_dir, model, tokenizer, run_config, state)

        interrupted = []  # Ctrl-C sets a flag; the loop finishes its step, saves and stops (a second one kills)
        previous_handler = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *_: (interrupted.append(1), signal.signal(signal.SIGINT, previous_handler)))

        bar = tqdm(total=stop_step, initial=step, unit="step", disable=not (progress and main_process),
                   dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
        net.train()
        start_time, window_time, window_steps = time.time(), time.perf_counter(), 0
        loss_sum = torch.zeros((), device=device)
        order, order_epoch, first_step = None, -1, step
        train_loss, last_val, last_val_step = float("nan"), float("nan"), step
        while step < stop_step:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(train_windows.count, config.seed, epoch), epoch
            block = order[position * windows_per_step : (position + 1) * windows_per_step]
            mine = block.view(world, config.grad_accum, config.batch_size)[rank]
            for micro, indices in enumerate(mine):
                x, y = train_windows.batch(indices)
                # Only the last micro-batch synchronises gradients across processes.
                sync = nullcontext() if world == 1 or micro == config.grad_accum - 1 else net.no_sync()
                with sync:
                    with autocast:
                        loss = next_token_loss(net, x, y) / config.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            bar.update(1)
            if main_process and config.milestones:
                for name in save_milestones(out_dir, model, tokenizer, run_config, config.milestones,
                                            (step - 1) * tokens_per_step, step * tokens_per_step, step):
                    bar.write(f"step {step:,}: milestone {name} saved ({step * tokens_per_step:,} tokens)")

            evaluate_now = step % config.eval_every == 0 or step % steps_per_epoch == 0 or step == stop_step
            stop_now = bool(interrupted)
            if world > 1:  # every process must agree to stop at the same step
                flag = torch.tensor(float(stop_now), device=device)
                dist.all_reduce(flag)
                stop_now = flag.item() > 0
            if step % config.log_every == 0 or evaluate_now or stop_now:
                train_loss = loss_sum.item() / window_steps
                if world > 1:
                    mean = torch.tensor(train_loss, device=device)
                    dist.all_reduce(mean)
                    train_loss = mean.item() / world
                if not math.isfinite(train_loss):
                    raise TrainingError(f"step {step}: training loss is {train_loss}; stopping. The last good "
                                        f"checkpoint in {out_dir} is kept (lower --lr or check the data)")
                val_loss = evaluate(net, val_windows, config, autocast, rank, world) if evaluate_now else None
                elapsed = time.perf_counter() - window_time
                tokens_per_s = window_steps * tokens_per_step / elapsed
                if main_process:
                    log.log({"step": step, "epoch": round(step / steps_per_epoch, 4), "tokens": step * tokens_per_step,
                             "train_loss": round(train_loss, 5),
                             "val_loss": "" if val_loss is None else round(val_loss, 5),
                             "val_ppl": "" if val_loss is None else round(math.exp(val_loss), 3),
                             "lr": f"{scheduler.get_last_lr()[0]:.3e}", "grad_norm": round(grad_norm.item(), 4),
                             "tokens_per_s": round(tokens_per_s), "elapsed_s": round(time.time() - start_time, 1)})
                    bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                    if val_loss is not None:
                        bar.write(f"step {step:,} (epoch {step / steps_per_epoch:.2f}): train loss {train_loss:.4f}, "
                                  f"val loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f})")
                window_time, window_steps = time.perf_counter(), 0
                loss_sum.zero_()
                if val_loss is not None:
                    last_val, last_val_step = val_loss, step
                if main_process and (evaluate_now or stop_now):
                    save()
            if stop_now:
                if main_process:
                    bar.write(f"interrupted: checkpoint at step {step:,} saved in {out_dir}; "
                              f"`--resume` continues from there")
                break
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)

        wall = time.time() - start_time
        seen = (step - first_step) * tokens_per_step
        summary = {"preset": config.preset, "step": step, "total_steps": total_steps,
                   "epochs": round(step / steps_per_epoch, 3), "tokens": step * tokens_per_step,
                   "train_loss": train_loss if step > first_step else None,
                   "val_loss": last_val if step > first_step else None, "seconds": round(wall, 1),
                   "tokens_per_s": round(seen / wall) if wall > 0 else 0, "interrupted": bool(interrupted)}
        if main_process and step > first_step:
            plot_curves(log.csv_path, ["train_loss", "val_loss"], out_dir / "loss.png",
                        f"llamalogue pretraining ({config.preset})")
            summary["val_ppl"] = math.exp(last_val)
            validation = (f"val loss {last_val:.4f} (ppl {summary['val_ppl']:.2f}) at step {last_val_step:,}"
                          if math.isfinite(last_val) else "no validation yet")
            if config.samples and not interrupted:
                summary["samples"] = write_samples(model, tokenizer, data_dir, out_dir, config)
            print(f"done: {scale}\n  trained {summary['epochs']} epochs ({step:,}/{total_steps:,} steps, "
                  f"{summary['tokens']:,} tokens) in {wall:.0f} s, {summary['tokens_per_s']:,} tokens/s; "
                  f"train loss {train_loss:.4f}; {validation}; "
                  f"checkpoint in {out_dir}")
        if world > 1:  # leave together, not one tearing down gloo while rank 0 still writes the plot and samples
            dist.barrier()  # (a rank once died of SIGABRT at the end of the 2-process test in CI; not reproduced)
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


def write_samples(model, tokenizer, data_dir: Path, out_dir: Path, config: TrainConfig) -> list[dict]:
    """Replies to the first caregiver prompts of DIR/prompts.txt (held out from pretraining): printed and saved."""
    prompts_file = data_dir / "prompts.txt"
    if not prompts_file.exists():
        return []
    prompts = read_prompts(prompts_file)[: config.samples]
    model.eval()
    replies = sample_replies(model, tokenizer, prompts, config.seed)
    with (out_dir / "samples.txt").open("w", encoding="utf-8") as f:
        for prompt, reply in replies:
            line = f"*MOT: {prompt}\n*CHI: {reply}\n"
            print(line, end="")
            f.write(line + "\n")
    return [{"prompt": p, "reply": r} for p, r in replies]
