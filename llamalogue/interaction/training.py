"""Interaction: a student that learns from its teacher's corrections (the BabyLM 2025 interaction baseline's method,
in llamalogue's dialogue setting; its settings in llamalogue.interaction.config).

A context x is a caregiver's turn, laid out as in pretraining and as PPO's prompts: `[BOS] *MOT: x\\n*CHI:`. The
prompts are cut into `rounds` parts in a seeded order; round r takes its contexts from part r alone, so every round
sees fresh ones. A round, read top to bottom in `train` (1 and 2 in `sample_and_correct`):

    1. sample    y_l ~ π(. | x)        the student's reply (temperature 1.0, top-p 0.8)
    2. correct   y_w = teacher(x, y_l)  cut to |y_l| tokens, or whole (cut); bad ones dropped (interaction.corrections)
    3. LM epochs on x + y_w:
                 L_LM = -(1/T) sum_t log π(s_t | s_<t)      every token of the batch's rows s = x y_w, T of them
    4. SimPO epochs, y_w chosen and y_l rejected (llamalogue.alignment.dpo.simpo_loss), plus λ L_LM:
                 r(x, y) = β/|y| log π(y | x)               the average log-prob of the reply's tokens (and newline)
                 L = mean over pairs of -log σ(r(x, y_w) - r(x, y_l) - γ)  +  λ L_LM,    γ = β x gamma_ratio

One AdamW and one cosine learning-rate schedule (llamalogue.schedules) span all rounds, as the baseline's; an epoch's
order is epoch_order(seed, round, epoch). The corpus's own child reply is never shown to the student.

The word budget (llamalogue.word_budget): a row trained on adds its words each time it is seen -- an LM row the
caregiver's turn and the correction, a SimPO pair its two rows (the turn twice, the correction, the student's reply).
So the teacher's corrections count as words the student was shown, as BabyLM's rules say.

    RUN/config.json, checkpoint.pt, tokenizer.model    the run (llamalogue.run_dir's rules)
    RUN/corrections.jsonl    every round's student replies and their corrections (a resumable cache)
    RUN/log.csv              one row per round: rewards, margin, losses, corrections kept and dropped (and why)
    RUN/samples.jsonl        the replies of 10 fixed prompts before and after, with the same seed
    RUN/loss.png, rewards.png, summary.json

A checkpoint is saved after every round and on Ctrl-C (after the step in progress, or between two batches of the
teacher's corrections); --resume goes on from there, to the same weights as a run never stopped.
"""

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from llamalogue.alignment.dpo import simpo_loss
from llamalogue.alignment.reply_scoring import collate, encode_reply, reply_lengths, reply_logprob_sums
from llamalogue.checkpoint import load_model, load_state
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.generation import sample_replies
from llamalogue.interaction.config import InteractionConfig
from llamalogue.interaction.corrections import CORRECTIONS, dropped_counts, round_corrections
from llamalogue.model import default_device
from llamalogue.run_dir import RunError, write_json
from llamalogue.run_shell import Run, RunFolder, read_prompt_inputs
from llamalogue.runlog import RunLog, plot_curves
from llamalogue.schedules import epoch_order, learning_rate, set_learning_rate
from llamalogue.teacher.llm import stable_seed
from llamalogue.word_budget import count_words, pair_words

SAMPLE_PROMPTS = 10  # the fixed prompts answered before and after
SUMS = ("lm_nll", "lm_tokens", "simpo_lm_nll", "simpo_lm_tokens", "pairs", "simpo_loss", "reward_chosen",
        "reward_rejected", "margin", "accuracy")
DROP_REASONS = ("empty reply", "tag", "empty", "echo", "loop", "unfinished", "meta")


@dataclass
class InteractionInputs:
    """What a run is made from: the student's starting run, the caregiver prompts, the teacher (None: default)."""

    init: str
    prompts: str
    teacher: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# The loss of a step.


def interaction_loss(model, tokenizer, pairs: list[Pair], config: InteractionConfig, simpo: bool):
    """A step's loss (with gradients) and its sums: L_LM alone, or SimPO + λ L_LM (module docstring). One forward
    pass holds the chosen and rejected rows (their replies scored) and the LM rows (every token after BOS)."""
    chosen = [encode_reply(tokenizer, p.prompt, p.chosen) for p in pairs]
    lm_rows = [(ids, 1) for ids, _ in chosen]  # the LM's targets: context + correction + newline
    rows = (chosen + [encode_reply(tokenizer, p.prompt, p.rejected) for p in pairs] if simpo else []) + lm_rows
    sums = reply_logprob_sums(model, *collate(rows, tokenizer.pad_id, next(model.parameters()).device))
    tokens = sum(len(ids) - 1 for ids, _ in lm_rows)
    lm_nll = -sums[-len(pairs):].sum()
    lm_loss = lm_nll / tokens  # L_LM = -(1/T) sum_t log π(s_t | s_<t)
    if not simpo:
        return lm_loss, {"lm_nll": lm_nll.item(), "lm_tokens": tokens}
    lengths = reply_lengths(tokenizer, pairs).to(sums.device)  # |y_w|, |y_l|
    losses, reward_chosen, reward_rejected = simpo_loss(sums[: len(pairs)], sums[len(pairs) : 2 * len(pairs)],
                                                        lengths[:, 0], lengths[:, 1], config.beta, config.gamma)
    loss = losses.mean() + config.lm_weight * lm_loss  # L = SimPO + λ L_LM
    return loss, {"simpo_lm_nll": lm_nll.item(), "simpo_lm_tokens": tokens, "pairs": len(pairs),
                  "simpo_loss": losses.sum().item(), "reward_chosen": reward_chosen.sum().item(),
                  "reward_rejected": reward_rejected.sum().item(),
                  "margin": (reward_chosen - reward_rejected).sum().item(),
                  "accuracy": (reward_chosen > reward_rejected).sum().item()}


def step_words(pairs: list[Pair], simpo: bool) -> int:
    """The words a step shows the student (llamalogue.word_budget): its LM rows, or its SimPO pairs' two rows."""
    if simpo:
        return sum(pair_words(pairs))
    return sum(count_words(p.prompt) + count_words(p.chosen) for p in pairs)


# ---------------------------------------------------------------------------------------------------------------
# A round's contexts, replies and steps.


def round_contexts(n_prompts: int, config: InteractionConfig, round_: int) -> list[int]:
    """The prompt indices of round r: part r of the prompts in a seeded order (its first contexts_per_round)."""
    part = n_prompts // config.rounds
    indices = epoch_order(n_prompts, config.seed, 0)[round_ * part : (round_ + 1) * part].tolist()
    return indices[: config.contexts_per_round] if config.contexts_per_round else indices


def student_replies(model, tokenizer, prompts: list[str], config: InteractionConfig, round_: int) -> list[str]:
    """y_l: one sampled reply per prompt, each batch under a seed of (seed, round, batch)."""
    replies = []
    for start in range(0, len(prompts), config.sample_batch_size):
        batch = prompts[start : start + config.sample_batch_size]
        replies += sample_replies(model, tokenizer, batch, stable_seed(config.seed, "student", round_, start),
                                  config.max_new_tokens, config.temperature, 0, config.top_p)[0]
    return replies


def round_plan(n_pairs: int, config: InteractionConfig, round_: int) -> list[tuple[bool, list[int]]]:
    """The steps of a round: (SimPO or LM, the pairs of the batch), lm_epochs then simpo_epochs epochs."""
    plan = []
    for epoch in range(config.lm_epochs + config.simpo_epochs):
        order = epoch_order(n_pairs, config.seed, round_ * 1000 + epoch).tolist()
        plan += [(epoch >= config.lm_epochs, order[start : start + config.batch_size])
                 for start in range(0, n_pairs, config.batch_size)]
    return plan


def round_row(round_: int, step: int, records: list[dict], sums: dict, lr: float, words, seconds: float) -> dict:
    """log.csv's row of a round: means over its LM epochs, its SimPO epochs and its pairs; corrections kept and
    dropped (with why)."""
    pairs = max(1, sums["pairs"])
    dropped = dropped_counts(records)
    return {"round": round_ + 1, "step": step, "contexts": len(records),
            "kept": sum(r["correction"] is not None for r in records), "dropped": sum(dropped.values()),
            "lm_loss": sums["lm_nll"] / max(1, sums["lm_tokens"]),
            "simpo_lm_loss": sums["simpo_lm_nll"] / max(1, sums["simpo_lm_tokens"]),
            **{name: sums[name] / pairs for name in ("simpo_loss", "reward_chosen", "reward_rejected", "margin",
                                                     "accuracy")},
            "lr": f"{lr:.3e}", "words_seen": words, "seconds": round(seconds, 1),
            **{f"dropped_{reason.replace(' ', '_')}": dropped.get(reason, 0) for reason in DROP_REASONS}}


# ---------------------------------------------------------------------------------------------------------------
# The run.


def open_interaction_run(folder: RunFolder, given: InteractionInputs,
                         options: dict) -> tuple[Run, InteractionInputs, list[str], dict]:
    """The run (llamalogue.run_shell: a new run's preset with the options given, a resumed run's own settings;
    without --max-rounds it goes on to the end), its inputs (a resumed run's recorded ones), its prompts and their
    fingerprint, after every check; nothing is written yet."""
    run = Run(folder, "interaction", InteractionConfig, options, protected={"--init": given.init or None})
    if run.resumed:
        recorded = run.saved["given"]
        given = InteractionInputs(**{f.name: recorded[f.name] for f in dataclasses.fields(InteractionInputs)})
    prompts, fingerprint = read_prompt_inputs(given.init, given.prompts)
    fingerprint["teacher"] = given.teacher or "default"
    if len(prompts) < run.config.rounds:
        raise ValueError(f"--prompts {given.prompts}: {len(prompts)} prompts for {run.config.rounds} rounds")
    run.check_inputs(fingerprint)
    return run, given, prompts, fingerprint


def load_teacher(name: str | None, config: InteractionConfig, device: str):
    """The teacher that corrects (llamalogue.teacher.llm.Teacher), sampling with the run's settings."""
    from llamalogue.teacher.config import TeacherConfig
    from llamalogue.teacher.llm import Teacher

    return Teacher(name, config=TeacherConfig(temperature=config.teacher_temperature, top_p=config.teacher_top_p,
                                              max_new_tokens=config.teacher_max_new_tokens, tries=config.tries),
                   device=device)


def write_samples(log: RunLog, phase: str, step: int, model, tokenizer, prompts: list[str],
                  config: InteractionConfig) -> list[str]:
    """The fixed prompts' replies, drawn with one seed before and after, so that the two compare."""
    replies, stopped = sample_replies(model, tokenizer, prompts, config.seed + 1, config.max_new_tokens,
                                      config.temperature, 0, config.top_p)
    for prompt, reply, done in zip(prompts, replies, stopped):
        log.jsonl("samples.jsonl", {"phase": phase, "step": step, "prompt": prompt, "reply": reply, "stopped": done})
    return replies


def save(run: Run, model, tokenizer, optimizer, state: dict) -> None:
    """The checkpoint (weights, optimizer, where the run is, the words so far) with the run's record (the words seen
    since pretraining: the --init's and this run's), and the plots of the log so far."""
    run.progress(state["words"])
    run.save(model, tokenizer, {**state, "optimizer": optimizer.state_dict()})
    if (run.out / "log.csv").exists():
        plot_curves(run.out / "log.csv", ["lm_loss", "simpo_lm_loss", "simpo_loss"], run.out / "loss.png",
                    "interaction: LM loss (LM epochs, SimPO epochs) and SimPO loss", x="round")
        plot_curves(run.out / "log.csv", ["reward_chosen", "reward_rejected", "margin"], run.out / "rewards.png",
                    "SimPO rewards: the teacher's correction (chosen) vs the student's reply (rejected)", x="round")


def resumed_state(run: Run, optimizer, config: InteractionConfig, device: str) -> dict:
    """Where a run is: its round, the step within it, the step of the schedule, the words so far and the round's
    sums; a resumed run's from its checkpoint (with its optimizer), which must have rounds left to do."""
    state = {"round": 0, "round_step": 0, "step": 0, "words": 0, "sums": dict.fromkeys(SUMS, 0)}
    if not run.resumed:
        return state
    saved = load_state(run.out, device)
    optimizer.load_state_dict(saved["optimizer"])
    state = {name: saved[name] for name in state}
    if state["round"] >= config.rounds:
        raise RunError(f"--resume {run.out}: the run has done all its {config.rounds} rounds")
    print(f"resuming {run.out} at round {state['round'] + 1}, step {state['step']}")
    return state


def sample_and_correct(run: Run, model, tokenizer, teacher, prompts: list[str], config: InteractionConfig,
                       round_: int, mid_round: bool) -> tuple[list[dict], list[Pair]] | None:
    """1. sample: the student's reply to each of the round's contexts (mid-round: all in the corrections file);
    2. correct: the teacher's corrections, cut to the student's length or whole (bad ones dropped and counted). Returns
    the round's records and its pairs (the correction chosen, the student's reply rejected), or None when Ctrl-C
    stopped the teacher (what it did is in the file)."""
    indices = round_contexts(len(prompts), config, round_)
    round_prompts = [prompts[i] for i in indices]
    bar = tqdm(total=len(indices), unit="reply", desc=f"round {round_ + 1}/{config.rounds} teacher",
               dynamic_ncols=True)
    replies = ([None] * len(indices) if mid_round
               else student_replies(model, tokenizer, round_prompts, config, round_))
    items = [{"index": i, "prompt": p, "reply": r} for i, p, r in zip(indices, round_prompts, replies)]
    records = round_corrections(run.out / CORRECTIONS, teacher, tokenizer, items, round_, config.seed, config.tries,
                                config.sample_batch_size, config.cut, lambda: run.interrupted, bar.update)
    bar.close()
    if records is None:
        return None
    return records, [Pair(f"*MOT: {r['prompt']}", f"*CHI: {r['correction']}", f"*CHI: {r['reply']}")
                     for r in records if r["correction"] is not None]


def train(folder: RunFolder, inputs: InteractionInputs, options: dict, device: str | None = None) -> dict:
    """Interaction rounds from the run inputs.init into the run's folder; returns the summary (also
    RUN/summary.json). options: the InteractionConfig fields given ("preset" among them; default small). Ctrl-C
    finishes the step (or the teacher's batch), saves and stops (llamalogue.run_shell)."""
    device = device or default_device()
    run, inputs, prompts, fingerprint = open_interaction_run(folder, inputs, options)
    config = run.config
    model, tokenizer = load_model(run.out if run.resumed else inputs.init, device)
    teacher = load_teacher(inputs.teacher, config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=config.weight_decay)
    contexts = len(round_contexts(len(prompts), config, 0))
    planned_steps = config.rounds * (config.lm_epochs + config.simpo_epochs) * math.ceil(contexts / config.batch_size)
    total_steps = config.schedule_steps or planned_steps
    scale = (f"interaction preset {config.preset}: {config.rounds} rounds x {contexts} contexts, "
             f"{config.lm_epochs} LM + {config.simpo_epochs} SimPO epochs (beta {config.beta}, gamma {config.gamma}, "
             f"lambda {config.lm_weight}) in batches of {config.batch_size}, lr {config.lr:g}; student "
             f"{model.num_parameters():,} parameters on {device}; teacher {inputs.teacher or 'default'}")
    print(scale)
    state = resumed_state(run, optimizer, config, device)
    run.clear()
    log = run.begin(scale, config, fingerprint, init=inputs.init, step=state["step"], words=state["words"],
                    given=asdict(inputs))
    sample_prompts = [prompts[i] for i in round_contexts(len(prompts), config, 0)[:SAMPLE_PROMPTS]]
    if not run.resumed:
        write_samples(log, "before", 0, model, tokenizer, sample_prompts, config)
    stop_round = min(config.rounds, config.max_rounds) if config.max_rounds else config.rounds
    lr, last = config.lr, {}
    with run:  # Ctrl-C: the loop finishes its step (or the teacher's batch), saves and stops
        while state["round"] < stop_round and not run.interrupted:
            round_, started = state["round"], time.time()
            corrected = sample_and_correct(run, model, tokenizer, teacher, prompts, config, round_,
                                           mid_round=state["round_step"] > 0)
            if corrected is None:  # Ctrl-C while the teacher worked: what it did is in the file
                save(run, model, tokenizer, optimizer, state)
                break
            records, pairs = corrected
            # 3. LM epochs on context + correction, then 4. SimPO + λ LM epochs: correction chosen, own reply rejected
            plan = round_plan(len(pairs), config, round_)
            bar = tqdm(total=len(plan), initial=state["round_step"], unit="step",
                       desc=f"round {round_ + 1}/{config.rounds} training", dynamic_ncols=True)
            while state["round_step"] < len(plan) and not run.interrupted:
                simpo, batch = plan[state["round_step"]]
                lr = learning_rate(state["step"], total_steps, config.lr, config.warmup_steps, "cosine")
                set_learning_rate(optimizer, lr)
                loss, sums = interaction_loss(model, tokenizer, [pairs[i] for i in batch], config, simpo)
                run.check_loss(loss.item(), state["step"] + 1, "lower --lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["round_step"] += 1
                state["words"] += step_words([pairs[i] for i in batch], simpo)
                state["sums"] = {name: state["sums"][name] + sums.get(name, 0) for name in SUMS}
                bar.update(1)
                bar.set_postfix(phase="simpo" if simpo else "lm", loss=f"{loss.item():.3f}")
            bar.close()
            if state["round_step"] == len(plan):  # the round is done: its row, then the next round
                last = round_row(round_, state["step"], records, state["sums"], lr,
                                 run.words_seen(state["words"]), time.time() - started)
                log.log(last)
                tqdm.write(f"round {round_ + 1}: {last['kept']} corrections kept, {last['dropped']} dropped; LM loss "
                           f"{last['lm_loss']:.3f}, SimPO margin {last['margin']:.3f}")
                state = {**state, "round": round_ + 1, "round_step": 0, "sums": dict.fromkeys(SUMS, 0)}
            save(run, model, tokenizer, optimizer, state)
    if run.stopped(f"round {state['round'] + 1}, step {state['step']:,}",
                   early="--max-rounds" if state["round"] < config.rounds else None):
        return {**last, "interrupted": run.interrupted, "rounds_done": state["round"]}
    after = write_samples(log, "after", state["step"], model, tokenizer, sample_prompts, config)
    print(before_after(log, after))
    summary = {"scale": scale, **last, "rounds_done": state["round"], "steps": state["step"],
               "words_seen": run.record["words_seen"], "interrupted": False}
    write_json(run.out / "summary.json", summary)
    return summary


def before_after(log: RunLog, after: list[str]) -> str:
    """The fixed prompts' replies before -> after, as a table (scripts/ppo_report.py prints RL's so)."""
    before = [json.loads(line) for line in (log.dir / "samples.jsonl").read_text().splitlines()]
    before = [s for s in before if s["phase"] == "before"]
    lines = ["| caregiver | before | after |", "|---|---|---|"]
    lines += [f"| {s['prompt']} | {s['reply']} | {reply} |" for s, reply in zip(before, after)]
    return "\n".join(lines)
