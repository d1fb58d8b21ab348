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
the run folder. The settings and presets: llamalogue.pretraining.config; the run's folder, record, checkpoints and
Ctrl-C: llamalogue.run_shell.
"""

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from llamalogue.checkpoint import load_state
from llamalogue.corpus.dialogue_files import read_prompts
from llamalogue.generation import sample_replies
from llamalogue.model import Llama, ModelConfig
from llamalogue.pretraining.config import TrainConfig
from llamalogue.pretraining.data import DEFAULT_DATA, Corpus, PretrainingInputs, Windows, read_corpus
from llamalogue.pretraining.fused_loss import next_token_loss
from llamalogue.pretraining.milestones import save_milestones, with_word_milestones
from llamalogue.pretraining.processes import mean_over_processes, process_group, same_windows_per_step
from llamalogue.pretraining.speed import autocast_context, speed_of_the_run
from llamalogue.run_dir import CHECKPOINT, RunError, data_inputs, write_text
from llamalogue.run_shell import Run, RunFolder
from llamalogue.runlog import plot_curves
from llamalogue.schedules import epoch_order, learning_rate, set_learning_rate


# ----------------------------------------------------------------------------------------------------------------
# The schedule


@dataclass
class Schedule:
    """A run's steps: each trains on windows_per_step windows (processes x grad_accum x batch_size) holding
    tokens_per_step tokens; an epoch is epoch_steps steps; the learning rate spans total_steps; this invocation
    stops at stop_step (--max-steps)."""

    windows_per_step: int
    tokens_per_step: int
    epoch_steps: int
    total_steps: int
    stop_step: int


def plan_steps(config: TrainConfig, train_windows: Windows, val_windows: Windows, world: int,
               data_dir: Path) -> Schedule:
    """The schedule the epochs make; a RunError naming the split too small to train on."""
    windows_per_step = config.batch_size * config.grad_accum * world
    if train_windows.count < windows_per_step:
        raise RunError(f"{data_dir / 'train.bin'}: {len(train_windows.tokens)} tokens make {train_windows.count} "
                       f"windows, fewer than one batch of {windows_per_step}")
    if val_windows.count == 0:
        raise RunError(f"{data_dir / 'val.bin'}: {len(val_windows.tokens)} tokens, less than one window")
    epoch_steps = train_windows.count // windows_per_step
    total_steps = max(1, round(config.epochs * epoch_steps))
    stop_step = min(total_steps, config.max_steps) if config.max_steps > 0 else total_steps
    return Schedule(windows_per_step, windows_per_step * train_windows.seq_len, epoch_steps, total_steps, stop_step)


def fit_time_budget(speed: dict, schedule: Schedule, config: TrainConfig) -> tuple[Schedule, TrainConfig]:
    """A time budget (--minutes) ends the schedule at the steps that fit (speed["steps"]: the micro-steps that fit
    at the step time measured); the epochs they make are recorded, so that --resume keeps this schedule."""
    if "steps" not in speed or speed["steps"] >= schedule.total_steps * config.grad_accum:
        return schedule, config
    total_steps = max(1, speed["steps"] // config.grad_accum)
    return (replace(schedule, total_steps=total_steps, stop_step=min(total_steps, schedule.stop_step)),
            replace(config, epochs=total_steps / schedule.epoch_steps))


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


def train(folder: RunFolder, inputs: PretrainingInputs, options: dict, device: str | None = None) -> dict:
    """Pretrain a model; returns a summary (steps, tokens, losses, tokens/s, wall time). See the module docstring.

    options: the TrainConfig fields given ("preset" among them); a resumed run keeps its own settings and data
    (llamalogue.run_shell)."""
    with process_group(device) as (rank, world, device):
        # The run, its settings and its data: every check before anything is written in the run's folder.
        run = Run(folder, "pretrain", TrainConfig, options, protected={"--data": inputs.data or DEFAULT_DATA},
                  main_process=rank == 0)
        config = same_windows_per_step(run.config, run.saved, world)
        state = resumable_state(run.out) if run.resumed else None
        corpus = read_corpus(inputs, run.saved, rank, world)
        config = with_word_milestones(config, corpus)
        run.check_inputs(data_inputs(corpus.folder))
        run.clear()

        # The model and the optimizer; resuming, their saved state.
        torch.manual_seed(config.seed)  # the same initial weights in every process
        model = Llama(ModelConfig.preset(config.model_preset, vocab_size=corpus.tokenizer.vocab_size,
                                         dropout=config.dropout)).to(device)
        optimizer = make_optimizer(model, config)
        step = restore(state, model, optimizer, device) if state else 0
        train_windows, val_windows = (Windows(tokens, model.config.max_seq_len, device)
                                      for tokens in (corpus.train_tokens, corpus.val_tokens))

        # The schedule, and how a step runs: bf16 or fp32, compiled or eager, measured by rank 0 (speed.py).
        schedule = plan_steps(config, train_windows, val_windows, world, corpus.folder)
        net, speed = speed_of_the_run(model, (config.batch_size, model.config.max_seq_len), config,
                                      (schedule.stop_step - step) * config.grad_accum, device, run.saved, rank, world)
        schedule, config = fit_time_budget(speed, schedule, config)
        if world > 1:  # one replica per process
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if "cuda" in device else None)
        autocast = autocast_context(speed["dtype"], device)
        scale = scale_line(config, model, corpus, schedule, world, device, speed)
        log = run.begin(scale, config, data_inputs(corpus.folder), step=step, total_steps=schedule.total_steps,
                        speed=speed, windows_per_step=schedule.windows_per_step, **corpus.record(),
                        words=corpus.words_at(step * schedule.tokens_per_step), tokens=step * schedule.tokens_per_step)
        if run.main_process:
            print("\n".join([scale, speed["why"], *run.stops_early(schedule.stop_step, schedule.total_steps)]))

        # The loop.
        bar = tqdm(total=schedule.stop_step, initial=step, unit="step", disable=not run.main_process,
                   dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
        report = Report(log, bar, schedule, step, device)
        net.train()
        with run:  # Ctrl-C: the loop finishes its step, saves and stops (a second Ctrl-C kills)
            while step < schedule.stop_step:
                epoch, position = divmod(step, schedule.epoch_steps)
                block = epoch_order(train_windows.count, config.seed, epoch)[
                    position * schedule.windows_per_step : (position + 1) * schedule.windows_per_step]
                mine = block.view(world, config.grad_accum, config.batch_size)[rank]  # this process's share
                loss = accumulate_gradients(net, train_windows, mine, autocast)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                lr = learning_rate(step, schedule.total_steps, config.lr, config.warmup_steps, decay="cosine",
                                   min_ratio=config.min_lr_ratio)
                set_learning_rate(optimizer, lr)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                report.add(loss)
                run.progress(corpus.words_at(step * schedule.tokens_per_step), tokens=step * schedule.tokens_per_step)
                keep_milestones(run, model, corpus.tokenizer, step, schedule.tokens_per_step, bar)

                evaluate_now = (step % config.eval_every == 0 or step % schedule.epoch_steps == 0
                                or step == schedule.stop_step)
                stop_now = mean_over_processes(float(run.interrupted), world, device) > 0  # all stop together
                if step % config.log_every == 0 or evaluate_now or stop_now:
                    run.check_loss(report.mean_train_loss(world, device), step, "lower --lr or check the data")
                    val_loss = evaluate(net, val_windows, config, autocast, rank, world) if evaluate_now else None
                    report.row(step, lr, grad_norm.item(), val_loss)
                    if evaluate_now or stop_now:
                        run.save(model, corpus.tokenizer, training_state(optimizer, step, device))
                if stop_now:  # every process stops as the one that caught the Ctrl-C
                    run.interrupt()
                    break
        bar.close()
        run.stopped(f"step {step:,}")
        summary = report.summary(step, config, run.interrupted)
        if run.main_process and step > report.first_step:
            finish(run, report, summary, model, corpus, config)
        if world > 1:  # leave together: no process tears the group down while rank 0 still writes plot and samples
            dist.barrier()
        return summary


def keep_milestones(run: Run, model, tokenizer, step: int, tokens_per_step: int, bar) -> None:
    """The milestones (milestones.py) that this step passed, each kept in RUN/milestones/ (rank 0)."""
    if run.main_process:
        for name in save_milestones(run.out, model, tokenizer, run.record, step, tokens_per_step):
            bar.write(f"step {step:,}: milestone {name} saved ({step * tokens_per_step:,} tokens)")


def scale_line(config: TrainConfig, model, corpus: Corpus, schedule: Schedule, world: int, device: str,
               speed: dict) -> str:
    other_model = f", model {config.model}" if config.model else ""
    return (f"preset {config.preset}{other_model}: {model.num_parameters() / 1e6:.2f}M parameters, "
            f"{len(corpus.train_tokens):,} training tokens ({corpus.folder}), {config.epochs:g} epochs = "
            f"{schedule.total_steps:,} steps of {schedule.tokens_per_step:,} tokens ({world} process(es) x "
            f"{config.grad_accum} x {config.batch_size} windows of {model.config.max_seq_len}), {device} "
            f"{speed['dtype']}{', compiled' if speed['compile_seconds'] is not None else ''}")


class Report:
    """What the loop reports as it goes: a log.csv row every log_every steps (the training loss averaged over the
    steps since the last row and over the processes, the throughput), the bar's postfix, a line per validation;
    and the last losses, for the summary. (log is None outside rank 0: it only counts.)"""

    def __init__(self, log, bar, schedule: Schedule, step: int, device: str):
        self.log, self.bar, self.schedule = log, bar, schedule
        self.first_step, self.started = step, time.time()
        self.loss_sum, self.steps, self.window_start = torch.zeros((), device=device), 0, time.perf_counter()
        self.train_loss, self.val_loss, self.val_step = float("nan"), float("nan"), step

    def add(self, step_loss: torch.Tensor) -> None:
        self.loss_sum += step_loss
        self.steps += 1
        self.bar.update(1)

    def mean_train_loss(self, world: int, device: str) -> float:
        """The training loss since the last row, averaged over the processes (each of them calls it)."""
        self.train_loss = mean_over_processes(self.loss_sum.item() / self.steps, world, device)
        return self.train_loss

    def row(self, step: int, lr: float, grad_norm: float, val_loss: float | None) -> None:
        tokens_per_s = self.steps * self.schedule.tokens_per_step / (time.perf_counter() - self.window_start)
        epoch = step / self.schedule.epoch_steps
        if self.log is not None:
            self.log.log({"step": step, "epoch": round(epoch, 4), "tokens": step * self.schedule.tokens_per_step,
                          "train_loss": round(self.train_loss, 5),
                          "val_loss": "" if val_loss is None else round(val_loss, 5),
                          "val_ppl": "" if val_loss is None else round(math.exp(val_loss), 3), "lr": f"{lr:.3e}",
                          "grad_norm": round(grad_norm, 4), "tokens_per_s": round(tokens_per_s),
                          "elapsed_s": round(time.time() - self.started, 1)})
            self.bar.set_postfix(loss=f"{self.train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if val_loss is not None:
                self.bar.write(f"step {step:,} (epoch {epoch:.2f}): train loss {self.train_loss:.4f}, val loss "
                               f"{val_loss:.4f} (ppl {math.exp(val_loss):.2f})")
        self.loss_sum.zero_()
        self.steps, self.window_start = 0, time.perf_counter()
        if val_loss is not None:
            self.val_loss, self.val_step = val_loss, step

    def summary(self, step: int, config: TrainConfig, interrupted: bool) -> dict:
        self.wall = wall = time.time() - self.started
        trained = step > self.first_step
        return {"preset": config.preset, "step": step, "total_steps": self.schedule.total_steps,
                "epochs": round(step / self.schedule.epoch_steps, 3), "tokens": step * self.schedule.tokens_per_step,
                "train_loss": self.train_loss if trained else None, "val_loss": self.val_loss if trained else None,
                "seconds": round(wall, 1),
                "tokens_per_s": round((step - self.first_step) * self.schedule.tokens_per_step / wall) if wall > 0
                else 0, "interrupted": interrupted}


def finish(run: Run, report: Report, summary: dict, model, corpus: Corpus, config: TrainConfig) -> None:
    """The end of a run that trained: the loss plot, the samples (not after Ctrl-C), the last line."""
    plot_curves(report.log.csv_path, ["train_loss", "val_loss"], run.out / "loss.png",
                f"llamalogue pretraining ({config.preset})")
    summary["val_ppl"] = math.exp(report.val_loss)
    validation = (f"val loss {report.val_loss:.4f} (ppl {summary['val_ppl']:.2f}) at step {report.val_step:,}"
                  if math.isfinite(report.val_loss) else "no validation yet")
    if config.samples and not run.interrupted:
        summary["samples"] = write_samples(model, corpus.tokenizer, corpus.folder, run.out, config)
    print(f"done: {run.record['scale']}\n  trained {summary['epochs']} epochs ({summary['step']:,}/"
          f"{summary['total_steps']:,} steps, {summary['tokens']:,} tokens) in {report.wall:.0f} s, "
          f"{summary['tokens_per_s']:,} tokens/s; train loss {report.train_loss:.4f}; {validation}; checkpoint in "
          f"{run.out}")


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
