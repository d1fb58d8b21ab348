"""A PPO run: caregiver prompts and a reward in, a run directory out (the algorithm itself is llamalogue.rl.ppo).

    RUN/config.json     the PPO configuration (PPOConfig's fields under "train") and the run's reward and inputs
    RUN/log.csv         one row per PPO step: reward, KL, beta, losses, clip fraction, entropy, reply length,
                        distinct_frac and top_reply_frac (collapse), the time split
    RUN/samples.jsonl   10 fixed prompts' replies before and after training, and 2 training replies every few steps
    RUN/reward.png, kl.png, diversity.png, summary.json (start -> end of each curve)
"""

import copy
import hashlib
import functools
import math
from dataclasses import asdict
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from llamalogue.checkpoint import check_run, load_model, load_state, save_checkpoint
from llamalogue.generation import sample_replies
from llamalogue.model import default_device
from llamalogue.rl.ppo import PolicyWithValue, PPOConfig, PPOTrainer
from llamalogue.run_dir import CONFIG, StopOnCtrlC, init_inputs, open_run, write_json
from llamalogue.runlog import RunLog, plot_curves, read_csv
from llamalogue.tokenizer import format_prompt, reply_stop_ids


class PromptSchedule:
    """The prompt indices of each step: the prompts in a seeded random order, reshuffled whenever they run out.

    A function of (seed, step) alone, so that a resumed run goes on with exactly the prompts it would have seen.
    """

    def __init__(self, n_prompts: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n_prompts, batch_size, seed
        self.orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.orders[epoch] = torch.randperm(self.n, generator=generator).tolist()
        return self.orders[epoch]

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self.order(p // self.n)[p % self.n] for p in positions]

    def prompts_until(self, steps: int) -> list[int]:
        """Every prompt index the first `steps` steps use (each once)."""
        return list(dict.fromkeys(i for step in range(steps) for i in self.batch(step)))


COLLAPSE_WARNING = 0.5  # the share of a batch saying one reply that is printed as a possible collapse

LOG_PLOTS = {"reward.png": (["reward_mean"], "task reward (mean per step)"),
             "kl.png": (["kl"], "KL(policy || reference) per reply"),
             "diversity.png": (["distinct_frac", "top_reply_frac"], "distinct / most frequent reply, share of batch")}


def train(init_dir, out_dir, prompts: list[str], reward, config: PPOConfig, preset: str = "custom",
          max_steps: int | None = None, resume: bool = False, device: str | None = None, run_info: dict | None = None,
          n_samples: int = 10) -> dict:
    """PPO from the run directory init_dir into out_dir; returns the summary (also out_dir/summary.json).

    reward(prompts, replies) -> list[float] (llamalogue.rl.rewards; its optional prepare(prompts) runs once before the
    first step, with every prompt of the run: teacher references, PMI's prompt pool). run_info: extra settings
    recorded in the config (reward name, prompts file, teacher...). With resume, the weights, value head, optimizer,
    beta, reward statistics, RNG and step come from out_dir's checkpoint and the run goes on where it stopped.
    Ctrl-C finishes the step, saves and stops. The run directory's rules are llamalogue.run_dir's.
    """
    out_dir = Path(out_dir)
    device = device or default_device()
    check_run(init_dir)  # a damaged --init fails here, before --out is touched
    # the reference model and the prompts a resumed run must go on with: the same checkpoint, the same prompts
    inputs = {**init_inputs(init_dir), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}
    open_run(out_dir, "ppo", resume, overwrite=False, inputs=inputs, protected={"--init": init_dir},
             options=("--resume",))
    lm, tokenizer = load_model(init_dir, device)
    reference = copy.deepcopy(lm)  # pi_ref: the frozen starting point
    policy = PolicyWithValue(lm).to(device)
    trainer = PPOTrainer(policy, reference, config, reply_stop_ids(tokenizer), tokenizer.pad_id)

    if not prompts:
        raise ValueError("PPO needs at least one prompt")
    encoded = [(p, format_prompt(tokenizer, p)) for p in prompts]
    kept = [(p, ids) for p, ids in encoded if len(ids) <= config.max_prompt_tokens]
    if not kept:
        raise ValueError(f"no prompt fits max_prompt_tokens={config.max_prompt_tokens}")
    n_long = len(encoded) - len(kept)
    if config.max_prompts is not None and len(kept) > config.max_prompts:  # a seeded random subset, in file order
        chosen = torch.randperm(len(kept), generator=torch.Generator().manual_seed(config.seed))[: config.max_prompts]
        kept = [kept[i] for i in sorted(chosen.tolist())]
    texts, prompt_ids = [p for p, _ in kept], [ids for _, ids in kept]
    schedule = PromptSchedule(len(kept), config.batch_size, config.seed)
    total_steps = math.ceil(config.total_prompts / config.batch_size)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    n_params = lm.num_parameters()
    scale = (f"PPO preset {preset}: {total_steps} steps x {config.batch_size} prompts = "
             f"{total_steps * config.batch_size} episodes from {len(kept)} of {len(encoded)} prompts ({n_long} longer "
             f"than {config.max_prompt_tokens} tokens), {config.ppo_epochs} epochs x "
             f"{config.batch_size // config.minibatch_size} minibatches, {n_params / 1e6:.2f}M-parameter model "
             f"on {device}")
    print(scale)
    run_config = {"stage": "ppo", "scale": scale, "preset": preset, "init": str(init_dir), **(run_info or {}),
                  "inputs": inputs, "train": asdict(config)}

    step = 0
    if resume:
        state = load_state(out_dir, device)
        policy.lm.load_state_dict(state["model"])
        policy.value_head.load_state_dict(state["value_head"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.kl_ctl.value = state["kl_coef"]
        trainer.reward_moments.load_state_dict(state["reward_moments"])
        trainer.generator.set_state(state["generator"].cpu())
        step = state["step"]
        print(f"resuming {out_dir} at step {step}")
    log = RunLog(out_dir, resume_step=step if resume else None)
    if not resume:
        write_json(out_dir / CONFIG, run_config)

    sample_prompts = [texts[i] for i in schedule.order(0)[:n_samples]]  # the first training prompts
    run_prompts = sample_prompts + [texts[i] for i in schedule.prompts_until(total_steps)]
    if hasattr(reward, "prepare"):  # e.g. the teacher answers every prompt now, so that no PPO step waits for it
        reward.prepare(list(dict.fromkeys(run_prompts)))

    def write_samples(phase: str):
        replies, stopped = sample_replies(policy.lm, tokenizer, sample_prompts, config.seed + 1, config.max_new_tokens,
                                          config.temperature, config.top_k, config.top_p)
        scores = trainer.scores(replies, stopped, lambda rows, texts: reward([sample_prompts[i] for i in rows], texts))
        for prompt, reply, done, score in zip(sample_prompts, replies, stopped, scores.tolist()):
            log.jsonl("samples.jsonl", {"phase": phase, "step": step, "prompt": prompt, "reply": reply,
                                        "stopped": done, "reward": score})

    def save():
        save_checkpoint(out_dir, policy.lm, tokenizer, run_config, {
            "value_head": policy.value_head.state_dict(), "optimizer": trainer.optimizer.state_dict(), "step": step,
            "kl_coef": trainer.kl_ctl.value, "reward_moments": trainer.reward_moments.state_dict(),
            "generator": trainer.generator.get_state()})
        for png, (columns, title) in LOG_PLOTS.items():
            plot_curves(log.csv_path, columns, out_dir / png, f"PPO ({run_config.get('reward', 'reward')}): {title}")

    if step == 0:
        write_samples("before")

    def score_rows(batch: list[int], rows: list[int], replies: list[list[int]]) -> list[float]:
        return reward([texts[batch[i]] for i in rows], [tokenizer.decode(r).strip() for r in replies])

    warned_collapse = False
    bar = tqdm(total=total_steps * config.batch_size, initial=step * config.batch_size, unit="prompt",
               desc=f"PPO {run_config.get('reward', '')}", dynamic_ncols=True)
    with StopOnCtrlC() as ctrl_c:  # the loop finishes its step, saves and stops (a second Ctrl-C kills)
        while step < total_steps and not ctrl_c.requested:
            batch = schedule.batch(step)
            stats, rollout, scores = trainer.step([prompt_ids[i] for i in batch], functools.partial(score_rows, batch))
            step += 1
            seconds = stats["t_rollout"] + stats["t_reward"] + stats["t_update"]
            log.log({"step": step, "prompts": step * config.batch_size, **stats,
                     "prompts_per_s": config.batch_size / seconds})
            if step % config.sample_every == 0:
                for i in range(min(2, len(batch))):
                    log.jsonl("samples.jsonl", {"phase": "train", "step": step, "prompt": texts[batch[i]],
                                                "reply": tokenizer.decode(rollout.replies[i]).strip(),
                                                "stopped": rollout.stopped[i], "reward": scores[i].item()})
            if step % config.save_every == 0 or step == total_steps or ctrl_c.requested:
                save()
            if stats["top_reply_frac"] >= COLLAPSE_WARNING and not warned_collapse:
                reply = Counter(map(tuple, rollout.replies)).most_common(1)[0][0]
                tqdm.write(f"step {step}: {stats['top_reply_frac']:.0%} of the batch replied "
                           f"{tokenizer.decode(list(reply)).strip()!r} (distinct_frac {stats['distinct_frac']:.2f}): "
                           f"the policy may be collapsing onto one reply (log.csv: distinct_frac, top_reply_frac)")
                warned_collapse = True
            bar.update(config.batch_size)
            bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.2f}",
                            distinct=f"{stats['distinct_frac']:.2f}")
    bar.close()
    if ctrl_c.requested:
        print(f"interrupted: checkpoint at step {step:,} saved in {out_dir}; `--resume` continues from there")
        return summarize(log.csv_path)
    write_samples("after")
    summary = summarize(log.csv_path)
    write_json(out_dir / "summary.json", {"scale": scale, **summary})
    return summary


def summarize(csv_path) -> dict:
    """Reward, KL, entropy, reply length and diversity at the start and end of the run (means over its first and last
    tenth of the steps) and the step-time split."""
    rows = read_csv(csv_path)
    if not rows:
        return {}
    tenth = max(1, len(rows) // 10)

    def mean(column, part):
        return sum(float(r[column]) for r in part) / len(part)

    summary = {"steps": len(rows)}
    for column in ("reward_mean", "kl", "entropy", "reply_len", "distinct_frac", "top_reply_frac"):
        summary[column] = {"start": mean(column, rows[:tenth]), "end": mean(column, rows[-tenth:])}
    summary["seconds_per_step"] = {t: mean(f"t_{t}", rows) for t in ("rollout", "reward", "update")}
    return summary
