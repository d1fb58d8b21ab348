"""PPO: the pieces against hand-computed numbers, and the whole loop on a task with a known answer."""

import copy
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_ppo
from llamalogue.rl import ppo, run as ppo_run, trainer as rl_trainer
from llamalogue.checkpoint import load_model, load_state, save_checkpoint
from llamalogue.model import Llama, ModelConfig
from llamalogue.rl.kl import AdaptiveKLController, kl_estimate
from llamalogue.rl.config import RLConfig
from llamalogue.rl.ppo import PolicyWithValue, PPOTrainer, RunningMoments, gae, token_rewards, whiten
from llamalogue.run_dir import RunError
from llamalogue.run_shell import RunFolder
from llamalogue.schedules import epoch_order
from llamalogue.teacher.config import sampling_dtype
from llamalogue.tokenizer import Tokenizer

VOCAB, STOP = 50, 3


def tiny_policy(seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    return PolicyWithValue(Llama(ModelConfig.preset("tiny", vocab_size=vocab)))


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])  # 9.0: past the end of row 1's reply, must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: delta = (0 + .2 - .1, 0 + .3 - .2, 1 + 0 - .3) = (.1, .1, .7)
    #        A_2 = .7, A_1 = .1 + .5 * .7 = .45, A_0 = .1 + .5 * .45 = .325
    # row 1: one action: A_0 = .5 - .4 = .1
    expected = torch.tensor([[0.325, 0.45, 0.7], [0.1, 0.0, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, expected + values * mask)


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_the_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.ones(4, 6)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)
    assert torch.allclose(returns, reward_to_go, atol=1e-5)
    assert torch.allclose(advantages, reward_to_go - values, atol=1e-5)


def test_task_reward_arrives_at_the_last_reply_token_and_kl_at_every_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, 2.0 - 0.15], [-1.0 - 0.2, 0.0, 0.0]]))


def test_kl_estimators_on_known_values_and_unbiased_on_average():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(ref, logp, "abs").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    # E_{a~pi}[k1] = E[k3] = KL(pi || pi_ref); abs is biased upwards
    pi, pi_ref = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = (pi * (pi / pi_ref).log()).sum().item()
    a = torch.multinomial(pi, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref = pi.log()[a], pi_ref.log()[a]
    assert kl_estimate(logp, ref, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_estimate(logp, ref, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert kl_estimate(logp, ref, "abs").mean().item() > true_kl + 0.05


def test_whitened_advantages_have_zero_mean_and_unit_variance_on_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 50.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().abs() < 1e-6 and (real.var(unbiased=False) - 1).abs() < 1e-4
    assert (w[~mask.bool()] == 0).all()


def test_adaptive_beta_moves_towards_the_target_and_fixed_beta_does_not():
    up, down, fixed = (AdaptiveKLController(0.2, 6.0, 100, adaptive=a) for a in (True, True, False))
    up.update(kl=12.0, n_episodes=10)  # error clipped to +0.2: beta * (1 + 0.2 * 10 / 100)
    down.update(kl=3.0, n_episodes=10)  # error -0.5 clipped to -0.2
    fixed.update(kl=12.0, n_episodes=10)
    assert up.value == pytest.approx(0.2 * 1.02) and down.value == pytest.approx(0.2 * 0.98) and fixed.value == 0.2


def test_running_moments_equal_the_moments_of_everything_seen():
    moments, seen = RunningMoments(), []
    for seed in range(3):
        xs = torch.randn(7 + seed, generator=torch.Generator().manual_seed(seed)) * 3 + seed
        moments.update(xs)
        seen.append(xs)
    everything = torch.cat(seen)
    assert moments.mean == pytest.approx(everything.mean().item(), abs=1e-5)
    assert moments.var == pytest.approx(everything.var(unbiased=False).item(), abs=1e-4)


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_value_head_starts_at_zero_and_kl_is_zero_when_policy_equals_reference():
    policy = tiny_policy()
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), RLConfig.from_preset("tiny", batch_size=8), stop_ids={STOP})
    batch = trainer.rollout(prompts(8))
    for estimator in ("k1", "abs", "k3"):
        assert (kl_estimate(batch.logprobs, batch.ref_logprobs, estimator) * batch.reply_mask).abs().max() == 0
    assert (batch.values == 0).all()
    assert trainer.update(batch, torch.zeros(8))["kl"] == 0
    # against a reference with other weights the same rollout has a KL, so the zero above is not a given
    other = copy.deepcopy(policy.lm)
    with torch.no_grad():
        other.lm_head.weight.add_(0.5 * torch.randn_like(other.lm_head.weight))
    moved = PPOTrainer(policy, other, RLConfig.from_preset("tiny", batch_size=8), stop_ids={STOP}).rollout(prompts(8))
    assert (kl_estimate(moved.logprobs, moved.ref_logprobs, "abs") * moved.reply_mask).sum() > 0


def test_old_logprobs_of_the_rollout_match_the_sampling_logprobs():
    policy = tiny_policy()
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), RLConfig.from_preset("tiny", batch_size=6), stop_ids={STOP})
    trainer.generator.manual_seed(1)
    batch = trainer.rollout(prompts(6))
    from llamalogue.generation import generate

    again = generate(policy.lm, prompts(6), 8, stop_ids={STOP}, generator=torch.Generator().manual_seed(1))
    for row, sampled in enumerate(again.logprobs):
        assert batch.replies[row] == again.tokens[row]
        assert torch.allclose(batch.logprobs[row, : len(sampled)], sampled, atol=1e-5)


def test_unfinished_replies_get_the_penalty_and_are_not_scored():
    policy = tiny_policy()
    config = RLConfig.from_preset("tiny", batch_size=8, max_new_tokens=2, unfinished_penalty=-3.0)
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), config, stop_ids={STOP, *range(4, 28)})  # ~half stop
    batch = trainer.rollout(prompts(8))
    asked = []
    scores = trainer.scores(batch.replies, batch.stopped, lambda rows, replies: asked.extend(rows) or [1.0] * len(rows))
    assert 0 < sum(batch.stopped) < 8  # seeded: both kinds occur
    assert asked == [i for i, s in enumerate(batch.stopped) if s]
    assert scores.tolist() == [1.0 if s else -3.0 for s in batch.stopped]


TARGET = 7


def target_fraction(rows, replies):
    return [sum(t == TARGET for t in reply) / max(len(reply), 1) for reply in replies]


def test_ppo_learns_to_say_the_rewarded_token_within_a_few_steps():
    policy = tiny_policy()
    config = RLConfig.from_preset("tiny", batch_size=16, minibatch_size=4, max_new_tokens=6, ppo_epochs=2, lr=1e-2,
                              kl_coef=0.01, adaptive_kl=False, unfinished_penalty=None, early_stop_kl=None)
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), config, stop_ids=())
    rewards = []
    for step in range(16):  # (10 steps reach 0.4-0.9 depending on the seed; 16 reach >= 0.97 for seeds 0-5)
        stats, _, _ = trainer.step(prompts(16, seed=step), target_fraction)
        rewards.append(stats["reward_mean"])
    assert rewards[0] < 0.1  # a random model says token 7 about once in 50
    assert sum(rewards[-3:]) / 3 > 0.5, rewards
    assert stats["kl"] > 1  # it got there by moving away from the reference


def test_a_trainer_restored_from_its_state_dict_takes_the_same_next_step():
    config = RLConfig.from_preset("tiny", batch_size=8, minibatch_size=4, normalize_reward=True, kl_coef=0.5,
                                   kl_target=0.1, early_stop_kl=None)
    start = tiny_policy()
    reference = copy.deepcopy(start.lm)
    trainer = PPOTrainer(copy.deepcopy(start), reference, config, stop_ids={STOP})
    trainer.step(prompts(8, seed=1), target_fraction)
    buffer = io.BytesIO()  # through torch.save and torch.load, as a checkpoint: no tensor shared with the trainer
    torch.save(trainer.state_dict(), buffer)
    expected, rollout, _ = trainer.step(prompts(8, seed=2), target_fraction)

    restored = PPOTrainer(tiny_policy(seed=1), reference, config, stop_ids={STOP})  # other weights, a fresh RNG
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.kl_ctl.value != config.kl_coef and restored.reward_moments.count == 8  # the first step's
    stats, again, _ = restored.step(prompts(8, seed=2), target_fraction)
    assert again.replies == rollout.replies  # the sampling RNG went on
    for name in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "approx_kl"):
        assert stats[name] == expected[name], name
    assert all(torch.equal(a, b) for a, b in zip(trainer.policy.parameters(), restored.policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(trainer.optimizer.state_dict()["state"][0].values(),
                                                restored.optimizer.state_dict()["state"][0].values()))


def test_the_prompt_schedule_takes_every_prompt_once_per_pass_in_each_passs_own_order():
    schedule = ppo_run.PromptSchedule(n_prompts=6, prompts_per_step=4, seed=3)
    drawn = [i for step in range(6) for i in schedule.batch(step)]  # 24 draws: 4 passes over 6 prompts
    passes = [drawn[k : k + 6] for k in range(0, 24, 6)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert passes == [epoch_order(6, 3, epoch).tolist() for epoch in range(4)]
    assert len({tuple(p) for p in passes}) > 1  # reshuffled
    assert schedule.prompts_until(1) == drawn[:4] and sorted(schedule.prompts_until(2)) == list(range(6))


# ---------------------------------------------------------------------------------------------------------------
# A whole run on real (small) data: a tiny random llamalogue, the embedded CHILDES sample's prompts and tokenizer.


@pytest.fixture(scope="module")
def tokenizer(corpus_small_build):
    return Tokenizer(corpus_small_build / "tokenizer.model")


@pytest.fixture
def init_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    path = tmp_path / "init"
    save_checkpoint(path, Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                    {"stage": "pretrain", "scale": "random tiny", "words_seen": 1000})
    return path


def short_reply_reward(prompts, replies):
    """A text reward with a known best answer: replies of at most three words."""
    return [1.0 if len(reply.split()) <= 3 else 0.0 for reply in replies]


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_inputs(init_dir, corpus_small_build, reward="short"):
    return ppo_run.RLInputs(init=str(init_dir), reward=reward, prompts=str(corpus_small_build / "prompts.txt"))


def train_on(reward, folder: RunFolder, given, options: dict) -> dict:
    """An RL run on the CPU that trains on `reward` (a reward(prompts, replies) -> list[float]) where the run
    would make the reward `given` names."""
    made = ppo_run.make_reward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppo_run, "make_reward",
                      lambda name, **settings: reward if name == given.reward else made(name, **settings))
        return ppo_run.train(folder, given, options, "cpu")


def test_a_run_writes_a_loadable_model_logs_plots_and_samples(tmp_path, init_dir, corpus_small_build, tokenizer):
    out = tmp_path / "ppo"
    given = run_inputs(init_dir, corpus_small_build)
    summary = train_on(short_reply_reward, RunFolder(out), given, {"preset": "tiny", "total_prompts": 12,
                                                                   "keep_every": 2})
    rows = read_log(out / "log.csv")
    kept = sorted(path.name for path in (out / ppo_run.STEPS).iterdir())
    assert kept == ["step_2"] and json.loads((out / "steps/step_2/config.json").read_text())["episodes"] == 8
    load_model(out / "steps/step_2")  # a run directory evaluate.py scores
    assert [r["step"] for r in rows] == ["1", "2", "3"] and summary["steps"] == 3
    for column in ("reward_mean", "reward_std", "kl", "entropy", "value_loss", "clipfrac", "approx_kl", "reply_len",
                   "distinct_frac", "top_reply_frac", "t_rollout", "t_reward", "t_update", "prompts_per_s"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    # short_reply_reward gives 0 or 1, an unfinished reply gets the penalty -1: every step's mean lies in [-1, 1]
    assert all(-1 <= float(r["reward_mean"]) <= 1 for r in rows)
    assert set(summary["distinct_frac"]) == {"start", "end"}
    for png in ("reward.png", "kl.png", "diversity.png"):
        assert (out / png).stat().st_size > 1000
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    before = [s for s in samples if s["phase"] == "before"]
    after = [s for s in samples if s["phase"] == "after"]
    assert len(before) == len(after) == 10 and [s["prompt"] for s in before] == [s["prompt"] for s in after]
    assert all(s["reward"] == (short_reply_reward([], [s["reply"]])[0] if s["stopped"] else -1.0) for s in samples)
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "ppo" and config["reward"] == "short" and "preset tiny" in config["scale"]
    assert config["train"]["preset"] == "tiny" and config["prompts"] == given.prompts and "preset" not in config
    report = subprocess.run([sys.executable, "scripts/ppo_report.py", str(out)], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert f"| ppo | 3 | {summary['reward_mean']['start']:.3f} → {summary['reward_mean']['end']:.3f}" in report
    assert all(f"| {s['prompt']} | {s['reply']} ({s['reward']:.2f}) |" in report for s in before)
    model, _ = load_model(out)  # a plain Llama, as evaluate.py loads it
    initial, _ = load_model(init_dir)
    assert any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), initial.parameters()))
    assert load_state(out)["value_head"]["weight"].shape == (1, model.config.dim)
    with pytest.raises(RunError, match="--resume"):  # never overwrites a run
        train_on(short_reply_reward, RunFolder(out), given, {"preset": "tiny"})


def test_a_killed_or_interrupted_run_resumes_exactly(tmp_path, init_dir, corpus_small_build, monkeypatch):
    given = run_inputs(init_dir, corpus_small_build)
    options = {"preset": "tiny", "total_prompts": 16, "save_every": 2}

    def train(run, resume=False, **changed):
        return train_on(short_reply_reward, RunFolder(tmp_path / run, resume=resume), given, {**options, **changed})

    train("whole")

    real_step, steps = ppo.PPOTrainer.step, []

    def crash_after_step_3(self, *args):
        if len(steps) == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint and the step-3 log row
        steps.append(1)
        return real_step(self, *args)

    monkeypatch.setattr(ppo.PPOTrainer, "step", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train("resumed")
    monkeypatch.setattr(ppo.PPOTrainer, "step", real_step)
    assert load_state(tmp_path / "resumed")["step"] == 2
    train("resumed", resume=True)

    def ctrl_c_in_step_1(self, *args):  # Ctrl-C: the step finishes, is saved, and the run stops
        if not steps:
            os.kill(os.getpid(), signal.SIGINT)
        steps.append(1)
        return real_step(self, *args)

    steps.clear()
    monkeypatch.setattr(ppo.PPOTrainer, "step", ctrl_c_in_step_1)
    train("stopped")
    monkeypatch.setattr(ppo.PPOTrainer, "step", real_step)
    assert load_state(tmp_path / "stopped")["step"] == 1
    train("stopped", resume=True)

    whole = load_model(tmp_path / "whole")[0]
    whole_log = read_log(tmp_path / "whole" / "log.csv")
    for run in ("resumed", "stopped"):
        resumed, resumed_log = load_model(tmp_path / run)[0], read_log(tmp_path / run / "log.csv")
        assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters())), run
        assert [r["step"] for r in resumed_log] == ["1", "2", "3", "4"]  # the crashed run's step-3 row was replaced
        for column in ("reward_mean", "kl", "kl_coef", "value_loss", "approx_kl"):
            assert [r[column] for r in resumed_log] == [r[column] for r in whole_log], (run, column)
        samples = [json.loads(line) for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
        assert [s["step"] for s in samples if s["phase"] == "train"] == [1, 1, 2, 2, 3, 3, 4, 4]  # none twice
        # the word budget: the init's 1,000 words, then the prompts and replies of every episode, counted once
        words = json.loads((tmp_path / run / "config.json").read_text())["words_seen"]
        assert words == json.loads((tmp_path / "whole" / "config.json").read_text())["words_seen"] > 1000

    retrained = tmp_path / "retrained-init"  # another --init checkpoint is another reference model: refused
    shutil.copytree(init_dir, retrained)
    save_checkpoint(retrained, Llama(ModelConfig.preset("tiny", vocab_size=load_model(init_dir)[1].vocab_size)),
                    load_model(init_dir)[1], {"stage": "pretrain", "scale": "another tiny"})
    shutil.copytree(retrained, init_dir, dirs_exist_ok=True)
    with pytest.raises(RunError, match="init_sha256"):
        train("stopped", resume=True, total_prompts=24)


def test_bad_input_stops_with_a_one_line_error(tmp_path, init_dir, corpus_small_build):
    base = ["--init", str(init_dir), "--data", str(corpus_small_build), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--reward is required"):
        train_ppo.main(base)
    # bleu needs the teacher: the missing --init is reported before it loads
    with pytest.raises(SystemExit, match="--init .*missing: not a llamalogue run directory"):
        train_ppo.main(["--reward", "bleu", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--prompts .*nope.txt: no such file"):
        train_ppo.main(base + ["--reward", "pmi", "--prompts", str(tmp_path / "nope.txt")])
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(SystemExit, match="--prompts .*blank.txt: no prompts in it"):
        train_ppo.main(base + ["--reward", "pmi", "--prompts", str(tmp_path / "blank.txt")])
    with pytest.raises(SystemExit, match="--resume: .*out holds no checkpoint to resume"):
        train_ppo.main(base + ["--resume"])
    with pytest.raises(SystemExit, match="--resume: name the run to continue with --out"):
        train_ppo.main(["--resume"])
    with pytest.raises(SystemExit, match="batch_size .* multiple of minibatch_size"):
        train_ppo.main(base + ["--reward", "pmi", "--batch-size", "6", "--minibatch-size", "4"])
    with pytest.raises(SystemExit, match="top_p in \\(0, 1\\]"):
        train_ppo.main(base + ["--reward", "pmi", "--top-p", "1.5"])
    assert not (tmp_path / "out").exists()  # nothing was written for a run that could not start


def test_the_cli_trains_with_its_options_and_resumes_with_the_runs_own(tmp_path, init_dir, corpus_small_build,
                                                                       capsys):
    """train_ppo.py end to end with pmi under the frozen reference model (no teacher to load)."""
    out = tmp_path / "ppo-pmi"
    train_ppo.main(["--init", str(init_dir), "--reward", "pmi", "--pmi-k", "2", "--data", str(corpus_small_build),
                    "--out", str(out), "--preset", "tiny", "--max-steps", "1", "--top-k", "20", "--top-p", "0.9",
                    "--kl-estimator", "abs", "--fixed-kl"])
    config = json.loads((out / "config.json").read_text())
    assert config["reward"] == "pmi" and config["reward_settings"]["pmi_k"] == 2
    assert config["reward_settings"]["teacher_dtype"] == sampling_dtype("auto", "cpu")  # auto, resolved once
    assert (config["train"]["top_k"], config["train"]["top_p"]) == (20, 0.9)
    assert config["train"]["kl_estimator"] == "abs" and not config["train"]["adaptive_kl"]
    assert (config["train"]["preset"], config["train"]["max_steps"], config["train"]["reward_style"]) == (
        "tiny", 1, "ours")
    other_dtype = {"float32": "bfloat16", "bfloat16": "float32"}[config["reward_settings"]["teacher_dtype"]]
    with pytest.raises(SystemExit, match=f"samples in {config['reward_settings']['teacher_dtype']}, not "
                                         f"--teacher-dtype {other_dtype}"):
        train_ppo.main(["--out", str(out), "--resume", "--teacher-dtype", other_dtype])
    with pytest.raises(SystemExit, match="trained with --reward pmi, not bleu"):
        train_ppo.main(["--out", str(out), "--resume", "--reward", "bleu"])
    with pytest.raises(SystemExit, match="other settings \\(lr="):
        train_ppo.main(["--out", str(out), "--resume", "--lr", "0.5"])
    train_ppo.main(["--out", str(out), "--resume", "--max-steps", "2"])  # the reward's settings come back too
    printed = capsys.readouterr().out
    assert "PPO preset tiny" in printed and f"resuming {out} at step 1" in printed and "task reward" in printed
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert float(rows[1]["kl_coef"]) == config["train"]["kl_coef"]  # fixed beta
    train_ppo.main(["--out", str(out), "--resume"])  # the tiny preset's 16 prompts: 4 steps in all
    assert [r["step"] for r in read_log(out / "log.csv")] == ["1", "2", "3", "4"]


def test_a_run_recorded_by_an_earlier_version_resumes(tmp_path, init_dir, corpus_small_build):
    """Records written before preset, max_steps, reward_style, algorithm and group_size were RLConfig settings (the
    preset's name at the top, the reward's rules in reward_settings["style"]) and before the teacher's dtype was
    recorded."""
    out = tmp_path / "old"
    train_ppo.main(["--init", str(init_dir), "--reward", "pmi", "--pmi-k", "2", "--data", str(corpus_small_build),
                    "--out", str(out), "--preset", "tiny", "--max-steps", "1"])
    record = json.loads((out / "config.json").read_text())
    record["preset"] = record["train"].pop("preset")
    del record["train"]["max_steps"], record["train"]["reward_style"], record["reward_settings"]["teacher_dtype"]
    del record["train"]["algorithm"], record["train"]["group_size"]
    record["reward_settings"]["style"] = "ours"
    (out / "config.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="samples in float32, not --teacher-dtype bfloat16"):
        train_ppo.main(["--out", str(out), "--resume", "--teacher-dtype", "bfloat16"])
    train_ppo.main(["--out", str(out), "--resume", "--max-steps", "2"])
    assert [r["step"] for r in read_log(out / "log.csv")] == ["1", "2"]
    record = json.loads((out / "config.json").read_text())
    assert "preset" not in record and "style" not in record["reward_settings"]
    assert (record["train"]["preset"], record["train"]["max_steps"], record["train"]["reward_style"]) == (
        "tiny", 2, "ours")
    assert (record["train"]["algorithm"], record["train"]["group_size"]) == ("ppo", 1)
    assert record["reward_settings"]["teacher_dtype"] == "float32"


# ---------------------------------------------------------------------------------------------------------------
# On-policy sampling, the minibatch loss by hand, collapse statistics.


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 50, 0.9), (0.7, 5, 1.0)])
def test_with_top_p_and_top_k_the_ratio_is_one_before_the_first_update_and_the_kl_is_zero(temperature, top_k, top_p):
    policy = tiny_policy(vocab=200)  # 200 tokens: top-k 50 (transformers' default, the paper's) keeps a quarter
    config = RLConfig.from_preset("tiny", batch_size=8, minibatch_size=4, temperature=temperature, top_k=top_k,
                              top_p=top_p)
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), config, stop_ids={STOP})
    batch = trainer.rollout(prompts(8))
    kept = batch.keep.sum(-1)[batch.reply_mask.bool()]
    assert (kept <= top_k).all() and (kept < top_k).any() == (top_p < 1)  # top-p cut some nuclei below 50
    # the sampled tokens' log-probs are those of the warped distribution generate sampled from (not temperature 1)
    from llamalogue.generation import generate

    trainer.generator.manual_seed(3)
    again = trainer.rollout(prompts(8))
    sampled = generate(policy.lm, prompts(8), config.max_new_tokens, temperature, top_k, top_p, {STOP},
                       generator=torch.Generator().manual_seed(3))
    for row, logprobs in enumerate(sampled.logprobs):
        assert again.replies[row] == sampled.tokens[row]
        assert torch.allclose(again.logprobs[row, : len(logprobs)], logprobs, atol=1e-5)
    # the new policy's log-probs, computed the way the update computes them: ratio exactly 1 before any step
    idx = torch.arange(8)
    logits, _ = policy(batch.tokens, batch.mask, batch.prompt_len)
    new = rl_trainer.sampling_logprobs(logits, batch.tokens[:, batch.prompt_len:], temperature, batch.keep)
    ratio = ((new - batch.logprobs[idx]) * batch.reply_mask).exp()
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    assert ((batch.logprobs - batch.ref_logprobs) * batch.reply_mask).abs().max() == 0
    # unwarped log-probs would not be on-policy: they differ from the sampling distribution's
    unwarped = rl_trainer.sampling_logprobs(logits, batch.tokens[:, batch.prompt_len:])
    assert ((unwarped - batch.logprobs).abs() * batch.reply_mask).max() > 0.05
    stats = trainer.update(batch, torch.randn(8))
    assert math.isfinite(stats["policy_loss"]) and math.isfinite(stats["approx_kl"])


def test_the_minibatch_loss_matches_a_hand_computed_example():
    config = RLConfig.from_preset("tiny", clip_eps=0.2, value_clip_eps=0.2, value_coef=0.1)
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.45, 0.9]]))  # ratios 1.5 (clipped), 0.9 (inside), padding
    adv = torch.tensor([[1.0, -2.0, 7.0]])
    values, old_values = torch.tensor([[1.0, 0.1, 5.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo.ppo_loss(new, old, values, old_values, adv, returns, mask, config)
    # policy: token 0: max(-1 * 1.5, -1 * 1.2) = -1.2 (the clip holds the gain back); token 1: max(1.8, 1.8) = 1.8
    assert stats["policy_loss"] == pytest.approx((-1.2 + 1.8) / 2)
    # value: token 0: V = 1.0, clipped to 0.5 + 0.2 = 0.7, R = 0: max(1.0, 0.49) = 1.0
    #        token 1: V = 0.1 (inside the clip), R = 1: max(0.81, 0.81) = 0.81;  L_V = 1/2 mean = 0.4525
    assert stats["value_loss"] == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert loss.item() == pytest.approx(0.3 + 0.1 * 0.4525)
    assert stats["clipfrac"] == pytest.approx(0.5)  # |1.5 - 1| > 0.2, |0.9 - 1| is not
    # approx KL = mean((rho - 1) - log rho) = ((0.5 - log 1.5) + (-0.1 - log 0.9)) / 2
    assert stats["approx_kl"] == pytest.approx(((0.5 - math.log(1.5)) + (-0.1 - math.log(0.9))) / 2)
    assert stats["skipped"] == 0.0
    # TRL's ratio threshold: a mean ratio of 1.2 above the threshold 1.1 -> this minibatch makes no update
    skipped, stats = ppo.ppo_loss(new, old, values, old_values, adv, returns, mask,
                                  RLConfig.from_preset("tiny", ratio_threshold=1.1))
    assert skipped.item() == 0.0 and stats["skipped"] == 1.0 and stats["policy_loss"] == pytest.approx(0.3)


def test_the_epochs_stop_early_once_the_policy_moves_past_the_approximate_kl_threshold():
    def updates(early_stop_kl):
        policy = tiny_policy()
        config = RLConfig.from_preset("tiny", batch_size=8, minibatch_size=2, ppo_epochs=3, lr=5e-2,
                                  early_stop_kl=early_stop_kl)
        trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), config, stop_ids={STOP})
        batch = trainer.rollout(prompts(8))
        return trainer.update(batch, torch.linspace(-1, 1, 8))

    assert updates(None)["updates"] == 3 * 4  # every epoch, every minibatch
    # approx KL is measured in each minibatch's forward pass, before its own step: the first minibatch sees the
    # policy that sampled (ratio 1, KL 0), the second one the policy after one step, past the threshold: stop
    stopped = updates(1e-9)
    assert stopped["updates"] == 2 and stopped["approx_kl"] > 1e-9 / 2


def test_reply_diversity_counts_distinct_replies_and_the_most_frequent_one():
    assert rl_trainer.reply_diversity([[5, 6], [7], [5, 6], [5, 6]]) == {"distinct_frac": 0.5, "top_reply_frac": 0.75}
    assert rl_trainer.reply_diversity([[1], [2], [3], []]) == {"distinct_frac": 1.0, "top_reply_frac": 0.25}


def test_the_paper_preset_takes_the_papers_settings_for_each_reward():
    bleu, confidence = RLConfig.from_preset("paper", reward="bleu"), RLConfig.from_preset("paper", reward="confidence")
    assert (bleu.lr, bleu.minibatch_size, bleu.kl_estimator, bleu.kl_coef) == (1.41e-5, 4, "k1", 0.2)
    assert (confidence.lr, confidence.minibatch_size, confidence.kl_estimator, confidence.kl_coef) == (
        5e-6, 2, "abs", 0.02)
    for config in (bleu, confidence):
        assert (config.batch_size, config.ppo_epochs, config.top_k, config.top_p, config.temperature) == (
            16, 4, 50, 0.9, 1.0)
        assert config.adaptive_kl and (config.kl_target, config.kl_horizon) == (6.0, 10000)
        assert config.max_grad_norm is None and config.early_stop_kl is None and not config.normalize_reward
        assert config.ratio_threshold == 10.0 and config.unfinished_penalty is None
        assert not config.warped_logprobs and config.value_head == "random" and config.reward_style == "paper"
    assert RLConfig.from_preset("paper", reward="confidence", lr=1e-4).lr == 1e-4  # an override wins
    # as long as the checkpoint the paper evaluated for each reward
    assert [RLConfig.from_preset("paper", reward=r).total_prompts for r in ("bleu", "semsim", "llm", "confidence")] \
        == [220_000, 220_000, 80_000, 138_320]


def test_the_papers_ratio_and_kl_come_from_the_raw_softmax_and_its_value_head_starts_random():
    policy = tiny_policy(vocab=200)
    config = RLConfig.from_preset("tiny", batch_size=8, minibatch_size=4, top_k=50, top_p=0.9,
                                   warped_logprobs=False)
    trainer = PPOTrainer(policy, copy.deepcopy(policy.lm), config, stop_ids={STOP})
    batch = trainer.rollout(prompts(8))
    assert batch.keep is None
    logits, _ = policy(batch.tokens, batch.mask, batch.prompt_len)
    raw = torch.log_softmax(logits, -1).gather(-1, batch.tokens[:, batch.prompt_len:, None])[..., 0]
    assert torch.allclose(raw * batch.reply_mask, batch.logprobs * batch.reply_mask, atol=1e-5)
    assert (ppo.PolicyWithValue(policy.lm, "random").value_head.weight != 0).any()
    with pytest.raises(ValueError, match="value head 'ones'"):
        ppo.PolicyWithValue(policy.lm, "ones")


def test_the_paper_preset_takes_on_policy_logprobs_from_the_command_line(tmp_path, init_dir, corpus_small_build):
    # the control that separates top-k/top-p sampling from the raw log-probs the paper's ratio and KL used
    for flag, warped in (("--warped-logprobs", True), (None, False)):
        out = tmp_path / str(warped)
        train_ppo.main(["--init", str(init_dir), "--data", str(corpus_small_build), "--out", str(out), "--reward",
                        "zero", "--preset", "paper", "--max-steps", "1", "--threads", "1"] + ([flag] if flag else []))
        train = json.loads((out / "config.json").read_text())["train"]
        assert (train["warped_logprobs"], train["top_k"], train["top_p"]) == (warped, 50, 0.9)


def test_a_collapse_onto_one_reply_is_printed_while_it_happens(tmp_path, init_dir, corpus_small_build, monkeypatch,
                                                               capsys):
    real_step = ppo.PPOTrainer.step

    def everyone_says_the_first_reply(self, prompts, scorer):  # a collapsed policy, without training one
        stats, rollout, scores = real_step(self, prompts, scorer)
        rollout.replies = [rollout.replies[0]] * len(rollout.replies)
        return {**stats, **rl_trainer.reply_diversity(rollout.replies)}, rollout, scores

    monkeypatch.setattr(ppo.PPOTrainer, "step", everyone_says_the_first_reply)
    train_on(short_reply_reward, RunFolder(tmp_path / "ppo"), run_inputs(init_dir, corpus_small_build),
             {"preset": "tiny", "total_prompts": 8})
    printed = capsys.readouterr().out
    assert printed.count("100% of the batch replied") == 1 and "collapsing onto one reply" in printed  # once
    rows = read_log(tmp_path / "ppo" / "log.csv")
    assert [float(r["top_reply_frac"]) for r in rows] == [1.0, 1.0] and float(rows[0]["distinct_frac"]) == 0.25
