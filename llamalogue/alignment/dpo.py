"""Direct Preference Optimization (DPO; Rafailov et al., 2023): aligning a pretrained llamalogue with preference pairs.

A pair is a caregiver prompt x, an appropriate child reply y_w ("chosen") and a random child reply y_l ("rejected").
DPO needs neither a reward model nor sampling: it raises the policy's log-likelihood of y_w relative to a frozen
reference model (the starting checkpoint) and lowers that of y_l. The loss (β = 0.1 by default) is

    L = -log σ( β [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

Each reply's implicit reward is r(x, y) = β (log π(y|x) - log π_ref(y|x)). The loss is a logistic regression that
pushes r(x, y_w) above r(x, y_l). β sets how far the policy may move away from the reference for a given margin.
The "reward trends" in the poster are the mean r of the chosen (appropriate) and rejected (random) replies.

What the model sees. A pair is formatted as in pretraining (see llamalogue.corpus.build), one row per reply:

    [BOS] *MOT: what is that ?\\n*CHI: it looks like a gun .\\n

log π(y|x) sums the log-probabilities of the reply's tokens only. Those are the tokens after the reply's speaker tag
`*CHI:`, up to and including the newline that ends the child's turn. Every turn ends with "\\n" in the pretraining
text and generation stops there, so scoring the newline makes the preference include where a reply ends. The same
rule applies to chosen and rejected. Everything before the reply is context and is masked out of the sum: BOS, the
prompt, and the speaker tag (which chosen and rejected share).

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.checkpoint import check_run, load_model, load_state, save_checkpoint
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.evaluation import dialogue_mp
from llamalogue.model import default_device
from llamalogue.corpus.dialogue_files import SPEAKER_TAG
from llamalogue.schedules import epoch_order
from llamalogue.presets import Presets
from llamalogue.run_dir import CONFIG, RunError, StopOnCtrlC, open_run, write_json
from llamalogue.runlog import RunLog, plot_curves


LOSSES = ("sigmoid", "cdpo", "ipo")

# tiny: unit tests (seconds). small: the CPU preset, 18,000 pairs x 1 epoch on the small model. One epoch instead of
# ten, so the learning rate is 10x the paper's. Measured on the shared 2-core machine with one torch thread: ~24 pairs/s
# training, ~10 ms per pair for the reference pass and ~12 ms per held-out pair, so ~19 minutes in all with
# dialogue-MP on 7,548 pairs before and after (an H100: ~500 pairs/s). paper: the paper's TRL settings
# (per-device batch 4 x accumulation 4, lr 5e-6, 10 epochs, linear decay without warmup as its log shows, clipping
# at 1.0). Its log has 563 steps per epoch, so its effective batch was 32 (2 devices); ours on one device is 16.
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=4, grad_accum=2, lr=1e-3, limit=64, eval_limit=64, log_every=1,
                 checkpoint_every=4),
    "small": dict(preset="small", batch_size=16, grad_accum=1, lr=5e-5, warmup_ratio=0.05, epochs=1),
    "paper": dict(preset="paper", batch_size=4, grad_accum=4, lr=5e-6, warmup_ratio=0.0, epochs=10),
}


@dataclass
class DPOConfig(Presets):
    preset: str = "small"
    loss: str = "sigmoid"  # sigmoid (DPO) | cdpo (DPO with label smoothing) | ipo
    beta: float = 0.1
    label_smoothing: float = 0.1  # cdpo only: the assumed probability that a preference label is flipped
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


# ---------------------------------------------------------------------------------------------------------------
# From text pairs to masked token rows.

def encode_reply(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    """[BOS] + prompt "\\n" reply + "\\n" as token ids, and the index of the reply's first scored token.

    The prompt and the reply (with its speaker tag) are encoded as one text, exactly as the pretraining triplets were.
    The scored part starts right after the reply's speaker tag: its tokens are the encoding of "prompt\\n*CHI:".
    """
    tag = SPEAKER_TAG.match(reply)
    if tag is None:
        raise ValueError(f"reply {reply!r} does not start with a speaker tag such as '*CHI:'")
    context = [tokenizer.bos_id] + tokenizer.encode(f"{prompt}\n{tag.group()}")
    ids = [tokenizer.bos_id] + tokenizer.encode(f"{prompt}\n{reply}") + [tokenizer.newline_id]
    if ids[: len(context)] != context:  # a speaker tag is one piece, so this holds for every well-formed pair
        raise ValueError(f"the tokenizer splits {prompt!r} + {reply!r} across the speaker tag")
    return ids, len(context)


@dataclass
class EncodedPair:
    chosen: list[int]
    chosen_start: int  # index of the first scored token of chosen
    rejected: list[int]
    rejected_start: int


def encode_pairs(tokenizer, pairs: list[Pair], max_len: int):
    """(encoded pairs that fit in max_len tokens, number of pairs dropped for being longer)."""
    encoded, too_long = [], 0
    for number, pair in enumerate(pairs, 1):
        try:
            chosen, chosen_start = encode_reply(tokenizer, pair.prompt, pair.chosen)
            rejected, rejected_start = encode_reply(tokenizer, pair.prompt, pair.rejected)
        except ValueError as error:
            raise ValueError(f"pair {number}: {error}") from None
        if max(len(chosen), len(rejected)) > max_len:
            too_long += 1
            continue
        encoded.append(EncodedPair(chosen, chosen_start, rejected, rejected_start))
    return encoded, too_long


def collate(rows: list[tuple[list[int], int]], pad_id: int, device):
    """Right-padded token rows [N, T], their attention mask [N, T], and the reply mask [N, T-1] (bool).

    The reply mask lines up with the predictions: column t predicts token t + 1, so scored token i sits in
    column i - 1.
    """
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    reply = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    for row, (ids, start) in enumerate(rows):
        tokens[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        reply[row, start - 1 : len(ids) - 1] = True
    return tokens.to(device), attention.to(device), reply.to(device)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of rows of similar length, so that padding costs little (for scoring, where the order
    of the rows does not matter, unlike in training)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pair_logprobs(model, pairs: list[EncodedPair], pad_id: int):
    """log π(y_w|x) and log π(y_l|x), each [B]: chosen and rejected rows share one forward pass.

    The output layer runs only where a reply token is predicted. Logits at every position of every row (prompt
    and padding included) would cost more than the transformer itself with a 16k vocabulary.
    """
    rows = [(p.chosen, p.chosen_start) for p in pairs] + [(p.rejected, p.rejected_start) for p in pairs]
    summed = reply_logprob_sums(model, *collate(rows, pad_id, model.embed.weight.device))
    return summed[: len(pairs)], summed[len(pairs) :]


def reply_logprob_sums(model, tokens, attention, reply):
    """sum_t log π(y_t | x, y_<t) over each row's reply tokens, [N], from collate's tensors."""
    hidden = model(tokens, attention, compute_logits=False)[:, :-1]  # column t predicts token t + 1
    logits = model.lm_head(hidden[reply]).float()  # [scored tokens, vocab]
    token_logprobs = -F.cross_entropy(logits, tokens[:, 1:][reply], reduction="none")
    row_of_token = reply.nonzero()[:, 0]
    return torch.zeros(len(tokens), device=tokens.device).index_add(0, row_of_token, token_logprobs)


@torch.no_grad()
def reference_logprobs(model, pairs: list[EncodedPair], pad_id: int, batch_size: int) -> torch.Tensor:
    """[N, 2] (chosen, rejected) summed reply log-probs under the frozen reference, on the CPU."""
    out = torch.zeros(len(pairs), 2)
    batches = length_batches([max(len(p.chosen), len(p.rejected)) for p in pairs], batch_size)
    for batch in tqdm(batches, desc="reference log-probs", unit="batch", leave=False):
        chosen, rejected = pair_logprobs(model, [pairs[i] for i in batch], pad_id)
        out[batch] = torch.stack([chosen, rejected], dim=1).cpu()
    return out


def fingerprint(pairs: list[EncodedPair]) -> str:
    """A hash of the training rows: a resumed run must train on exactly the data its reference log-probs belong to."""
    return hashlib.sha256(json.dumps([asdict(p) for p in pairs]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Training.


def learning_rate(step: int, total_steps: int, config: DPOConfig) -> float:
    """Linear warmup over warmup_ratio of the steps, then linear decay to 0 (TRL's default schedule)."""
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * (total_steps - step) / max(1, total_steps - warmup)


def evaluate_held_out(model, tokenizer, held_out: dict[str, list[Pair]], batch_size: int) -> dict[str, float]:
    """dialogue-MP accuracy (chosen scored strictly above rejected) on each held-out set."""
    return {f"dialogue_mp_{name}": dialogue_mp(model, tokenizer, pairs, batch_size)["accuracy"]
            for name, pairs in held_out.items()}


METRICS = ["loss", "reward_chosen", "reward_rejected", "margin", "accuracy", "logp_chosen", "logp_rejected"]


def accumulate_gradients(model, pairs: list[EncodedPair], reference, config: DPOConfig, pad_id: int) -> dict:
    """The gradients of one optimizer step, and the sums of METRICS over its pairs. Gradient accumulation: each
    micro-batch of config.batch_size pairs adds its share of the step's mean loss."""
    sums = dict.fromkeys(METRICS, 0.0)
    for start in range(0, len(pairs), config.batch_size):
        chosen, rejected = pair_logprobs(model, pairs[start : start + config.batch_size], pad_id)
        ref = reference[start : start + config.batch_size].to(chosen.device)
        losses, reward_chosen, reward_rejected = preference_loss(
            chosen, rejected, ref[:, 0], ref[:, 1], config.beta, config.loss, config.label_smoothing)
        (losses.sum() / len(pairs)).backward()
        for metric, values in zip(METRICS, (losses, reward_chosen, reward_rejected, reward_chosen - reward_rejected,
                                            (reward_chosen > reward_rejected).float(), chosen, rejected)):
            sums[metric] += values.detach().sum().item()
    return sums


def train(init_dir, out_dir, pairs: list[Pair], held_out: dict[str, list[Pair]], config: DPOConfig,
          resume: bool = False, overwrite: bool = False, device: str | None = None, notes: list[str] = (),
          inputs: dict | None = None) -> dict:
    """Fine-tune the model in init_dir with DPO on pairs; out_dir becomes a run dir that load_model reads.

    --max-steps stops early without changing the schedule (set by the epochs), so --resume continues the same run.
    Ctrl-C finishes the current step, saves a checkpoint and stops. inputs: where the pairs came from (recorded, so
    that --resume reads the same). The run directory's rules are llamalogue.run_dir's. Returns the last logged
    metrics and held-out accuracies."""
    device = device or default_device()
    out_dir = Path(out_dir)
    if not resume:
        check_run(init_dir)  # a damaged --init fails here, before --out is touched
    record = open_run(out_dir, "dpo", resume, overwrite, protected={"--init": init_dir})
    if record:
        init_dir = record["init"]
        config = DPOConfig.from_saved(record["train"], **asdict(config))

    # The policy starts as the init checkpoint (resuming: as this run's last checkpoint).
    model, tokenizer = load_model(out_dir if resume else init_dir, device)
    model.eval()  # dropout off: log-probs must be deterministic, and equal to the reference's at step 0
    data, too_long = encode_pairs(tokenizer, pairs, model.config.max_seq_len)
    if too_long:
        notes = [*notes, f"dropped {too_long:,} pairs longer than the model's {model.config.max_seq_len} tokens"]
    if not data:
        raise RunError("no training pairs left")

    # The reference: the init model's reply log-probs, computed once (resuming: restored with the checkpoint).
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if resume:
        state = load_state(out_dir, device)
        if state["data"] != fingerprint(data):
            raise RunError(f"--resume {out_dir}: the training pairs differ from the ones this run started with")
        reference, step = state["reference"], state["step"]
        optimizer.load_state_dict(state["optimizer"])
    else:
        started = time.time()
        reference = reference_logprobs(model, data, tokenizer.pad_id, config.eval_batch_size)
        notes = [*notes, f"reference log-probs of {len(data):,} pairs computed once in {time.time() - started:.0f} s"]

    steps_per_epoch = math.ceil(len(data) / config.pairs_per_step)
    total_steps = config.epochs * steps_per_epoch
    stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    scale = (f"preset {config.preset}: {len(data):,} pairs x {config.epochs} epochs = {total_steps:,} steps of "
             f"{config.pairs_per_step} pairs (batch {config.batch_size} x accumulation {config.grad_accum}), "
             f"{config.loss} loss, beta {config.beta}, lr {config.lr:g}; model {model.num_parameters():,} parameters "
             f"(dim {model.config.dim}, {model.config.n_layers} layers) on {device}")
    print(f"DPO at scale: {scale}")
    for note in notes:
        print(f"  {note}")
    if stop_step < total_steps:
        print(f"  stopping at step {stop_step:,} (--max-steps); `--resume` continues the same schedule")
    run_config = {"stage": "dpo", "scale": scale, "init": str(init_dir), "inputs": {"init": str(init_dir),
                  **(record or {}).get("inputs", inputs or {})}, "train": asdict(config), "notes": list(notes),
                  "pairs": len(data), "held_out": {name: len(p) for name, p in held_out.items()}}
    log = RunLog(out_dir, resume_step=step if resume else None)
    if not resume:
        write_json(out_dir / CONFIG, run_config)
    held_out_columns = [f"dialogue_mp_{name}" for name in held_out]
    columns = ["step", "epoch", "pairs", "lr", *METRICS, "grad_norm", "pairs_per_s", *held_out_columns]

    def log_row(**values):
        log.log({column: values.get(column, "") for column in columns})

    def check_held_out():
        started = time.time()
        scores = evaluate_held_out(model, tokenizer, held_out, config.eval_batch_size)
        if scores:
            log_row(step=step, epoch=round(step / steps_per_epoch, 4), **scores)
            tqdm.write(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
                       + f" ({time.time() - started:.0f} s)")
        return scores

    def save():
        state = {"optimizer": optimizer.state_dict(), "step": step, "reference": reference, "data": fingerprint(data)}
        save_checkpoint(out_dir, model, tokenizer, run_config, state)

    def plot():
        plot_curves(log.csv_path, ["reward_chosen", "reward_rejected", "margin"], out_dir / "rewards.png",
                    "DPO reward trends: appropriate (chosen) vs random (rejected) replies")
        plot_curves(log.csv_path, ["loss"], out_dir / "loss.png", f"DPO loss ({config.loss})")
        plot_curves(log.csv_path, ["accuracy", *held_out_columns], out_dir / "accuracy.png",
                    "preference accuracy (training) and dialogue-MP accuracy (held-out)")

    def pairs_in(s):  # the last step of an epoch may get fewer pairs
        return min(config.pairs_per_step, len(data) - (s % steps_per_epoch) * config.pairs_per_step)

    scores = {} if resume else check_held_out()  # the starting point: the init model's dialogue-MP
    seen = sum(map(pairs_in, range(step)))
    bar = tqdm(total=sum(map(pairs_in, range(stop_step))), initial=seen, unit="pair", desc="DPO", dynamic_ncols=True)
    window, window_pairs, window_start, last = dict.fromkeys(METRICS, 0.0), 0, time.time(), {}
    with StopOnCtrlC() as ctrl_c:  # the loop finishes its step, saves and stops (a second Ctrl-C kills)
        while step < stop_step and not ctrl_c.requested:
            epoch, position = divmod(step, steps_per_epoch)
            batch = epoch_order(len(data), config.seed, epoch)[position * config.pairs_per_step:
                                                               (position + 1) * config.pairs_per_step].tolist()
            lr = learning_rate(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = accumulate_gradients(model, [data[i] for i in batch], reference[batch], config, tokenizer.pad_id)
            if not math.isfinite(sums["loss"]):
                raise RunError(f"step {step + 1}: the DPO loss is {sums['loss']}; stopping. The last good checkpoint "
                               f"in {out_dir} is kept (lower --lr or --beta)")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch)
            window = {metric: window[metric] + sums[metric] for metric in METRICS}
            window_pairs += len(batch)
            bar.update(len(batch))

            if step % config.log_every == 0 or step == stop_step or ctrl_c.requested:
                speed = window_pairs / (time.time() - window_start)
                last = {metric: value / window_pairs for metric, value in window.items()}
                log_row(step=step, epoch=round(step / steps_per_epoch, 4), pairs=seen, lr=f"{lr:.3e}",
                        grad_norm=round(grad_norm, 4), pairs_per_s=round(speed, 1), **last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", margin=f"{last['margin']:.3f}",
                                acc=f"{last['accuracy']:.2f}")
                window, window_pairs, window_start = dict.fromkeys(METRICS, 0.0), 0, time.time()
            end_of_epoch = step % steps_per_epoch == 0 or step == stop_step
            if end_of_epoch:
                scores = check_held_out()
            if step % config.checkpoint_every == 0 or end_of_epoch or ctrl_c.requested:
                save()
            if end_of_epoch or ctrl_c.requested:
                plot()
    bar.close()
    if ctrl_c.requested:
        print(f"interrupted: checkpoint at step {step:,} saved in {out_dir}; `--resume` continues from there")
    else:
        print(f"DPO done at scale: {scale}\n  {step:,}/{total_steps:,} steps; checkpoint in {out_dir}")
    summary = {**last, **scores, "step": step, "total_steps": total_steps, "interrupted": ctrl_c.requested}
    log.jsonl("summary.jsonl", summary)
    return summary
