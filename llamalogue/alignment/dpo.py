"""Direct Preference Optimization (DPO; Rafailov et al., 2023): aligning a pretrained llamalogue with preference pairs.

A pair is a caregiver prompt x, an appropriate child reply y_w ("chosen") and a random child reply y_l ("rejected").
DPO needs neither a reward model nor sampling: it raises the policy's log-likelihood of y_w relative to a frozen
reference model (the starting checkpoint) and lowers that of y_l. The loss (β = 0.1 by default) is

    L = -log σ( β [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

Each reply's implicit reward is r(x, y) = β (log π(y|x) - log π_ref(y|x)). The loss is a logistic regression that
pushes r(x, y_w) above r(x, y_l). β sets how far the policy may move away from the reference for a given margin.
The "reward trends" in the poster are the mean r of the chosen (appropriate) and rejected (random) replies.

What the model sees: one row per reply, `[BOS] *MOT: what is that ?\\n*CHI: it looks like a gun .\\n`, as in
pretraining. log π(y|x) sums the log-probabilities of the reply's tokens and of the newline that ends it; the
context before (BOS, the prompt, the speaker tag that chosen and rejected share) is masked out of the sum
(llamalogue.alignment.reply_scoring, which the reward model and the PMI reward share). `pair_layout="paper"` lays
the rows out as the paper's TRL trainer did: prompt and reply tokenized apart, no BOS, the reply's speaker tag and an
EOS after it scored; synthetic pairs without speaker tags, as its synthetic run was given them.

SimPO (Meng et al., 2024; the loss of the BabyLM 2025 interaction baseline) is the reference-free variant beside them:
the reward is the policy's average log-probability per reply token, and the margin must exceed γ (`simpo_loss`).

Reference log-probs are computed once. The reference never changes, so log π_ref(y_w|x) and log π_ref(y_l|x) are
computed for every training pair before the first step and kept in an [N, 2] tensor that is saved with each
checkpoint. No second model stays in memory, and each step costs one forward and backward pass of the policy.

Held-out pairs never overlap training. A training pair that contains the same exchange (prompt and reply, as chosen or
as rejected) as a held-out pair is dropped, and the count is printed (llamalogue.alignment.pairs, which the reward
model reads its pairs with too). The paper's own train and evaluation files share such exchanges.
"""

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.alignment.pairs import AlignmentInputs, load_pairs
from llamalogue.alignment.reply_scoring import (PAIR_LAYOUTS, pair_exchanges, pair_scores, reply_lengths,
                                                score_replies, trainable_pairs)
from llamalogue.checkpoint import check_run, load_model, load_state
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.evaluation import dialogue_mp
from llamalogue.model import default_device
from llamalogue.presets import Presets
from llamalogue.run_dir import RunError
from llamalogue.run_shell import Run, RunFolder
from llamalogue.runlog import RunLog, Window, plot_curves
from llamalogue.schedules import epoch_order, learning_rate, set_learning_rate
from llamalogue.teacher.reply_text import without_speaker_tag
from llamalogue.word_budget import pair_words


LOSSES = ("sigmoid", "cdpo", "ipo", "simpo")

# tiny: unit tests (seconds). small: the CPU preset, 18,000 pairs x 1 epoch on the small model. One epoch instead of
# ten, so the learning rate is 10x the paper's: ~10 minutes with held-out dialogue-MP on 7,548 pairs before and after
# (one torch thread of an AVX2-only AMD EPYC beside another job, ~50 pairs/s; docs/replication.md). paper: the paper's TRL settings
# (per-device batch 4 x accumulation 4 on 2 devices: 32 pairs per step, 563 steps per epoch in its log; lr 5e-6,
# 10 epochs, linear decay without warmup as its log shows, clipping at 1.0), its rows laid out as TRL's. One device
# takes the 32 pairs as 16 x 2 accumulation.
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=4, grad_accum=2, lr=1e-3, limit=64, eval_limit=64, log_every=1,
                 checkpoint_every=4),
    "small": dict(preset="small", batch_size=16, grad_accum=1, lr=5e-5, warmup_ratio=0.05, epochs=1),
    "paper": dict(preset="paper", batch_size=16, grad_accum=2, lr=5e-6, warmup_ratio=0.0, epochs=10,
                  pair_layout="paper"),
}


@dataclass
class DPOConfig(Presets):
    preset: str = "small"
    loss: str = "sigmoid"  # sigmoid (DPO) | cdpo (DPO with label smoothing) | ipo | simpo (reference-free)
    beta: float = 0.1
    label_smoothing: float = 0.1  # cdpo only: the assumed probability that a preference label is flipped
    gamma: float = 0.5  # simpo only: the margin the chosen reply's reward must win by
    pair_layout: str = "ours"  # "ours": as pretraining's text; "paper": as TRL's DPOTrainer (reply_scoring)
    batch_size: int = 16  # pairs per forward pass (each pair = 2 rows: chosen and rejected)
    grad_accum: int = 1  # forward passes per optimizer step
    lr: float = 5e-5
    warmup_ratio: float = 0.05  # linear warmup over this fraction of the steps, then linear decay to 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many optimizer steps (the schedule still spans all epochs)
    limit: int = 18000  # training pairs (the paper's 18,000); 0 = all
    eval_limit: int = 0  # held-out pairs per set for the dialogue-MP check; 0 = all
    eval_batch_size: int = 64
    log_every: int = 10  # optimizer steps
    checkpoint_every: int = 200  # optimizer steps (also at every epoch end and at the end)
    seed: int = 1337
    raw_synthetic: bool = False  # keep a --pairs-file's synthetic replies as written (see transcribed_replies)

    presets = PRESETS
    # Settings a resumed run may change; any other change would silently mix two different trainings.
    resume_may_change = frozenset({"epochs", "max_steps", "log_every", "checkpoint_every", "eval_limit",
                                   "eval_batch_size"})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.beta <= 0:
            raise ValueError(f"--beta {self.beta}: must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label-smoothing {self.label_smoothing}: must be in [0, 0.5)")
        if self.gamma < 0:
            raise ValueError(f"--gamma {self.gamma}: must be at least 0")
        if self.pair_layout not in PAIR_LAYOUTS:
            raise ValueError(f"--pair-layout {self.pair_layout!r}: choose one of {', '.join(PAIR_LAYOUTS)}")
        self.check_at_least(1, "batch_size", "grad_accum", "epochs", "log_every", "checkpoint_every",
                            "eval_batch_size")
        self.check_at_least(0, "max_steps", "limit", "eval_limit")

    @property
    def pairs_per_step(self) -> int:
        return self.batch_size * self.grad_accum


# ---------------------------------------------------------------------------------------------------------------
# The loss.


def preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float,
                    loss: str = "sigmoid", label_smoothing: float = 0.0):
    """Per-pair losses and the (detached) implicit rewards of both replies, from summed reply log-probs, each [B].

    h = (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))   the margin of the log-ratios
    sigmoid: L = -log σ(βh)                                the DPO loss
    cdpo:    L = -(1 - ε) log σ(βh) - ε log σ(-βh)          conservative DPO: each label is wrong with probability ε
    ipo:     L = (h - 1/(2β))²                              IPO (Azar et al., 2023): regress h to a finite target
    rewards: r(x, y) = β (log π(y|x) - log π_ref(y|x))
    """
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    h = chosen_logratio - rejected_logratio
    if loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2  # σ saturates, so DPO can push h without bound; IPO stops at 1/(2β)
    elif loss in ("sigmoid", "cdpo"):
        eps = label_smoothing if loss == "cdpo" else 0.0
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    else:
        raise ValueError(f"unknown DPO loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def simpo_loss(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, beta: float, gamma: float):
    """SimPO's per-pair losses and rewards, from summed reply log-probs and reply lengths |y| in tokens, each [B]:

        r(x, y) = β/|y| log π(y|x)                     the average log-prob per token: no reference model
        L = -log σ( r(x, y_w) - r(x, y_l) - γ )        the chosen reply must win by a margin γ
    """
    reward_chosen = beta * policy_chosen / chosen_lengths
    reward_rejected = beta * policy_rejected / rejected_lengths
    losses = -F.logsigmoid(reward_chosen - reward_rejected - gamma)
    return losses, reward_chosen.detach(), reward_rejected.detach()


# ---------------------------------------------------------------------------------------------------------------
# The reference, computed once.


def reference_logprobs(model, tokenizer, pairs: list[Pair], batch_size: int, layout: str = "ours") -> torch.Tensor:
    """[N, 2]: log π_ref(y_w|x) and log π_ref(y_l|x) of every pair under the frozen reference, on the CPU."""
    scores = score_replies(model, tokenizer, pair_exchanges(pairs), 2 * batch_size, desc="reference log-probs",
                           layout=layout)
    chosen, rejected = scores.view(2, -1)
    return torch.stack([chosen, rejected], dim=1)


def fingerprint(tokenizer, pairs: list[Pair], layout: str = "ours") -> str:
    """A hash of the training rows: a resumed run must train on exactly the data its reference log-probs belong to.
    (Every saved run holds the hash of rows written as these four keys, in this order.)"""
    rows, encode = [], PAIR_LAYOUTS[layout]
    for pair in pairs:
        chosen, chosen_start = encode(tokenizer, pair.prompt, pair.chosen)
        rejected, rejected_start = encode(tokenizer, pair.prompt, pair.rejected)
        rows.append({"chosen": chosen, "chosen_start": chosen_start, "rejected": rejected,
                     "rejected_start": rejected_start})
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Training.


METRICS = ["loss", "reward_chosen", "reward_rejected", "margin", "accuracy", "logp_chosen", "logp_rejected"]


def accumulate_gradients(model, tokenizer, pairs: list[Pair], reference, config: DPOConfig) -> dict:
    """The gradients of one optimizer step, and the sums of METRICS over its pairs. Gradient accumulation: each
    micro-batch of config.batch_size pairs adds its share of the step's mean loss."""
    sums = dict.fromkeys(METRICS, 0.0)
    for start in range(0, len(pairs), config.batch_size):
        micro = pairs[start : start + config.batch_size]
        chosen, rejected = pair_scores(model, tokenizer, micro, layout=config.pair_layout)  # log π(y|x)
        if config.loss == "simpo":
            lengths = reply_lengths(tokenizer, micro, config.pair_layout).to(chosen.device)
            losses, reward_chosen, reward_rejected = simpo_loss(chosen, rejected, lengths[:, 0], lengths[:, 1],
                                                                config.beta, config.gamma)
        else:
            ref = reference[start : start + config.batch_size].to(chosen.device)
            losses, reward_chosen, reward_rejected = preference_loss(
                chosen, rejected, ref[:, 0], ref[:, 1], config.beta, config.loss, config.label_smoothing)
        (losses.sum() / len(pairs)).backward()
        for metric, values in zip(METRICS, (losses, reward_chosen, reward_rejected, reward_chosen - reward_rejected,
                                            (reward_chosen > reward_rejected).float(), chosen, rejected)):
            sums[metric] += values.detach().sum().item()
    return sums


def evaluate_held_out(model, tokenizer, held_out: dict[str, list[Pair]], batch_size: int, step: int) -> dict:
    """dialogue-MP accuracy (chosen scored strictly above rejected) on each held-out set, printed with its time."""
    started = time.time()
    scores = {f"dialogue_mp_{name}": dialogue_mp(model, tokenizer, pairs, batch_size)["accuracy"]
              for name, pairs in held_out.items()}
    if scores:
        tqdm.write(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
                   + f" ({time.time() - started:.0f} s)")
    return scores


def pairs_seen(step: int, count: int, pairs_per_step: int) -> int:
    """Pairs trained on in the first `step` steps over `count` pairs (an epoch's last step may take fewer)."""
    epochs, position = divmod(step, math.ceil(count / pairs_per_step))
    return epochs * count + min(count, position * pairs_per_step)


def words_trained(step: int, words_per_pair: list[int], pairs_per_step: int, seed: int) -> int:
    """The words of the pairs trained on in the first `step` steps (each pair counted each time it is seen), in
    the epoch order the loop draws them (llamalogue.word_budget)."""
    epochs, position = divmod(step, math.ceil(len(words_per_pair) / pairs_per_step))
    this_epoch = epoch_order(len(words_per_pair), seed, epochs)[: position * pairs_per_step].tolist()
    return epochs * sum(words_per_pair) + sum(words_per_pair[i] for i in this_epoch)


def log_row(log: RunLog, columns: list[str], **values) -> None:
    """One row of log.csv with every column, blank where this row has no value (the first row fixes the columns)."""
    log.log({column: values.get(column, "") for column in columns})


def plot(out_dir: Path, loss: str, held_out_columns: list[str]) -> None:
    csv_path = out_dir / "log.csv"
    plot_curves(csv_path, ["reward_chosen", "reward_rejected", "margin"], out_dir / "rewards.png",
                "DPO reward trends: appropriate (chosen) vs random (rejected) replies")
    plot_curves(csv_path, ["loss"], out_dir / "loss.png", f"DPO loss ({loss})")
    plot_curves(csv_path, ["accuracy", *held_out_columns], out_dir / "accuracy.png",
                "preference accuracy (training) and dialogue-MP accuracy (held-out)")


def scale_line(config: DPOConfig, pairs: int, total_steps: int, model, device: str) -> str:
    return (f"preset {config.preset}: {pairs:,} pairs x {config.epochs} epochs = {total_steps:,} steps of "
            f"{config.pairs_per_step} pairs (batch {config.batch_size} x accumulation {config.grad_accum}), "
            f"{config.loss} loss, beta {config.beta}, lr {config.lr:g}; model {model.num_parameters():,} parameters "
            f"(dim {model.config.dim}, {model.config.n_layers} layers) on {device}")


def open_dpo_run(folder: RunFolder, given: AlignmentInputs,
                 options: dict) -> tuple[Run, AlignmentInputs, list[Pair], dict[str, list[Pair]], list[str]]:
    """The run, its completed inputs and its pairs (training, held out, notes on them), after every check of the
    folder and the settings (llamalogue.run_shell) and of the pairs; the folder of a new run is then emptied.

    A new run takes the inputs given (and the defaults). A resumed run takes its recorded inputs, refusing other
    ones before any teacher runs."""
    inputs = given.completed()
    if not folder.resume:
        check_run(inputs.init)  # a damaged --init fails here, before --out is touched
    run = Run(folder, "dpo", DPOConfig, options, protected={"--init": inputs.init})
    run.check_inputs(given.recorded())
    if run.resumed:
        inputs = given.completed({"init": run.saved["init"], **run.saved["inputs"]})
    config = run.config
    pairs, held_out, notes = load_pairs(inputs, config.limit, config.eval_limit, config.seed, config.raw_synthetic)
    if config.pair_layout == "paper" and inputs.pairs == "synthetic":  # the paper's synthetic run had no tags
        pairs = [Pair(*(without_speaker_tag(text) for text in (p.prompt, p.chosen, p.rejected))) for p in pairs]
    run.clear()
    return run, inputs, pairs, held_out, notes


def reference_and_step(run: Run, model, tokenizer, optimizer, pairs: list[Pair], config: DPOConfig,
                       notes: list[str], device: str) -> tuple[torch.Tensor, int, str]:
    """(the reference log-probs, the step, the training rows' fingerprint) the loop starts from. A new run computes
    the init model's reply log-probs once (none for simpo, which needs no reference); a resumed run restores them
    with its optimizer from its checkpoint, which must belong to the same rows."""
    rows_fingerprint = fingerprint(tokenizer, pairs, config.pair_layout)
    if run.resumed:
        state = load_state(run.out, device)
        if state["data"] != rows_fingerprint:
            raise RunError(f"--resume {run.out}: the training pairs differ from the ones this run started with")
        optimizer.load_state_dict(state["optimizer"])
        return state["reference"], state["step"], rows_fingerprint
    if config.loss == "simpo":  # reference-free: nothing to compute
        return torch.zeros(len(pairs), 2), 0, rows_fingerprint
    started = time.time()
    reference = reference_logprobs(model, tokenizer, pairs, config.eval_batch_size, config.pair_layout)
    notes.append(f"reference log-probs of {len(pairs):,} pairs computed once in {time.time() - started:.0f} s")
    return reference, 0, rows_fingerprint


def train(folder: RunFolder, inputs: AlignmentInputs, options: dict, device: str | None = None) -> dict:
    """Fine-tune the model inputs.init with DPO on the pairs of `inputs` into a run folder that load_model reads;
    returns the last logged metrics and held-out accuracies. options: the DPOConfig fields given ("preset" among
    them). --max-steps stops early without changing the schedule (set by the epochs), so --resume continues the
    same run; Ctrl-C finishes the current step, saves a checkpoint and stops (llamalogue.run_shell)."""
    device = device or default_device()

    # The run, its settings and its pairs (the teacher's replies for synthetic pairs): checked before any is used.
    run, inputs, pairs, held_out, notes = open_dpo_run(folder, inputs, options)
    config = run.config

    # The policy starts as the init model (resuming: as this run's last checkpoint), dropout off: log-probs must be
    # deterministic, and equal to the reference's at step 0.
    model, tokenizer = load_model(run.out if run.resumed else inputs.init, device)
    pairs = trainable_pairs(tokenizer, pairs, model.config.max_seq_len, config.pair_layout, notes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    reference, step, rows_fingerprint = reference_and_step(run, model, tokenizer, optimizer, pairs, config, notes,
                                                           device)

    steps_per_epoch = math.ceil(len(pairs) / config.pairs_per_step)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    scale = scale_line(config, len(pairs), total_steps, model, device)
    print("\n  ".join([f"DPO at scale: {scale}", *notes, *run.stops_early(stop_step, total_steps)]))
    log = run.begin(scale, config, inputs.recorded(), init=inputs.init, step=step, notes=notes, pairs=len(pairs),
                    held_out={name: len(p) for name, p in held_out.items()})
    held_out_columns = [f"dialogue_mp_{name}" for name in held_out]
    columns = ["step", "epoch", "pairs", "lr", *METRICS, "grad_norm", "pairs_per_s", *held_out_columns]
    words_per_pair = pair_words(pairs)

    # The starting point: the init model's dialogue-MP.
    scores = {} if run.resumed else evaluate_held_out(model, tokenizer, held_out, config.eval_batch_size, step)
    if scores:
        log_row(log, columns, step=step, epoch=0.0, **scores)

    # The loop. Each pass trains one step, then does what is due after it: log, held-out check, checkpoint, plots.
    last, window = {}, Window(METRICS)
    bar = tqdm(total=pairs_seen(stop_step, len(pairs), config.pairs_per_step), unit="pair", desc="DPO",
               initial=pairs_seen(step, len(pairs), config.pairs_per_step), dynamic_ncols=True)
    with run:  # Ctrl-C: the loop finishes its step, saves and stops (a second Ctrl-C kills)
        while step < stop_step and not run.interrupted:
            epoch, position = divmod(step, steps_per_epoch)
            batch = epoch_order(len(pairs), config.seed, epoch)[position * config.pairs_per_step:
                                                                (position + 1) * config.pairs_per_step].tolist()
            lr = learning_rate(step, total_steps, config.lr, warmup_steps, decay="linear")
            set_learning_rate(optimizer, lr)
            sums = accumulate_gradients(model, tokenizer, [pairs[i] for i in batch], reference[batch], config)
            run.check_loss(sums["loss"], step + 1, "lower --lr or --beta")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window.add(sums, len(batch))
            bar.update(len(batch))
            if step % config.log_every == 0 or step == stop_step or run.interrupted:
                last, pairs_per_s = window.close()
                log_row(log, columns, step=step, epoch=round(step / steps_per_epoch, 4), lr=f"{lr:.3e}",
                        pairs=pairs_seen(step, len(pairs), config.pairs_per_step), grad_norm=round(grad_norm, 4),
                        pairs_per_s=round(pairs_per_s, 1), **last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", margin=f"{last['margin']:.3f}",
                                acc=f"{last['accuracy']:.2f}")
            end_of_epoch = step % steps_per_epoch == 0 or step == stop_step
            if end_of_epoch:
                scores = evaluate_held_out(model, tokenizer, held_out, config.eval_batch_size, step)
                if scores:
                    log_row(log, columns, step=step, epoch=round(step / steps_per_epoch, 4), **scores)
            if step % config.checkpoint_every == 0 or end_of_epoch or run.interrupted:
                run.progress(words_trained(step, words_per_pair, config.pairs_per_step, config.seed))
                run.save(model, tokenizer, {"optimizer": optimizer.state_dict(), "step": step, "reference": reference,
                                            "data": rows_fingerprint})
            if end_of_epoch or run.interrupted:
                plot(run.out, config.loss, held_out_columns)
    bar.close()
    if not run.stopped(f"step {step:,}"):
        print(f"DPO done at scale: {scale}\n  {step:,}/{total_steps:,} steps; checkpoint in {run.out}")
    summary = {**last, **scores, "step": step, "total_steps": total_steps, "interrupted": run.interrupted}
    log.jsonl("summary.jsonl", summary)
    return summary
