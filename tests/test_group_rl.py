"""RLOO, GRPO and Dr. GRPO: advantages and losses against hand-computed numbers, and whole runs that resume exactly."""

import json
import math

import pytest
import torch

import train_ppo
from llamalogue.checkpoint import load_model, load_state
from llamalogue.old_runs import upgrade_record
from llamalogue.rl import run as rl_run
from llamalogue.rl.config import RLConfig
from llamalogue.rl.group import group_advantages, group_loss, kl_penalized_rewards
from llamalogue.rl.trainer import Rollout
from llamalogue.run_dir import RunError
from llamalogue.run_shell import RunFolder
from tests.test_ppo import STOP, prompts, read_log, run_inputs, short_reply_reward, tiny_policy, train_on
from tests.test_ppo import init_dir, tokenizer  # noqa: F401  (fixtures)

CRITIC_FREE = ("rloo", "grpo", "dr_grpo")

# 2 prompts x G = 3 replies: rows 0-2 answer the first prompt, rows 3-5 the second
REWARDS = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])


def test_group_advantages_of_two_prompts_with_three_replies_each():
    # RLOO: reply 0's baseline is the mean of replies 1 and 2, (2 + 6) / 2 = 4, so A_0 = 1 - 4 = -3; and so on
    rloo = [1 - (2 + 6) / 2, 2 - (1 + 6) / 2, 6 - (1 + 2) / 2, 0 - (0 + 3) / 2, 0 - (0 + 3) / 2, 3 - (0 + 0) / 2]
    assert group_advantages(REWARDS, 3, "rloo").tolist() == pytest.approx(rloo)
    assert rloo == [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]
    # Dr. GRPO: the group means are 3 and 1
    assert group_advantages(REWARDS, 3, "dr_grpo").tolist() == pytest.approx([-2, -1, 3, -1, -1, 2])
    # GRPO: divided by the groups' sample std, sqrt((4 + 1 + 9) / 2) = sqrt(7) and sqrt((1 + 1 + 4) / 2) = sqrt(3)
    s1, s2 = math.sqrt(7) + 1e-4, math.sqrt(3) + 1e-4
    assert group_advantages(REWARDS, 3, "grpo").tolist() == pytest.approx(
        [-2 / s1, -1 / s1, 3 / s1, -1 / s2, -1 / s2, 2 / s2])
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        group_advantages(REWARDS, 3, "ppo")


def test_the_leave_one_out_baseline_ignores_the_replys_own_reward():
    baseline = REWARDS - group_advantages(REWARDS, 3, "rloo")
    changed = REWARDS.clone()
    changed[1] = 100.0  # reply 1's own reward: its baseline stays, the others' move
    moved = changed - group_advantages(changed, 3, "rloo")
    assert moved[1] == baseline[1] and (moved[[0, 2]] != baseline[[0, 2]]).all()
    assert torch.equal(moved[3:], baseline[3:])  # the other prompt's group
    # the baseline of G replies is G / (G - 1) times the centred reward: RLOO = 3/2 Dr. GRPO for G = 3
    assert torch.allclose(group_advantages(REWARDS, 3, "rloo"), 1.5 * group_advantages(REWARDS, 3, "dr_grpo"))


def test_rloo_puts_the_kl_penalty_of_the_whole_reply_into_its_reward():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])  # 9.0: past the end of reply 1, must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # R = r - beta * sum_t KL_t: 1 - 0.5 * 0.6 and 0 - 0.5 * 0.4
    assert kl_penalized_rewards(torch.tensor([1.0, 0.0]), kl, mask, 0.5).tolist() == pytest.approx([0.7, -0.2])


def toy_minibatch(advantages):
    """Two replies of 2 and 1 actions (and one padding column), sampled at probability 0.5 each."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    old = torch.log(torch.full((2, 3), 0.5))
    ref = torch.log(torch.tensor([[0.25, 0.45, 0.5], [0.5, 0.5, 0.5]]))
    tokens = torch.zeros(2, 4, dtype=torch.long)
    return Rollout(tokens, torch.ones_like(tokens), 1, mask, old, ref, None, torch.zeros(2, 3), None, [[], []],
                   [True, True], advantages=torch.tensor(advantages)[:, None] * mask)


# the current policy: ratios 1.5 (clipped) and 0.9 in reply 0, 1.0 in reply 1; the padding's value must not matter
NEW = torch.log(torch.tensor([[0.75, 0.45, 0.9], [0.5, 0.3, 0.3]]))
K3 = 1 / 3 - 1 - math.log(1 / 3)  # reply 0's first token: rho = pi_ref / pi = 0.25 / 0.75; its other tokens: rho = 1


@pytest.mark.parametrize("algorithm", CRITIC_FREE)
def test_the_group_losses_and_grpos_k3_term_match_a_hand_computed_example(algorithm):
    config = RLConfig.from_preset("tiny", algorithm=algorithm, group_size=2, max_new_tokens=4, clip_eps=0.2)
    loss, stats = group_loss(NEW, toy_minibatch([1.0, -2.0]), 0.1, config)
    # per token, max(-A rho, -A clip(rho)): reply 0 (A = 1): max(-1.5, -1.2) = -1.2, max(-0.9, -0.9) = -0.9;
    # reply 1 (A = -2): max(2, 2) = 2
    if algorithm == "grpo":  # the mean over each reply's tokens, then over the replies
        policy, kl = ((-1.2 - 0.9) / 2 + 2.0) / 2, (K3 / 2 + 0.0) / 2
    else:  # the sum over each reply's tokens over max_new_tokens = 4, then the mean over the replies
        policy, kl = ((-1.2 - 0.9) / 4 + 2.0 / 4) / 2, (K3 / 4 + 0.0) / 2
    close = dict(abs=1e-6)  # float32
    assert stats["policy_loss"] == pytest.approx(policy, **close)
    if algorithm == "rloo":  # its KL is in the reward, not in the loss
        assert "kl_loss" not in stats and loss.item() == pytest.approx(policy, **close)
    else:
        assert stats["kl_loss"] == pytest.approx(0.1 * kl, **close)
        assert loss.item() == pytest.approx(policy + 0.1 * kl, **close)
    assert stats["clipfrac"] == pytest.approx(1 / 3)  # of the 3 real tokens, only |1.5 - 1| > 0.2
    assert stats["approx_kl"] == pytest.approx(((0.5 - math.log(1.5)) + (-0.1 - math.log(0.9))) / 3, **close)


def test_at_ratio_one_the_rloo_loss_is_reinforce():
    """The gradient of the clipped surrogate at pi = pi_old: -A_i / L on each action of reply i, over B replies."""
    config = RLConfig.from_preset("tiny", algorithm="rloo", group_size=2, max_new_tokens=4)
    minibatch = toy_minibatch([1.0, -2.0])
    logprobs = minibatch.logprobs.clone().requires_grad_()
    loss, _ = group_loss(logprobs, minibatch, 0.1, config)
    loss.backward()
    assert torch.allclose(logprobs.grad, -minibatch.advantages / 4 / 2)


@pytest.mark.parametrize("algorithm", ("ppo",) + CRITIC_FREE)
def test_the_ratio_is_one_before_the_first_update(algorithm):
    policy = tiny_policy(vocab=200)
    config = RLConfig.from_preset("tiny", algorithm=algorithm, batch_size=8, minibatch_size=4, top_k=50, top_p=0.9,
                                   temperature=0.8)
    trainer = rl_run.make_trainer(policy.lm, config, {STOP}, 0, "cpu")
    batch = trainer.rollout(prompts(config.prompts_per_step))
    assert len(batch.replies) == 8
    assert (batch.values is None) == (algorithm != "ppo")  # the critic-free ones have no value head
    for rows in (torch.arange(8), torch.tensor([5, 1, 2, 6])):  # the whole batch and a minibatch cut to its columns
        minibatch = batch.minibatch(rows)
        new, _ = trainer.policy_logprobs(minibatch)
        ratio = ((new - minibatch.logprobs) * minibatch.reply_mask).exp()
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    stats = trainer.update(batch, torch.linspace(-1, 1, 8))
    assert math.isfinite(stats["policy_loss"]) and stats["kl"] == 0  # the policy sampled was the reference


def test_the_replies_to_a_prompt_sit_side_by_side_and_ties_are_counted():
    policy = tiny_policy()
    config = RLConfig.from_preset("tiny", algorithm="grpo", batch_size=6, minibatch_size=3, group_size=3)
    trainer = rl_run.make_trainer(policy.lm, config, {STOP}, 0, "cpu")
    two = prompts(2)
    batch = trainer.rollout(two)
    for row in range(6):
        prompt = two[row // 3]
        assert batch.tokens[row, batch.prompt_len - len(prompt) : batch.prompt_len].tolist() == prompt
    stats = trainer.update(batch, torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 0.0]))
    assert stats["tied_groups"] == 0.5 and "value_loss" not in stats and "kl_loss" in stats


def test_the_algorithm_and_the_group_size_are_checked_and_defaulted(tmp_path):
    assert RLConfig.from_preset("tiny").group_size == 1  # PPO: one reply per prompt, as before
    assert RLConfig.from_preset("tiny", algorithm="grpo").group_size == 4
    with pytest.raises(ValueError, match="algorithm 'a2c'"):
        RLConfig.from_preset("tiny", algorithm="a2c")
    with pytest.raises(ValueError, match="rloo compares the replies to one prompt: group_size \\(1\\)"):
        RLConfig.from_preset("tiny", algorithm="rloo", group_size=1)
    with pytest.raises(ValueError, match="normalize_reward is PPO's"):
        RLConfig.from_preset("tiny", algorithm="grpo", normalize_reward=True)
    # a record from before the algorithms: PPO, one reply per prompt
    old = upgrade_record({"stage": "ppo", "train": {"lr": 1e-4}}, tmp_path)
    assert (old["train"]["algorithm"], old["train"]["group_size"]) == ("ppo", 1)


def test_a_group_size_that_does_not_divide_the_batch_is_refused_in_one_line(tmp_path, init_dir, corpus_small_build):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="batch_size \\(16, replies per step\\) must be a multiple of group_size "
                                         "\\(3, replies per prompt\\)$"):
        train_ppo.main(["--init", str(init_dir), "--data", str(corpus_small_build), "--out", str(out), "--reward",
                        "pmi", "--algorithm", "grpo", "--group-size", "3", "--batch-size", "16"])
    assert not out.exists()


@pytest.mark.parametrize("algorithm", CRITIC_FREE)
def test_a_critic_free_run_writes_its_folder_and_resumes_exactly(algorithm, tmp_path, init_dir, corpus_small_build,
                                                                 capsys):
    given = run_inputs(init_dir, corpus_small_build)
    options = {"preset": "tiny", "algorithm": algorithm, "group_size": 2, "total_prompts": 12}

    def train(run, resume=False, **changed):
        return train_on(short_reply_reward, RunFolder(tmp_path / run, resume=resume), given, {**options, **changed})

    summary = train("whole")
    out = tmp_path / "whole"
    assert "preset tiny: 3 steps x 2 prompts x 2 replies = 12 episodes" in capsys.readouterr().out
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"] and [r["prompts"] for r in rows] == ["4", "8", "12"]
    for column in ("reward_mean", "kl", "kl_coef", "entropy", "policy_loss", "clipfrac", "approx_kl", "reply_len",
                   "distinct_frac", "top_reply_frac", "tied_groups", "t_rollout", "prompts_per_s"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert "value_loss" not in rows[0] and ("kl_loss" in rows[0]) == (algorithm != "rloo")
    record = json.loads((out / "config.json").read_text())
    assert (record["train"]["algorithm"], record["train"]["group_size"]) == (algorithm, 2)
    assert "value_head" not in load_state(out) and json.loads((out / "summary.json").read_text())["steps"] == 3
    assert summary["distinct_frac"]["end"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["phase"] for s in samples].count("after") == 10
    # the two training samples of a step are two replies to its first prompt
    assert len({s["prompt"] for s in samples if s["phase"] == "train" and s["step"] == 1}) == 1

    train("resumed", max_steps=2)
    with pytest.raises(RunError, match="other settings \\(group_size=2, not 4\\)"):
        train("resumed", resume=True, group_size=4)
    with pytest.raises(RunError, match=f"other settings \\(algorithm='{algorithm}', not 'ppo'\\)"):
        train("resumed", resume=True, algorithm="ppo")
    train("resumed", resume=True)
    resumed_rows = read_log(tmp_path / "resumed" / "log.csv")
    for column in ("reward_mean", "kl", "kl_coef", "policy_loss", "approx_kl", "distinct_frac"):
        assert [r[column] for r in resumed_rows] == [r[column] for r in rows], column
    whole, resumed = load_model(out)[0], load_model(tmp_path / "resumed")[0]
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
