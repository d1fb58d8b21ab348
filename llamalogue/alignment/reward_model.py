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

    python -m llamalogue.reward_model --init RUN --pairs-file PAIRS --out RM_DIR

writes a run directory (config.json, checkpoint.pt with the trunk and the "reward_head", tokenizer.model), log.csv,
loss.png and reward_model.json (the held-out accuracies). Pairs are read and filtered as DPO reads natural pairs
(llamalogue.alignment.pairs.load_pairs: evaluation overlap dropped). A run is written once, at the end (~10 minutes on a CPU
core for 18,000 pairs): there is nothing to resume.
"""

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.checkpoint import check_run, is_run_dir, load_config, load_model, load_state, save_checkpoint
from llamalogue.cli import USER_ERRORS
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.alignment.dpo import collate, encode_reply, learning_rate, length_batches
from llamalogue.model import Llama, default_device
from llamalogue.alignment.pairs import load_pairs
from llamalogue.presets import Presets
from llamalogue.schedules import epoch_order
from llamalogue.run_dir import CONFIG, open_run, write_json
from llamalogue.runlog import RunLog, plot_curves


# tiny: tests. small: the CPU run, one epoch of the paper's 18,000 natural pairs, as DPO's small preset.
# paper: every pair, the learning rate of common RLHF reward models (the paper trained none).
PRESETS = {"tiny": dict(batch_size=4, lr=1e-3, limit=64, eval_limit=32, log_every=1), "small": {},
           "paper": dict(lr=1e-5, limit=0)}


@dataclass
class RewardModelConfig(Presets):
    batch_size: int = 16  # pairs per step
    lr: float = 5e-5
    warmup_ratio: float = 0.05  # then linear decay to 0 (llamalogue.alignment.dpo.learning_rate)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 1
    limit: int = 18000  # training pairs (0: all)
    eval_limit: int = 0  # held-out pairs per set (0: all)
    eval_batch_size: int = 64
    log_every: int = 20
    seed: int = 0

    presets = PRESETS

    def __post_init__(self):
        self.check_at_least(1, "batch_size", "epochs", "eval_batch_size", "log_every")
        self.check_at_least(0, "limit", "eval_limit")


class RewardModel(nn.Module):
    """r(x, y): a llamalogue trunk and a scalar head read at the last token of each row."""

    def __init__(self, lm: Llama):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.dim, 1)
        nn.init.zeros_(self.head.weight)  # r = 0 for every reply at the start: no preference before training
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens, attention, last) -> torch.Tensor:
        """Scores [N] of right-padded rows [N, T]; last[i] is the column of row i's last real token."""
        hidden = self.lm(tokens, attention, compute_logits=False)
        return self.head(hidden[torch.arange(len(tokens), device=tokens.device), last]).squeeze(-1).float()

    def score_rows(self, rows: list[list[int]], pad_id: int) -> torch.Tensor:
        tokens, attention, _ = collate([(ids, 1) for ids in rows], pad_id, self.head.weight.device)
        last = torch.tensor([len(ids) - 1 for ids in rows], device=tokens.device)
        return self(tokens, attention, last)

    @torch.no_grad()
    def score(self, tokenizer, prompts: list[str], replies: list[str], batch_size: int = 64) -> list[float]:
        """r(x, y) of untagged prompts and replies ("what is that ?", "a ball ."), in batches of similar length."""
        rows = [encode_reply(tokenizer, f"*MOT: {p}", f"*CHI: {r}")[0] for p, r in zip(prompts, replies)]
        scores = [0.0] * len(rows)
        for batch in length_batches(list(map(len, rows)), batch_size):
            for i, value in zip(batch, self.score_rows([rows[i] for i in batch], tokenizer.pad_id).tolist()):
                scores[i] = value
        return scores


def bradley_terry_loss(chosen, rejected):
    """L = -log sigma(r(x, y_w) - r(x, y_l)) per pair, and whether r(x, y_w) > r(x, y_l) strictly (the accuracy)."""
    return -F.logsigmoid(chosen - rejected), (chosen > rejected).float()


def pair_scores(model: RewardModel, tokenizer, pairs: list[Pair]):
    """r(x, y_w) and r(x, y_l), each [B]: chosen and rejected rows share one forward pass."""
    rows = [encode_reply(tokenizer, p.prompt, reply)[0] for p in pairs for reply in (p.chosen, p.rejected)]
    scores = model.score_rows(rows, tokenizer.pad_id)
    return scores[0::2], scores[1::2]


@torch.no_grad()
def accuracy(model: RewardModel, tokenizer, pairs: list[Pair], batch_size: int) -> float:
    right = 0.0
    for start in range(0, len(pairs), batch_size):
        right += bradley_terry_loss(*pair_scores(model, tokenizer, pairs[start : start + batch_size]))[1].sum().item()
    return right / len(pairs)


def load_reward_model(run_dir, device="cpu") -> tuple[RewardModel, object]:
    """A trained reward model and its tokenizer, from the directory train() wrote."""
    if not is_run_dir(run_dir) or load_config(run_dir).get("stage") != "reward_model":
        raise FileNotFoundError(f"--reward-model {run_dir}: not a reward model (train one with `python -m "
                                f"llamalogue.alignment.reward_model --init RUN --out {run_dir}`)")
    lm, tokenizer = load_model(run_dir, device)
    model = RewardModel(lm).to(device)
    model.head.load_state_dict(load_state(run_dir, device)["reward_head"])
    return model.eval(), tokenizer


def train(init_dir, out_dir, pairs: list[Pair], held_out: dict[str, list[Pair]], config: RewardModelConfig,
          device: str | None = None, notes: list[str] = ()) -> dict:
    """Fit a reward model from the run in init_dir to the pairs; -> the summary saved as out_dir/reward_model.json."""
    out_dir, device = Path(out_dir), device or default_device()
    check_run(init_dir)  # a damaged --init fails here, before --out is touched
    open_run(out_dir, "reward_model", resume=False, overwrite=False, protected={"--init": init_dir}, options=())
    lm, tokenizer = load_model(init_dir, device)
    model = RewardModel(lm).to(device).eval()  # dropout off, as in every stage that compares scores
    fits = [p for p in pairs if max(len(encode_reply(tokenizer, p.prompt, r)[0]) for r in (p.chosen, p.rejected))
            <= lm.config.max_seq_len]
    if not fits:
        raise ValueError("no training pairs left")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(fits) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    scale = (f"reward model: {len(fits):,} pairs x {config.epochs} epochs = {total_steps:,} steps of "
             f"{config.batch_size} pairs, lr {config.lr:g}; {lm.num_parameters():,}-parameter trunk on {device}")
    print(scale)
    for note in notes:
        print(f"  {note}")
    log = RunLog(out_dir)
    run_config = {"stage": "reward_model", "scale": scale, "init": str(init_dir), "train": asdict(config),
                  "notes": list(notes), "pairs": len(fits), "held_out": {name: len(p) for name, p in held_out.items()}}
    write_json(out_dir / CONFIG, run_config)

    bar = tqdm(total=config.epochs * len(fits), unit="pair", desc="reward model", dynamic_ncols=True)
    window, started = {"loss": 0.0, "accuracy": 0.0, "pairs": 0}, time.time()
    for step in range(total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(len(fits), config.seed, epoch)
        batch = [fits[i] for i in order[position * config.batch_size : (position + 1) * config.batch_size].tolist()]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total_steps, config)
        losses, right = bradley_terry_loss(*pair_scores(model, tokenizer, batch))
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        if not math.isfinite(losses.mean().item()):
            raise ValueError(f"step {step + 1}: the reward-model loss is not finite; lower --lr")
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window["loss"] += losses.sum().item()
        window["accuracy"] += right.sum().item()
        window["pairs"] += len(batch)
        bar.update(len(batch))
        if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
            n = window["pairs"]
            row = {"step": step + 1, "loss": window["loss"] / n, "accuracy": window["accuracy"] / n,
                   "pairs_per_s": n / (time.time() - started)}
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
            window, started = {"loss": 0.0, "accuracy": 0.0, "pairs": 0}, time.time()
    bar.close()

    summary = {"train_pairs": len(fits), "steps": total_steps,
               "held_out_accuracy": {name: accuracy(model, tokenizer, p, config.eval_batch_size)
                                     for name, p in held_out.items() if p}}
    save_checkpoint(out_dir, model.lm, tokenizer, run_config, {"reward_head": model.head.state_dict()})
    write_json(out_dir / "reward_model.json", summary)
    plot_curves(log.csv_path, ["loss", "accuracy"], out_dir / "loss.png", "reward model: Bradley-Terry loss, accuracy")
    for name, value in summary["held_out_accuracy"].items():
        print(f"held-out accuracy r(x, y_w) > r(x, y_l) on {name} ({len(held_out[name]):,} pairs): {value:.4f}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llamalogue.reward_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="runs/lm-small", help="run dir of the pretrained llamalogue (the trunk)")
    parser.add_argument("--pairs-file", default=None, help="natural preference pairs (the paper's "
                        "huggingface_dpo_format.json or our JSONL); default: DATA/pairs/dpo_words_nooverlap.jsonl")
    parser.add_argument("--eval-pairs-file", nargs="+", default=None,
                        help="held-out pairs for the accuracy (default: the eval files beside --pairs-file)")
    parser.add_argument("--data", default="runs/data", help="data dir of the corpus stage (default: %(default)s)")
    parser.add_argument("--out", default="runs/reward-model", help="directory to write (default: %(default)s)")
    parser.add_argument("--preset", choices=list(PRESETS), default="small", help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help="training pairs (small: 18000; 0 = all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out pairs per set (0 = all)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = RewardModelConfig.options_given(args)
    try:
        config = RewardModelConfig.from_preset(args.preset, **overrides)
        if not is_run_dir(args.init):
            raise FileNotFoundError(f"--init {args.init}: not a llamalogue run directory")
        pairs, held_out, notes = load_pairs("natural", args.pairs_file, args.eval_pairs_file, args.data, config.limit,
                                            config.eval_limit, config.seed)
        train(args.init, args.out, pairs, held_out, config, device=args.device, notes=notes)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
