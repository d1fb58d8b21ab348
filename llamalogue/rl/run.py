"""An RL run: caregiver prompts and a reward in, a run directory out (the algorithms themselves: PPO in
llamalogue.rl.ppo; RLOO, GRPO, Dr. GRPO, GSPO, CISPO and DAPO in llamalogue.rl.group).

    RUN/config.json     the run's inputs (RLInputs: --init, reward, prompts file, teacher, its cache, the reward's
                        settings), the configuration (RLConfig's fields under "train", the algorithm and the group
                        size among them) and what --resume checks (llamalogue.run_shell)
    RUN/log.csv         one row per step: episodes so far ("prompts"), reward, KL, beta, losses, clip fraction,
                        entropy, reply length, distinct_frac and top_reply_frac (collapse, over the step's replies),
                        the time split, then reward_raw_mean, judge_mean (with --judge) and generic_share
                        (llamalogue.rl.judge: reward hacking in plain sight)
    RUN/samples.jsonl   10 fixed prompts' replies before and after training, and 2 training replies every few steps
    RUN/reward.png, kl.png, diversity.png, judge.png, summary.json (start -> end of each curve)

`train` opens the run (or resumes it), then loops as CleanRL's ppo.py does: a batch of prompts, one step (rollout,
rewards, update), a log row, now and then samples and a checkpoint. A step samples batch_size replies: group_size to
each of batch_size / group_size prompts (PPO: one each). The guards (llamalogue.rl.guards) wrap the reward: PAR
(config.par) draws its reference replies from the frozen reference before each step; the repeat penalty is the
trainer's.
"""

import copy
import dataclasses
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from tqdm import tqdm

from llamalogue.checkpoint import load_model, load_state, save_checkpoint
from llamalogue.model import default_device
from llamalogue.rl.config import ALGORITHM_NAMES, RLConfig
from llamalogue.rl.group import GroupTrainer, Policy
from llamalogue.rl.guards import ParReward
from llamalogue.rl.judge import WatchedReward, check_held_out, generic_replies, generic_share, reference_sampler
from llamalogue.rl.ppo import PolicyWithValue, PPOTrainer
from llamalogue.rl.rewards import REWARDS, make_reward
from llamalogue.rl.trainer import RLTrainer
from llamalogue.run_dir import write_json
from llamalogue.run_shell import Run, RunFolder, read_prompt_inputs
from llamalogue.runlog import RunLog, plot_curves, read_csv
from llamalogue.schedules import epoch_order
from llamalogue.teacher.config import sampling_dtype
from llamalogue.tokenizer import Tokenizer, format_prompt, reply_stop_ids
from llamalogue.word_budget import count_words, plus

RewardFunction = Callable[[list[str], list[str]], list[float]]  # reward(prompts, replies): llamalogue.rl.rewards

SAMPLE_PROMPTS = 10  # the fixed prompts answered before and after training
STEPS = "steps"  # RUN/steps/step_N: the copies --keep-every keeps (one of llamalogue.run_dir.RUN_SUBFOLDERS)
COLLAPSE_WARNING = 0.5  # the share of a batch saying one reply that is printed as a possible collapse

LOG_PLOTS = {"reward.png": (["reward_mean"], "task reward (mean per step)"),
             "kl.png": (["kl"], "KL(policy || reference) per reply"),
             "diversity.png": (["distinct_frac", "top_reply_frac", "generic_share"],
                               "distinct / most frequent / generic replies, share of batch"),
             "judge.png": (["reward_raw_mean", "judge_mean"], "training reward model vs held-out judge, same replies")}
SUMMARY_COLUMNS = ("reward_mean", "kl", "entropy", "reply_len", "distinct_frac", "top_reply_frac", "reward_raw_mean",
                   "judge_mean", "generic_share")


@dataclass
class RLInputs:
    """What an RL run is made from, recorded in its config.json so that --resume goes on with the same."""

    init: str  # the run directory of the starting (and reference) model
    reward: str | None  # a name of llamalogue.rl.rewards.REWARDS (None: not given, when resuming)
    prompts: str  # the caregiver utterances, one per line
    teacher: str | None = None  # HF folder, .gguf or hub id (None: the default teacher)
    teacher_cache: str | None = None  # JSONL cache of the teacher's replies
    # pmi_scorer, pmi_k, reward_model (one directory or a list: an ensemble), ensemble, judge, teacher_dtype
    reward_settings: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict) -> "RLInputs":
        return cls(**{field.name: record[field.name] for field in dataclasses.fields(cls)})


def settled_inputs(run: Run, given: RLInputs, device: str) -> RLInputs:
    """The run's inputs. A new run: those given, --teacher-dtype auto resolved once for this device (recorded, so
    that a resume on another machine samples as the run began). A resumed run: those it recorded; another reward,
    judge or teacher dtype given is refused."""
    dtype = given.reward_settings.get("teacher_dtype")
    if not run.resumed:
        dtype = sampling_dtype(dtype or "auto", torch.device(device).type)
        return dataclasses.replace(given, reward_settings={**given.reward_settings, "teacher_dtype": dtype})
    saved = RLInputs.from_record(run.saved)
    if given.reward not in (None, saved.reward):
        raise ValueError(f"--resume {run.out}: the run was trained with --reward {saved.reward}, not {given.reward}")
    judge = given.reward_settings.get("judge")
    if judge not in (None, saved.reward_settings.get("judge")):  # log.csv's columns were fixed at the first step
        raise ValueError(f"--resume {run.out}: the run's judge is {saved.reward_settings.get('judge')}, not --judge "
                         f"{judge}")
    if dtype not in (None, saved.reward_settings["teacher_dtype"]):
        raise ValueError(f"--resume {run.out}: the run's teacher samples in {saved.reward_settings['teacher_dtype']}, "
                         f"not --teacher-dtype {dtype}")
    return saved


def open_rl_run(folder: RunFolder, given: RLInputs, options: dict,
                device: str) -> tuple[Run, RLInputs, list[str], dict]:
    """The run (llamalogue.run_shell: a new run's preset with the options given, a resumed run's own settings), its
    inputs (settled_inputs), its prompts, and their fingerprint: the same --init checkpoint and the same prompts
    for a resumed run. All before any teacher loads."""
    if not folder.resume and given.reward is None:
        raise ValueError(f"--reward is required: one of {', '.join(REWARDS)}")
    run = Run(folder, "ppo", RLConfig, options, protected=None if folder.resume else {"--init": given.init},
              flags=("--resume",), reward=given.reward)  # resumed: --init is the run's own, read from its record
    inputs = settled_inputs(run, given, device)
    prompts, fingerprint = read_prompt_inputs(inputs.init, inputs.prompts)
    run.check_inputs(fingerprint)
    run.clear()
    return run, inputs, prompts, fingerprint


def encode_prompts(prompts: list[str], tokenizer: Tokenizer,
                   config: RLConfig) -> tuple[list[str], list[list[int]], int]:
    """The prompts the run draws from, as text and as the tokens the policy continues (`[BOS] *MOT: prompt \\n *CHI:`),
    and how many were longer than max_prompt_tokens (skipped rather than cut); of those that fit, a seeded random
    subset of max_prompts in file order."""
    fitting = [(p, ids) for p in prompts if len(ids := format_prompt(tokenizer, p)) <= config.max_prompt_tokens]
    if not fitting:
        raise ValueError(f"no prompt fits max_prompt_tokens={config.max_prompt_tokens}")
    kept = fitting
    if config.max_prompts is not None and len(fitting) > config.max_prompts:
        chosen = torch.randperm(len(fitting), generator=torch.Generator().manual_seed(config.seed))
        kept = [fitting[i] for i in sorted(chosen[: config.max_prompts].tolist())]
    return [p for p, _ in kept], [ids for _, ids in kept], len(prompts) - len(fitting)


class PromptSchedule:
    """The prompt indices of each step, prompts_per_step of them: the prompts in each pass's order
    (schedules.epoch_order), pass after pass.

    A function of (seed, step) alone, so that a resumed run goes on with exactly the prompts it would have seen.
    """

    def __init__(self, n_prompts: int, prompts_per_step: int, seed: int):
        self.n, self.prompts_per_step, self.seed = n_prompts, prompts_per_step, seed

    def order(self, epoch: int) -> list[int]:
        return epoch_order(self.n, self.seed, epoch).tolist()

    def batch(self, step: int) -> list[int]:
        positions = range(step * self.prompts_per_step, (step + 1) * self.prompts_per_step)
        return [int(epoch_order(self.n, self.seed, p // self.n)[p % self.n]) for p in positions]

    def prompts_until(self, steps: int) -> list[int]:
        """Every prompt index the first `steps` steps use (each once)."""
        return list(dict.fromkeys(i for step in range(steps) for i in self.batch(step)))


@dataclass
class TextReward:
    """A reward of texts as RLTrainer's Scorer: the batch's caregiver utterances and the decoded replies go to
    reward(prompts, replies) -> list[float] (llamalogue.rl.rewards)."""

    reward: RewardFunction
    tokenizer: Tokenizer
    prompts: list[str]  # the batch's caregiver utterances, row by row

    def decode(self, reply: list[int]) -> str:
        return self.tokenizer.decode(reply).strip()

    def __call__(self, rows: list[int], replies: list[list[int]]) -> list[float]:
        return self.reward([self.prompts[i] for i in rows], [self.decode(reply) for reply in replies])


def train(folder: RunFolder, inputs: RLInputs, options: dict, device: str | None = None) -> dict:
    """RL (config.algorithm) from the run inputs.init into the run's folder; returns the summary (also
    RUN/summary.json). options: the RLConfig fields given ("preset" among them; a new run's default is small). A
    resumed run goes on with its recorded inputs and settings (open_rl_run). reward_settings["judge"]: a reward
    model's directory that scores the same replies, never trained against (llamalogue.rl.judge). Ctrl-C finishes
    the step, saves and stops (llamalogue.run_shell)."""
    device = device or default_device()
    run, inputs, prompts, fingerprint = open_rl_run(folder, inputs, options, device)
    config = run.config
    reward, judge = make_rewards(inputs, config, device)
    lm, tokenizer = load_model(inputs.init, device)
    texts, prompt_ids, n_long = encode_prompts(prompts, tokenizer, config)
    trainer = make_trainer(lm, config, reply_stop_ids(tokenizer), tokenizer.pad_id, device)
    schedule = PromptSchedule(len(texts), config.prompts_per_step, config.seed)
    sample_reference = reference_sampler(trainer, tokenizer, dict(zip(texts, prompt_ids)))
    if config.par:  # the guard (llamalogue.rl.guards): the reward bounded by the reference's reply's
        reward = ParReward(reward, sample_reference)
    reward = WatchedReward(reward, judge)  # the raw reward and the judge's scores of each step's replies
    total_steps = math.ceil(config.total_prompts / config.batch_size)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scale = scale_line(config, total_steps, len(texts), len(prompts), n_long, lm, device)
    print(scale)
    step, words = 0, 0  # words: of the prompts and replies of the episodes so far (llamalogue.word_budget)
    if run.resumed:
        state = load_state(run.out, device)
        trainer.load_state_dict(state)
        step, words = state["step"], state.get("words")  # None: a checkpoint that kept no count
        print(f"resuming {run.out} at step {step}")
    # the record holds the inputs' fields (RLInputs.from_record reads them back), init among them: the run whose
    # words seen this one carries on
    log = run.begin(scale, config, fingerprint, step=step, words=words, **asdict(inputs))
    samples = schedule.order(0)[:SAMPLE_PROMPTS]  # the first training prompts
    # e.g. the teacher answers every prompt now, so that no step waits for it
    reward.prepare(list(dict.fromkeys(texts[i] for i in samples + schedule.prompts_until(total_steps))))
    generic = generic_replies(sample_reference, [texts[i] for i in schedule.order(0)], config.seed)
    sample_scorer = TextReward(reward, tokenizer, [texts[i] for i in samples])
    sample_ids = [prompt_ids[i] for i in samples]
    if step == 0:
        write_fixed_samples(log, "before", step, trainer, sample_scorer, sample_ids)

    warned_collapse = False
    bar = tqdm(total=total_steps * config.batch_size, initial=step * config.batch_size, unit="episode",
               desc=f"{ALGORITHM_NAMES[config.algorithm]} {inputs.reward}", dynamic_ncols=True)
    with run:  # Ctrl-C: the loop finishes its step, saves and stops (a second Ctrl-C kills)
        while step < total_steps and not run.interrupted:
            batch = schedule.batch(step)
            # the scorer reads the rollout's rows: group_size replies to each prompt, side by side
            scorer = TextReward(reward, tokenizer, [texts[i] for i in batch for _ in range(config.group_size)])
            if config.par:  # y_ref: one reply of pi_ref to each of the step's prompts, the same when resumed
                reward.reward.draw([texts[i] for i in batch], reference_seed(config.seed, step))
            reward.take()  # the watch starts over: what it sees next is this step's
            stats, rollout, scores = trainer.step([prompt_ids[i] for i in batch], scorer)
            replies = [scorer.decode(reply) for reply in rollout.replies]
            stats.update(reward.take(), generic_share=generic_share(replies, generic))
            step += 1
            words = plus(words, sum(count_words(p) + count_words(r) for p, r in zip(scorer.prompts, replies)))
            run.progress(words)
            seconds = stats["t_rollout"] + stats["t_reward"] + stats.get("t_resample", 0.0) + stats["t_update"]
            log.log({"step": step, "prompts": step * config.batch_size, **stats,
                     "prompts_per_s": config.batch_size / seconds})
            if step % config.sample_every == 0:
                for sample in reply_samples("train", step, scorer, rollout.replies, rollout.stopped, scores)[:2]:
                    log.jsonl("samples.jsonl", sample)
            if step % config.save_every == 0 or step == total_steps or run.interrupted:
                save(run, trainer, tokenizer, step, words)
            if config.keep_every and step % config.keep_every == 0:
                keep(run, trainer, tokenizer, step)
            if stats["top_reply_frac"] >= COLLAPSE_WARNING and not warned_collapse:
                tqdm.write(collapse_warning(step, stats, scorer, rollout.replies))
                warned_collapse = True
            bar.update(config.batch_size)
            bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.2f}",
                            distinct=f"{stats['distinct_frac']:.2f}")
    bar.close()
    if run.stopped(f"step {step:,}"):
        return {**summarize(log.csv_path), "interrupted": True}
    write_fixed_samples(log, "after", step, trainer, sample_scorer, sample_ids)
    summary = summarize(log.csv_path)
    write_json(run.out / "summary.json", {"scale": scale, **summary})
    return summary


def make_rewards(inputs: RLInputs, config: RLConfig, device: str):
    """(the reward the policy is trained on, the held-out judge or None: llamalogue.rl.judge). Each reward loads
    only what it uses: the teacher, the cache, the baby scorer or the reward model(s)."""
    settings = dict(inputs.reward_settings)
    judge_dir = settings.pop("judge", None)
    reward = make_reward(inputs.reward, teacher_name=inputs.teacher, references=inputs.teacher_cache,
                         seed=config.seed, scorer_run=inputs.init, device=device, style=config.reward_style,
                         **settings)
    judge = make_reward("preference", reward_model=judge_dir, device=device) if judge_dir else None
    if judge_dir and inputs.reward == "preference":
        check_held_out(judge_dir, settings.get("reward_model") or [])
    return reward, judge


def scale_line(config: RLConfig, total_steps: int, prompts: int, all_prompts: int, too_long: int, lm,
               device: str) -> str:
    return (f"{ALGORITHM_NAMES[config.algorithm]} preset {config.preset}: {total_steps} steps x "
            f"{step_episodes(config)} = {total_steps * config.batch_size} episodes from {prompts} of {all_prompts} "
            f"prompts ({too_long} longer than {config.max_prompt_tokens} tokens), {config.ppo_epochs} epochs x "
            f"{config.batch_size // config.minibatch_size} minibatches, {lm.num_parameters() / 1e6:.2f}M-parameter "
            f"model on {device}")


def make_trainer(lm, config: RLConfig, stop_ids, pad_id: int, device: str) -> RLTrainer:
    """The algorithm's trainer of the policy lm against a frozen copy of it, the reference pi_ref."""
    reference = copy.deepcopy(lm)
    if config.critic_free:
        return GroupTrainer(Policy(lm).to(device), reference, config, stop_ids, pad_id)
    return PPOTrainer(PolicyWithValue(lm, config.value_head).to(device), reference, config, stop_ids, pad_id)


def reference_seed(seed: int, step: int) -> int:
    """The seed of PAR's reference replies at a step (-1: the fixed sample prompts'): a function of (seed, step)."""
    return 1_000_003 * (seed + 1) + step


def step_episodes(config: RLConfig) -> str:
    """A step's replies in words: `16 prompts`, or `4 prompts x 4 replies` with groups."""
    if config.group_size == 1:
        return f"{config.batch_size} prompts"
    return f"{config.prompts_per_step} prompts x {config.group_size} replies"


def reply_samples(phase: str, step: int, scorer: TextReward, replies: list[list[int]], stopped: list[bool],
                  scores: torch.Tensor) -> list[dict]:
    """The samples.jsonl records of replies to the scorer's prompts, with their task rewards."""
    return [{"phase": phase, "step": step, "prompt": prompt, "reply": scorer.decode(reply), "stopped": done,
             "reward": score} for prompt, reply, done, score in zip(scorer.prompts, replies, stopped, scores.tolist())]


def write_fixed_samples(log: RunLog, phase: str, step: int, trainer: RLTrainer, scorer: TextReward,
                        prompt_ids: list[list[int]]) -> None:
    """The fixed prompts' replies, drawn with the same seed before and after training so that the two compare (and,
    with PAR, the same reference replies: the reference model is frozen)."""
    if isinstance(scorer.reward.reward, ParReward):
        scorer.reward.reward.draw(scorer.prompts, reference_seed(trainer.config.seed, -1))
    generator = torch.Generator(trainer.generator.device).manual_seed(trainer.config.seed + 1)
    generated = trainer.sample(prompt_ids, generator)
    scores = trainer.scores(generated.tokens, generated.stopped, scorer)
    for sample in reply_samples(phase, step, scorer, generated.tokens, generated.stopped, scores):
        log.jsonl("samples.jsonl", sample)


def save(run: Run, trainer: RLTrainer, tokenizer: Tokenizer, step: int, words: int | None) -> None:
    """The checkpoint (the trainer's state, the step, the words of the episodes so far) with the run's record, and
    the plots of the log so far."""
    run.save(trainer.policy.lm, tokenizer, {**trainer.state_dict(), "step": step, "words": words})
    name = ALGORITHM_NAMES[run.config.algorithm]
    for png, (columns, title) in LOG_PLOTS.items():
        plot_curves(run.out / "log.csv", columns, run.out / png, f"{name} ({run.record['reward']}): {title}")


def keep(run: Run, trainer: RLTrainer, tokenizer: Tokenizer, step: int) -> None:
    """A weights-only copy of the policy at this step, RUN/steps/step_N: an ordinary run directory that evaluate.py
    scores like any model (a curve of the benchmarks over the run's episodes)."""
    save_checkpoint(run.out / STEPS / f"step_{step}", trainer.policy.lm, tokenizer,
                    {**run.record, "stage": "ppo-step", "step": step, "episodes": step * run.config.batch_size})


def collapse_warning(step: int, stats: dict, scorer: TextReward, replies: list[list[int]]) -> str:
    reply = Counter(map(tuple, replies)).most_common(1)[0][0]
    return (f"step {step}: {stats['top_reply_frac']:.0%} of the batch replied {scorer.decode(list(reply))!r} "
            f"(distinct_frac {stats['distinct_frac']:.2f}): the policy may be collapsing onto one reply (log.csv: "
            f"distinct_frac, top_reply_frac)")


def summarize(csv_path) -> dict:
    """Reward, KL, entropy, reply length and diversity at the start and end of the run (means over its first and last
    tenth of the steps) and the step-time split."""
    rows = read_csv(csv_path)
    if not rows:
        return {}
    tenth = max(1, len(rows) // 10)

    def mean(column, part):  # NaN cells (e.g. reward_raw_mean of a step with no finished reply) are skipped
        values = [float(r[column]) for r in part if math.isfinite(float(r[column]))]
        return sum(values) / len(values) if values else None

    summary = {"steps": len(rows)}
    for column in (c for c in SUMMARY_COLUMNS if c in rows[0]):  # judge_mean: with --judge only
        summary[column] = {"start": mean(column, rows[:tenth]), "end": mean(column, rows[-tenth:])}
    summary["seconds_per_step"] = {t: mean(f"t_{t}", rows) for t in ("rollout", "reward", "resample", "update")
                                   if f"t_{t}" in rows[0]}  # resample: DAPO's dynamic sampling only
    return summary
