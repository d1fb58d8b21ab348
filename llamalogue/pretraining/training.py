"""Pretraining: next-token prediction on child-caregiver dialogue, one loop read top to bottom (as nanoGPT's train.py).

The data are the corpus stage's triplets (three consecutive turns, `*MOT: ... *CHI: ... *MOT: ...`), packed into
one token stream and cut into windows (llamalogue.pretraining.data).

One optimisation step:

    for each of grad_accum micro-batches:   loss = cross_entropy(model(x), y) / grad_accum;  loss.backward()
    clip the gradient norm to grad_clip;    learning rate = warmup then cosine;    AdamW step

where cross_entropy(model(x), y) is computed by `next_token_loss`, which fuses the output layer and the loss and
never holds all the logits at once (llamalogue.pretraining.fused_loss). Under bfloat16 autocast the matrix products
run in bf16, the weights, the residual stream and the loss stay in fp32; whether that, and torch.compile, are faster
on this machine is measured when the run starts (llamalogue.pretraining.speed) and recorded in its config.

Everything a run needs to continue exactly is in its checkpoint: weights, AdamW moments, the step and the RNG states.
The learning rate and the data order are functions of the step (llamalogue.schedules: the rate is set by hand before
each optimizer step, an epoch's order is drawn from (seed, epoch)), so the step number alone says where the run was.
Hence N steps, then `--resume` for N more, equals 2N steps in one go, bit for bit on CPU.

Several processes (`torchrun --nproc_per_node=K train_lm.py ...`): each process is one DistributedDataParallel
replica and takes its own slice of every global batch (llamalogue.pretraining.processes). Only rank 0 logs and writes
the run folder.
"""

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from llamalogue.checkpoint import load_state, save_checkpoint
from llamalogue.corpus.dialogue_files import read_prompts
from llamalogue.generation import sample_replies
from llamalogue.model import Llama, ModelConfig
from llamalogue.presets import Presets
from llamalogue.pretraining.data import DEFAULT_DATA, Windows, corpus_source, prepare_data
from llamalogue.pretraining.fused_loss import next_token_loss
from llamalogue.pretraining.milestones import save_milestones, word_milestones_in_tokens
from llamalogue.pretraining.processes import distributed_setup, mean_over_processes, same_windows_per_step
from llamalogue.pretraining.speed import COMPILE_CHOICES, autocast_context, speed_of_the_run
from llamalogue.run_dir import (CHECKPOINT, CONFIG, RunError, StopOnCtrlC, check_inputs, clear_run, data_inputs,
                                open_run, recorded_data, write_json, write_text)
from llamalogue.runlog import RunLog, plot_curves
from llamalogue.schedules import epoch_order, learning_rate, set_learning_rate
from llamalogue.word_budget import text_words, words_at


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


@dataclass
class TrainConfig(Presets):
    preset: str = "small"  # the ModelConfig preset of the model trained
    batch_size: int = 32  # windows per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimisation step
    epochs: float = 10.0  # passes over the training split (the paper: 10; `small` on CPU: 6); fixes the LR schedule
    max_steps: int = 0  # stop after this step (0: at the end of the schedule); `--resume` can go on from there
    minutes: float = 0.0  # a time budget: the schedule ends at the epochs that fit (at most `epochs`); 0: none
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
    dtype: str = "auto"  # bfloat16 autocast | float32 | auto: the faster here, measured (llamalogue.pretraining.speed)
    compile: str = "auto"  # on | off | auto: when the run is long enough for the compile to pay (speed.py)
    samples: int = 5  # replies generated to real caregiver prompts at the end
    milestones: tuple[int, ...] = ()  # training-token counts at which to keep a checkpoint (milestones.py)
    milestone_words: tuple[int, ...] = ()  # the same in words seen, turned into tokens at the training text's rate

    presets = PRESETS
    # What a resumed run may change: where it stops, how often it reports, and speed-only settings. (A new `epochs`
    # changes the schedule's length: allowed, to extend a run.)
    resume_may_change = frozenset({"epochs", "max_steps", "eval_every", "eval_tokens", "log_every", "compile",
                                   "samples", "milestones", "milestone_words"})

    def __post_init__(self):
        self.check_at_least(1, "batch_size", "grad_accum", "eval_every", "eval_tokens", "log_every")
        self.check_at_least(0, "max_steps", "warmup_steps", "samples", "minutes")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"--epochs {self.epochs} and --lr {self.lr}: must be positive")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"--compile {self.compile!r}: choose {', '.join(COMPILE_CHOICES)}")


@dataclass
class RunFolders:
    """Where a run is written, what it reads, and how its folder is opened: train_lm.py's --out, --data, --childes,
    --resume and --overwrite."""
    out: Path
    data: Path | None = None  # the corpus folder; None: the run's own when resuming, else DEFAULT_DATA
    childes: list[Path] | None = None  # transcripts to build `data` from when it holds no corpus yet (new runs)
    resume: bool = False  # continue the checkpoint in `out` exactly, with the run's own data and settings
    overwrite: bool = False  # replace the run in `out`


# ----------------------------------------------------------------------------------------------------------------
# Opening the run


def run_settings(given: TrainConfig | dict, record: dict | None) -> TrainConfig:
    """A new run's settings are the TrainConfig given. A resumed run keeps its own (record["train"]), changed only
    where TrainConfig.resume_may_change allows by the options given: a dict of them, or a TrainConfig whose every
    field counts as given. Not given, max_steps is 0: on to the end of the schedule."""
    if record is None:
        if not isinstance(given, TrainConfig):
            raise TypeError("a new run needs a TrainConfig (TrainConfig.from_preset), not options alone")
        return given
    options = asdict(given) if isinstance(given, TrainConfig) else {"max_steps": 0, **given}
    return TrainConfig.from_saved(record["train"], **options)


def run_corpus(folders: RunFolders, record: dict | None) -> tuple[Path, list[Path] | None]:
    """The corpus folder and the transcripts to build it from when it holds none. A resumed run reads its own (the
    recorded one, unless --data names it), and never builds one."""
    if record is None:
        return corpus_source(folders.data, folders.childes)
    return Path(folders.data or recorded_data(record) or DEFAULT_DATA), None


def steps_per_epoch(train_windows: Windows, val_windows: Windows, windows_per_step: int, data_dir: Path) -> int:
    """Optimisation steps in one pass over the training windows; a RunError naming the split too small to train on."""
    if train_windows.count < windows_per_step:
        raise RunError(f"{data_dir / 'train.bin'}: {len(train_windows.tokens)} tokens make {train_windows.count} "
                       f"windows, fewer than one batch of {windows_per_step}")
    if val_windows.count == 0:
        raise RunError(f"{data_dir / 'val.bin'}: {len(val_windows.tokens)} tokens, less than one window")
    return train_windows.count // windows_per_step


# ----------------------------------------------------------------------------------------------------------------
# Optimisation


def make_optimizer(model: Llama, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the linear layers' matrices only (not on norms, not on the (tied) embedding).
    fused: one kernel updates all parameters (CPU and CUDA)."""
    decay, no_decay = [], []
    embedding = model.embed.weight
    for p in model.parameters():
        (decay if p.dim() == 2 and p is not embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


def accumulate_gradients(net, windows: Windows, micro_batches: torch.Tensor, autocast) -> torch.Tensor:
    """The gradients of one step: each micro-batch of window indices adds loss / grad_accum. Returns the step's
    loss. Under DistributedDataParallel only the last micro-batch synchronises the gradients across processes."""
    step_loss = torch.zeros((), device=windows.tokens.device)
    for micro, indices in enumerate(micro_batches):
        x, y = windows.batch(indices)
        last = micro == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
            with autocast:
                loss = next_token_loss(net, x, y) / len(micro_batches)
            loss.backward()
        step_loss += loss.detach()
    return step_loss


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


def training_state(optimizer, step: int, device: str) -> dict:
    """What a checkpoint holds besides the weights, so that --resume goes on bit for bit (module docstring)."""
    return {"optimizer": optimizer.state_dict(), "step": step,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device.startswith("cuda") else None}}


def resumable_state(out_dir: Path) -> dict:
    """The run's checkpoint, which must hold the training state besides the weights. Loaded on the CPU: the RNG
    states must be CPU tensors, and restore's load_state_dict calls move the rest to the model's device."""
    state = load_state(out_dir)
    if "optimizer" not in state:  # a weights-only copy (for evaluation or --init) holds nothing to go on from
        raise RunError(f"--resume {out_dir}: its {CHECKPOINT} holds the weights only, not the training state; "
                       f"it can be evaluated (evaluate.py --model) or aligned (--init), not resumed")
    return state


def restore(state: dict, model, optimizer, device: str) -> int:
    """Put a checkpoint's weights, AdamW moments and RNG states back; returns its step (the learning rate and the
    data order follow from the step alone)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.startswith("cuda") and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return state["step"]


# ----------------------------------------------------------------------------------------------------------------
# The run


def record_progress(run_config: dict, step: int, tokens_per_step: int) -> None:
    """The run's record at `step`: the training tokens seen, and the words (llamalogue.word_budget.words_at)."""
    run_config["tokens"] = step * tokens_per_step
    words = run_config["train_words"]
    run_config["words_seen"] = None if words is None else words_at(run_config["tokens"], run_config["train_tokens"],
                                                                    words)


def train(config: TrainConfig | dict, folders: RunFolders, device: str | None = None, progress: bool = True) -> dict:
    """Pretrain a model; returns a summary (steps, tokens, losses, tokens/s, wall time). See the module docstring.

    config: a new run's TrainConfig; resuming, the options given (run_settings). The run folder's rules (new,
    --overwrite, --resume with the run's own data and settings) are llamalogue.run_dir's."""
    rank, world, device = distributed_setup(device)
    main_process = rank == 0
    out_dir = Path(folders.out)
    try:
        # The run folder, its settings and its data: every check before anything is written in out_dir.
        record = open_run(out_dir, "pretrain", folders.resume, folders.overwrite, prepare=False,
                          protected={"--data": folders.data or DEFAULT_DATA})
        config = same_windows_per_step(run_settings(config, record), record, world)
        state = resumable_state(out_dir) if record else None
        data_dir, childes = run_corpus(folders, record)
        tokenizer, train_tokens, val_tokens = prepare_data(data_dir, childes, rank, world)
        train_words = text_words(data_dir / "train.txt")  # the word budget (llamalogue.word_budget)
        if config.milestone_words:  # milestones in words, kept where the tokens say
            config = replace(config, milestones=tuple(sorted({*config.milestones, *word_milestones_in_tokens(
                config.milestone_words, len(train_tokens), train_words, data_dir)})))
        if record:
            check_inputs(out_dir, record, data_inputs(data_dir))
        elif main_process:
            clear_run(out_dir)

        # The model and the optimizer; resuming, their saved state.
        torch.manual_seed(config.seed)  # the same initial weights in every process
        model_config = ModelConfig.preset(config.preset, vocab_size=tokenizer.vocab_size, dropout=config.dropout)
        model = Llama(model_config).to(device)
        optimizer = make_optimizer(model, config)
        step = restore(state, model, optimizer, device) if record else 0

        # The schedule: each step trains on windows_per_step windows; the epochs fix the number of steps.
        train_windows = Windows(train_tokens, model_config.max_seq_len, device)
        val_windows = Windows(val_tokens, model_config.max_seq_len, device)
        windows_per_step = config.batch_size * config.grad_accum * world
        tokens_per_step = windows_per_step * model_config.max_seq_len
        epoch_steps = steps_per_epoch(train_windows, val_windows, windows_per_step, data_dir)
        total_steps = max(1, round(config.epochs * epoch_steps))
        stop_step = min(total_steps, config.max_steps) if config.max_steps > 0 else total_steps

        # bf16 autocast or fp32, compiled or eager: measured by rank 0 (speed.py), whose choice every process takes.
        net, speed = speed_of_the_run(model, (config.batch_size, model_config.max_seq_len), config,
                                      (stop_step - step) * config.grad_accum, device, record, rank, world)
        if "steps" in speed and speed["steps"] < total_steps * config.grad_accum:
            # a time budget: the epochs that fit, recorded, so that --resume keeps this schedule
            total_steps = max(1, speed["steps"] // config.grad_accum)
            stop_step = min(total_steps, stop_step)
            config = replace(config, epochs=total_steps / epoch_steps)
        autocast = autocast_context(speed["dtype"], device)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if "cuda" in device else None)

        scale = (f"preset {config.preset}: {model.num_parameters() / 1e6:.2f}M parameters, "
                 f"{len(train_tokens):,} training tokens ({data_dir}), {config.epochs:g} epochs = "
                 f"{total_steps:,} steps of {tokens_per_step:,} tokens ({world} process(es) x {config.grad_accum} x "
                 f"{config.batch_size} windows of {model_config.max_seq_len}), {device} {speed['dtype']}"
                 f"{', compiled' if speed['compile_seconds'] is not None else ''}")
        run_config = {"train": asdict(config), "stage": "pretrain", "scale": scale, "inputs": data_inputs(data_dir),
                      "train_tokens": len(train_tokens), "val_tokens": len(val_tokens), "total_steps": total_steps,
                      "train_words": train_words, "speed": speed, "windows_per_step": windows_per_step}
        record_progress(run_config, step, tokens_per_step)
        log = RunLog(out_dir, resume_step=step if record else None) if main_process else None
        if main_process:
            if not record:  # a resumed run's record is rewritten with its next checkpoint
                write_json(out_dir / CONFIG, run_config)
            print(scale)
            print(speed["why"])
            if stop_step < total_steps:
                print(f"stopping at step {stop_step:,} (--max-steps); `--resume` continues the same schedule")

        # The loop.
        bar = tqdm(total=stop_step, initial=step, unit="step", disable=not (progress and main_process),
                   dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
        net.train()
        start_time, window_time, window_steps, first_step = time.time(), time.perf_counter(), 0, step
        loss_sum = torch.zeros((), device=device)
        train_loss, last_val, last_val_step = float("nan"), float("nan"), step
        with StopOnCtrlC() as ctrl_c:  # the loop finishes its step, saves and stops (a second Ctrl-C kills)
            while step < stop_step:
                epoch, position = divmod(step, epoch_steps)
                block = epoch_order(train_windows.count, config.seed, epoch)[
                    position * windows_per_step : (position + 1) * windows_per_step]
                mine = block.view(world, config.grad_accum, config.batch_size)[rank]  # this process's share
                loss_sum += accumulate_gradients(net, train_windows, mine, autocast)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                lr = learning_rate(step, total_steps, config.lr, config.warmup_steps, decay="cosine",
                                   min_ratio=config.min_lr_ratio)
                set_learning_rate(optimizer, lr)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_steps += 1
                bar.update(1)
                record_progress(run_config, step, tokens_per_step)
                if main_process:
                    for name in save_milestones(out_dir, model, tokenizer, run_config, step, tokens_per_step):
                        bar.write(f"step {step:,}: milestone {name} saved ({step * tokens_per_step:,} tokens)")

                evaluate_now = step % config.eval_every == 0 or step % epoch_steps == 0 or step == stop_step
                stop_now = mean_over_processes(float(ctrl_c.requested), world, device) > 0  # all stop together
                if step % config.log_every == 0 or evaluate_now or stop_now:
                    train_loss = mean_over_processes(loss_sum.item() / window_steps, world, device)
                    if not math.isfinite(train_loss):
                        raise RunError(f"step {step}: training loss is {train_loss}; stopping. The last good "
                                       f"checkpoint in {out_dir} is kept (lower --lr or check the data)")
                    val_loss = evaluate(net, val_windows, config, autocast, rank, world) if evaluate_now else None
                    tokens_per_s = window_steps * tokens_per_step / (time.perf_counter() - window_time)
                    if main_process:
                        log.log({"step": step, "epoch": round(step / epoch_steps, 4),
                                 "tokens": step * tokens_per_step, "train_loss": round(train_loss, 5),
                                 "val_loss": "" if val_loss is None else round(val_loss, 5),
                                 "val_ppl": "" if val_loss is None else round(math.exp(val_loss), 3),
                                 "lr": f"{lr:.3e}", "grad_norm": round(grad_norm.item(), 4),
                                 "tokens_per_s": round(tokens_per_s), "elapsed_s": round(time.time() - start_time, 1)})
                        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                        if val_loss is not None:
                            bar.write(f"step {step:,} (epoch {step / epoch_steps:.2f}): train loss "
                                      f"{train_loss:.4f}, val loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f})")
                    window_time, window_steps = time.perf_counter(), 0
                    loss_sum.zero_()
                    if val_loss is not None:
                        last_val, last_val_step = val_loss, step
                    if main_process and (evaluate_now or stop_now):
                        save_checkpoint(out_dir, model, tokenizer, run_config, training_state(optimizer, step, device))
                if stop_now:
                    bar.write(f"interrupted: checkpoint at step {step:,} saved in {out_dir}; `--resume` continues")
                    break
        bar.close()

        wall = time.time() - start_time
        summary = {"preset": config.preset, "step": step, "total_steps": total_steps,
                   "epochs": round(step / epoch_steps, 3), "tokens": step * tokens_per_step,
                   "train_loss": train_loss if step > first_step else None,
                   "val_loss": last_val if step > first_step else None, "seconds": round(wall, 1),
                   "tokens_per_s": round((step - first_step) * tokens_per_step / wall) if wall > 0 else 0,
                   "interrupted": ctrl_c.requested}
        if main_process and step > first_step:
            plot_curves(log.csv_path, ["train_loss", "val_loss"], out_dir / "loss.png",
                        f"llamalogue pretraining ({config.preset})")
            summary["val_ppl"] = math.exp(last_val)
            validation = (f"val loss {last_val:.4f} (ppl {summary['val_ppl']:.2f}) at step {last_val_step:,}"
                          if math.isfinite(last_val) else "no validation yet")
            if config.samples and not ctrl_c.requested:
                summary["samples"] = write_samples(model, tokenizer, data_dir, out_dir, config)
            print(f"done: {scale}\n  trained {summary['epochs']} epochs ({step:,}/{total_steps:,} steps, "
                  f"{summary['tokens']:,} tokens) in {wall:.0f} s, {summary['tokens_per_s']:,} tokens/s; "
                  f"train loss {train_loss:.4f}; {validation}; checkpoint in {out_dir}")
        if world > 1:  # leave together: no process tears the group down while rank 0 still writes plot and samples
            dist.barrier()
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
    if not prompts:
        return []
    model.eval()
    replies, _ = sample_replies(model, tokenizer, prompts, config.seed)
    lines = [f"*MOT: {prompt}\n*CHI: {reply}\n" for prompt, reply in zip(prompts, replies)]
    print("".join(lines), end="")
    write_text(out_dir / "samples.txt", "\n".join(lines) + "\n")
    return [{"prompt": p, "reply": r} for p, r in zip(prompts, replies)]
