"""A learned reward model: the RLHF counterpart of DPO, trained on the same natural preference pairs.

DPO turns preference pairs (caregiver prompt x, the child's real reply y_w, a random child reply y_l) straight into
a policy. Classic RLHF (Christiano et al., 2017; Ouyang et al., 2022) first fits a reward model r(x, y) to the
pairs, then lets PPO maximise it (`python train_ppo.py --reward preference`). The same pairs then train DPO and PPO,
so the two methods are compared on equal terms.

The model is the pretrained llamalogue with a scalar head on its last hidden state at the reply's last token -- the
newline that ends the child's turn, where the model has read the whole exchange:

    [BOS] *MOT: what is that ?\\n*CHI: it looks like a gun .\\n        r(x, y) = w . h_last + b

It is trained with the Bradley-Terry model of a preference, P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)):

    L = -log sigma( r(x, y_w) - r(x, y_l) )

(bradley_terry_loss). Its accuracy is the share of held-out pairs with r(x, y_w) > r(x, y_l) strictly -- the
dialogue minimal-pair test, taken by the reward model instead of the language model.

    python train_reward_model.py --init RUN --pairs-file PAIRS --out RM_DIR

writes a run directory (config.json, checkpoint.pt with the trunk and the "reward_head", tokenizer.model), log.csv,
loss.png and reward_model.json (the held-out accuracies). Pairs are read and filtered as DPO reads natural pairs
(llamalogue.alignment.pairs.load_pairs: evaluation overlap dropped), and rows are laid out as DPO's
(llamalogue.alignment.reply_scoring). A run is written once, at the end (~10 minutes on a CPU core for 18,000
pairs): there is nothing to resume.

A held-out judge for RL (llamalogue.rl.judge) is a second reward model that never saw the first one's pairs:

    python train_reward_model.py --half 0 --out runs/rm-half0     # trains on one half of the training pairs
    python train_reward_model.py --half 1 --out runs/rm-half1     # the other half: the judge

`half_of` splits the training pairs (after the held-out overlap is dropped, before --limit) by a seeded hash of each
pair's text, so the halves are disjoint whatever --seed, --limit or the file's order; identical pairs fall in the
same half. The record (config.json "half") keeps the half, the split's seed and both halves' sizes.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.alignment.pairs import AlignmentInputs, load_pairs, subsample
from llamalogue.alignment.reply_scoring import pair_exchanges, pair_scores, score_replies, tagged, trainable_pairs
from llamalogue.checkpoint import check_run, is_run_dir, load_config, load_model, load_state
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.model import Llama, default_device
from llamalogue.presets import Presets
from llamalogue.run_dir import RunError, write_json
from llamalogue.run_shell import Run, RunFolder
from llamalogue.runlog import Window, plot_curves
from llamalogue.schedules import epoch_order, learning_rate, set_learning_rate
from llamalogue.word_budget import pair_words


# tiny: tests. small: the CPU run, one epoch of the paper's 18,000 natural pairs, as DPO's small preset.
# paper: every pair, the learning rate of common RLHF reward models (the paper trained none).
PRESETS = {"tiny": dict(batch_size=4, lr=1e-3, limit=64, eval_limit=32, log_every=1), "small": {},
           "paper": dict(lr=1e-5, limit=0)}


@dataclass
class RewardModelConfig(Presets):
    batch_size: int = 16  # pairs per step
    lr: float = 5e-5
    warmup_ratio: float = 0.05  # linear warmup over this fraction of the steps, then linear decay to 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 1
    limit: int = 18000  # training pairs (0: all)
    eval_limit: int = 0  # held-out pairs per set (0: all)
    eval_batch_size: int = 64
    log_every: int = 20
    seed: int = 0
    half: int | None = None  # 0 or 1: train on that half of the training pairs only (half_of); None: on all

    presets = PRESETS
    stop_setting = None  # a run is written once, at the end: never stopped early, never resumed

    def __post_init__(self):
        self.check_at_least(1, "batch_size", "epochs", "eval_batch_size", "log_every")
        self.check_at_least(0, "limit", "eval_limit")
        if self.half not in (None, 0, 1):
            raise ValueError(f"--half {self.half}: choose 0 or 1")


HALF_SEED = 0  # the seed of the split into halves: fixed, so that models trained with other --seed stay disjoint


def pair_half(pair: Pair, seed: int = HALF_SEED) -> int:
    """0 or 1: the lowest bit of sha256(seed, prompt, chosen, rejected), a coin flip fixed by the pair's text."""
    text = "\t".join((str(seed), pair.prompt, pair.chosen, pair.rejected))
    return hashlib.sha256(text.encode()).digest()[0] & 1


def half_of(pairs: list[Pair], half: int, seed: int = HALF_SEED) -> list[Pair]:
    """The pairs whose pair_half is `half`, in their order: half_of(p, 0) and half_of(p, 1) are disjoint and together
    are p (each about half of it)."""
    return [pair for pair in pairs if pair_half(pair, seed) == half]


class RewardModel(nn.Module):
    """r(x, y): a llamalogue trunk and a scalar head read at the last token of each row."""

    def __init__(self, lm: Llama):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.dim, 1)
        nn.init.zeros_(self.head.weight)  # r = 0 for every reply at the start: no preference before training
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens, attention, reply=None) -> torch.Tensor:
        """r(x, y) = w . h_last + b of right-padded rows [N, T] (collate's tensors): the head reads each row's last
        real token, the newline that ends the reply, so the reply mask is not needed."""
        hidden = self.lm(tokens, attention, compute_logits=False)
        last = attention.sum(dim=1) - 1
        return self.head(hidden[torch.arange(len(tokens), device=tokens.device), last]).squeeze(-1).float()

    def score(self, tokenizer, prompts: list[str], replies: list[str], batch_size: int = 64) -> list[float]:
        """r(x, y) of untagged prompts and replies ("what is that ?", "a ball ."), in batches of similar length."""
        return score_replies(self, tokenizer, tagged(prompts, replies), batch_size, score=RewardModel.__call__).tolist()


def bradley_terry_loss(chosen, rejected):
    """L = -log sigma(r(x, y_w) - r(x, y_l)) per pair, and whether r(x, y_w) > r(x, y_l) strictly (the accuracy)."""
    return -F.logsigmoid(chosen - rejected), (chosen > rejected).float()


def accuracy(model: RewardModel, tokenizer, pairs: list[Pair], batch_size: int) -> float:
    """The share of pairs with r(x, y_w) > r(x, y_l) strictly; batch_size pairs (two rows each) per forward pass."""
    chosen, rejected = score_replies(model, tokenizer, pair_exchanges(pairs), 2 * batch_size,
                                     score=RewardModel.__call__).view(2, -1)
    return bradley_terry_loss(chosen, rejected)[1].mean().item()


def load_reward_model(run_dir, device="cpu") -> tuple[RewardModel, object]:
    """A trained reward model and its tokenizer, from the directory train() wrote."""
    if not is_run_dir(run_dir) or load_config(run_dir).get("stage") != "reward_model":
        raise FileNotFoundError(f"--reward-model {run_dir}: not a reward model (train one with "
                                f"`python train_reward_model.py --init RUN --out {run_dir}`)")
    lm, tokenizer = load_model(run_dir, device)
    model = RewardModel(lm).to(device)
    model.head.load_state_dict(load_state(run_dir, device)["reward_head"])
    return model.eval(), tokenizer


def training_pairs(inputs: AlignmentInputs,
                   config: RewardModelConfig) -> tuple[list[Pair], dict[str, list[Pair]], list[str], dict | None]:
    """(training pairs, held-out sets, notes, the half's record): the pairs as DPO reads them (load_pairs), with
    --half the half of them (half_of) before --limit."""
    halved = config.half is not None  # then the limit applies to the half, after the split
    pairs, held_out, notes = load_pairs(inputs, 0 if halved else config.limit, config.eval_limit, config.seed)
    if not halved:
        return pairs, held_out, notes, None
    kept = half_of(pairs, config.half)
    half = {"half": config.half, "seed": HALF_SEED, "sizes": [len(half_of(pairs, h)) for h in (0, 1)]}
    notes.append(f"half {config.half} of the training pairs (split seed {HALF_SEED}): {len(kept):,} of "
                 f"{len(pairs):,}")
    return subsample(kept, config.limit, config.seed), held_out, notes, half


def train(folder: RunFolder, inputs: AlignmentInputs, options: dict, device: str | None = None) -> dict:
    """Fit a reward model from the run inputs.init to the natural pairs of `inputs`; -> the summary saved as
    RUN/reward_model.json. options: the RewardModelConfig fields given ("preset" among them). A run is written once,
    at the end: an existing run in the folder is never replaced."""
    device = device or default_device()

    # The run and its pairs: checked before anything is written.
    inputs = inputs.completed()
    if not is_run_dir(inputs.init):
        raise RunError(f"--init {inputs.init}: not a llamalogue run directory")
    check_run(inputs.init)  # a damaged --init fails here, before --out is touched
    run = Run(folder, "reward_model", RewardModelConfig, options, protected={"--init": inputs.init}, flags=())
    config = run.config
    pairs, held_out, notes, half = training_pairs(inputs, config)
    run.clear()

    # The model: the pretrained trunk and a zero head; dropout off, as in every stage that compares scores.
    lm, tokenizer = load_model(inputs.init, device)
    model = RewardModel(lm).to(device).eval()
    pairs = trainable_pairs(tokenizer, pairs, lm.config.max_seq_len, "ours", notes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    scale = (f"reward model: {len(pairs):,} pairs x {config.epochs} epochs = {total_steps:,} steps of "
             f"{config.batch_size} pairs, lr {config.lr:g}; {lm.num_parameters():,}-parameter trunk on {device}")
    print("\n  ".join([scale, *notes]))
    log = run.begin(scale, config, inputs.recorded(), init=inputs.init, notes=notes, pairs=len(pairs), half=half,
                    held_out={name: len(p) for name, p in held_out.items()},
                    words=config.epochs * sum(pair_words(pairs)))  # its trunk reads every pair once per epoch

    # The loop.
    bar = tqdm(total=config.epochs * len(pairs), unit="pair", desc="reward model", dynamic_ncols=True)
    window = Window(["loss", "accuracy"])
    for step in range(total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(len(pairs), config.seed, epoch)
        batch = [pairs[i] for i in order[position * config.batch_size : (position + 1) * config.batch_size].tolist()]
        set_learning_rate(optimizer, learning_rate(step, total_steps, config.lr, warmup_steps, decay="linear"))
        losses, right = bradley_terry_loss(*pair_scores(model, tokenizer, batch, score=RewardModel.__call__))
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        if not math.isfinite(losses.mean().item()):
            raise RunError(f"step {step + 1}: the reward-model loss is not finite; lower --lr")
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window.add({"loss": losses.sum().item(), "accuracy": right.sum().item()}, len(batch))
        bar.update(len(batch))
        if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
            means, pairs_per_s = window.close()
            log.log({"step": step + 1, **means, "pairs_per_s": pairs_per_s})
            bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}")
    bar.close()

    summary = {"train_pairs": len(pairs), "steps": total_steps,
               "held_out_accuracy": {name: accuracy(model, tokenizer, p, config.eval_batch_size)
                                     for name, p in held_out.items() if p}}
    run.save(model.lm, tokenizer, {"reward_head": model.head.state_dict()})
    write_json(run.out / "reward_model.json", summary)
    plot_curves(log.csv_path, ["loss", "accuracy"], run.out / "loss.png", "reward model: Bradley-Terry loss, accuracy")
    for name, value in summary["held_out_accuracy"].items():
        print(f"held-out accuracy r(x, y_w) > r(x, y_l) on {name} ({len(held_out[name]):,} pairs): {value:.4f}")
    return summary
