"""GSPO, CISPO and DAPO: their losses and gradients against hand-computed numbers, DAPO's dynamic sampling, and whole
runs through train_ppo.py."""

import dataclasses
import json
import math

import pytest
import torch

import train_ppo
from llamalogue.rl import run as rl_run
from llamalogue.rl.config import RLConfig
from llamalogue.rl.group import group_advantages, group_loss
from llamalogue.run_dir import RunError
from tests.test_group_rl import K3, NEW, REWARDS, toy_minibatch
from llamalogue.run_shell import RunFolder
from tests.test_ppo import STOP, prompts, read_log, run_inputs, short_reply_reward, tiny_policy, train_on
from tests.test_ppo import init_dir, tokenizer  # noqa: F401  (fixtures)

NEW_ALGORITHMS = ("gspo", "cispo", "dapo")
CLOSE = dict(abs=1e-6)  # float32

# toy_minibatch: reply 0 has two actions, reply 1 one (and one padding column), each sampled at probability 0.5.
# NEW, the current policy: token ratios 1.5 and 0.9 in reply 0, 1.0 in reply 1.
ADVANTAGES = [1.0, -2.0]


def config_of(algorithm, **settings):
    return RLConfig.from_preset("tiny", algorithm=algorithm, group_size=2, max_new_tokens=4, **settings)


def loss_and_gradient(algorithm, new=NEW, kl_coef=0.0, minibatch=None, **settings):
    """The loss, its statistics and d loss / d log pi of every action at the policy's log-probs `new`."""
    logprobs = new.clone().requires_grad_()
    loss, stats = group_loss(logprobs, minibatch or toy_minibatch(ADVANTAGES), kl_coef, config_of(algorithm,
                                                                                                   **settings))
    loss.backward()
    return loss.item(), stats, logprobs.grad


def test_the_new_algorithms_defaults_are_the_papers_and_are_checked():
    ranges = {name: (config_of(name).clip_eps, config_of(name).clip_eps_high)
              for name in ("ppo", "grpo", "gspo", "cispo", "dapo")}
    assert ranges == {"ppo": (0.2, 0.2), "grpo": (0.2, 0.2), "gspo": (3e-4, 4e-4), "cispo": (1.0, 0.28),
                      "dapo": (0.2, 0.28)}
    assert config_of("grpo", clip_eps=0.1).clip_eps_high == 0.1  # one range given: symmetric, as before
    assert config_of("dapo", clip_eps=0.1).clip_eps_high == 0.28  # DAPO's own eps_high stays
    assert config_of("dapo").group_size == 2 and RLConfig.from_preset("tiny", algorithm="cispo").group_size == 4
    with pytest.raises(ValueError, match="RLConfig: clip_eps_high \\(0.0\\) must be positive"):
        config_of("dapo", clip_eps_high=0.0)
    with pytest.raises(ValueError, match="RLConfig: clip_eps \\(-0.1\\) must be positive"):
        config_of("gspo", clip_eps=-0.1)
    with pytest.raises(ValueError, match="--dynamic-sampling-tries -1: must be at least 0"):
        config_of("dapo", dynamic_sampling_tries=-1)
    with pytest.raises(ValueError, match="gspo compares the replies to one prompt: group_size \\(1\\)"):
        RLConfig.from_preset("tiny", algorithm="gspo", group_size=1)
    # a run recorded before clip_eps_high existed resumes with its symmetric range
    saved = dataclasses.asdict(config_of("grpo", clip_eps=0.1))
    del saved["clip_eps_high"]
    assert RLConfig.from_saved(saved).clip_eps_high == 0.1
    with pytest.raises(RunError, match="other settings \\(clip_eps_high=0.1, not 0.3\\)"):
        RLConfig.from_saved(saved, clip_eps_high=0.3)


@pytest.mark.parametrize("algorithm", NEW_ALGORITHMS)
def test_the_new_algorithms_take_grpos_group_advantages(algorithm):
    assert torch.equal(group_advantages(REWARDS, 3, algorithm), group_advantages(REWARDS, 3, "grpo"))


def test_gspo_clips_one_ratio_per_reply_the_geometric_mean_of_its_tokens():
    loss, stats, _ = loss_and_gradient("gspo", kl_coef=0.1)
    s0 = math.exp((math.log(1.5) + math.log(0.9)) / 2)  # = sqrt(1.35) = 1.162, above 1 + 4e-4: clipped
    # l_i = max(-A_i s_i, -A_i clip(s_i, 1 - 3e-4, 1 + 4e-4)): reply 0 (A = 1) max(-1.162, -1.0004); reply 1 (A = -2,
    # s = 1) 2; the mean over the 2 replies. The k3 term is GRPO's: each reply's mean, then the replies' mean.
    policy = (max(-s0, -(1 + 4e-4)) + 2.0) / 2
    assert stats["policy_loss"] == pytest.approx(policy, **CLOSE)
    assert stats["kl_loss"] == pytest.approx(0.1 * (K3 / 2 + 0.0) / 2, **CLOSE)
    assert loss == pytest.approx(policy + stats["kl_loss"], **CLOSE)
    assert stats["clipfrac"] == 0.5  # of the replies: reply 0's s is clipped, reply 1's is not
    # the clip holds back the whole of reply 0 -- its token at ratio 0.9, well inside any token clip range, too;
    # reply 1's token: d(-A s / B) / d log pi = -A s / (|y| B) = 2 / 2 (the policy term alone: beta = 0)
    _, _, grad = loss_and_gradient("gspo")
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))

    # with room to move (eps 0.2), every token of reply 0 gets the same gradient, -A s_0 / (|y_0| B); GRPO weighs
    # each token by its own ratio, and its clip drops the token at 1.5 alone
    _, _, wide = loss_and_gradient("gspo", clip_eps=0.2, clip_eps_high=0.2)
    assert torch.allclose(wide[0, :2], torch.full((2,), -s0 / 2 / 2))
    _, _, grpo = loss_and_gradient("grpo")
    assert torch.allclose(grpo[0, :2], torch.tensor([0.0, -0.9 / 2 / 2]))


def test_cispo_keeps_the_gradient_of_every_token_its_weight_clipped_or_not():
    loss, stats, _ = loss_and_gradient("cispo", kl_coef=0.1)
    # w = sg(clip(rho, 1 - 1, 1 + 0.28)): 1.5 -> 1.28, 0.9, 1.0; l = -w A log pi; the mean over the 3 real tokens
    w = [1.28, 0.9, 1.0]
    per_token = [-w[0] * 1 * math.log(0.75), -w[1] * 1 * math.log(0.45), -w[2] * -2 * math.log(0.5)]
    assert stats["policy_loss"] == pytest.approx(sum(per_token) / 3, **CLOSE)
    assert stats["kl_loss"] == pytest.approx(0.1 * K3 / 3, **CLOSE)  # k3: the same token mean
    assert loss == pytest.approx(sum(per_token) / 3 + 0.1 * K3 / 3, **CLOSE)
    assert stats["clipfrac"] == pytest.approx(1 / 3)  # the weight of the token at 1.5 is clipped...
    # ...and its log-prob still has a gradient, -w A / 3: no token is dropped
    _, _, grad = loss_and_gradient("cispo")
    assert torch.allclose(grad, torch.tensor([[-1.28 / 3, -0.9 / 3, 0.0], [2.0 / 3, 0.0, 0.0]]))
    _, _, dapo = loss_and_gradient("dapo")  # where DAPO's clipped surrogate drops that token
    assert dapo[0, 0] == 0 and grad[0, 0] != 0


def test_dapo_clips_higher_and_averages_over_the_minibatchs_tokens():
    loss, stats, _ = loss_and_gradient("dapo", kl_coef=0.1)
    # l = max(-A rho, -A clip(rho, 0.8, 1.28)): 1.5 -> -1.28, 0.9 -> -0.9, reply 1 (A = -2): 2; over the 3 tokens
    assert stats["policy_loss"] == pytest.approx((-1.28 - 0.9 + 2.0) / 3, **CLOSE)
    assert stats["kl_loss"] == pytest.approx(0.1 * K3 / 3, **CLOSE)
    assert loss == pytest.approx((-1.28 - 0.9 + 2.0) / 3 + 0.1 * K3 / 3, **CLOSE)
    # clip-higher: a token at ratio 1.25 and A > 0 still learns under DAPO's 0.28, not under GRPO's 0.2
    at_125 = torch.log(torch.tensor([[0.625, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    assert loss_and_gradient("dapo", new=at_125)[2][0, 0] != 0 and loss_and_gradient("grpo", new=at_125)[2][0, 0] == 0
    # a dropped reply (a tied group) is out of the loss: reply 0's two tokens alone, and no KL of reply 1
    dropped = dataclasses.replace(toy_minibatch(ADVANTAGES), dropped=torch.tensor([False, True]))
    _, alone, grad = loss_and_gradient("dapo", minibatch=dropped)
    assert alone["policy_loss"] == pytest.approx((-1.28 - 0.9) / 2, **CLOSE)
    assert grad[1].abs().sum() == 0


def test_dapos_token_mean_weighs_a_long_reply_more_than_grpos_reply_mean():
    """At ratio 1: GRPO gives each reply 1/B of the weight, DAPO each token 1/N -- reply 0 has 2 of the 3 tokens."""
    old = toy_minibatch(ADVANTAGES).logprobs
    _, _, grpo = loss_and_gradient("grpo", new=old)
    _, _, dapo = loss_and_gradient("dapo", new=old)
    weight = {name: (g[0].abs().sum() / 1.0, g[1].abs().sum() / 2.0) for name, g in (("grpo", grpo), ("dapo", dapo))}
    share = {name: long / (long + short) for name, (long, short) in weight.items()}  # per unit of |A|
    assert share["grpo"] == pytest.approx(1 / 2) and share["dapo"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("algorithm", NEW_ALGORITHMS)
def test_at_ratio_one_each_new_loss_is_reinforce(algorithm):
    """Before the first update pi = pi_old, and each gradient is -A_i grad log pi(a_t) on every action: scaled by
    1/(|y_i| B) for GSPO (GRPO's reply mean), by 1/N, N the minibatch's tokens, for CISPO and DAPO."""
    minibatch = toy_minibatch(ADVANTAGES)
    _, stats, grad = loss_and_gradient(algorithm, new=minibatch.logprobs)
    lengths = minibatch.reply_mask.sum(1, keepdim=True)
    scale = lengths * 2 if algorithm == "gspo" else minibatch.reply_mask.sum()
    assert torch.allclose(grad, -minibatch.advantages / scale)
    assert stats["clipfrac"] == 0 and stats["approx_kl"] == pytest.approx(0.0, **CLOSE)


def scripted_scorer(rewards_by_call):
    """A scorer that returns its scripted rewards call after call, and records the rows it was asked about."""
    calls = []

    def scorer(rows, replies):
        calls.append(list(rows))
        return rewards_by_call[len(calls) - 1][: len(rows)]

    return scorer, calls


def test_dapo_samples_a_tied_group_again_and_drops_one_that_stays_tied():
    config = RLConfig.from_preset("tiny", algorithm="dapo", batch_size=6, minibatch_size=3, group_size=3,
                                   ppo_epochs=1, unfinished_penalty=None)  # every reply goes to the scorer
    trainer = rl_run.make_trainer(tiny_policy().lm, config, {STOP}, 0, "cpu")
    two = prompts(2)
    # the first prompt's three replies tie, the second's differ; sampled again, the first's differ
    scorer, calls = scripted_scorer([[1.0, 1.0, 1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.5]])
    batch = trainer.rollout(two)
    first = trainer.scores(batch.replies, batch.stopped, scorer)
    batch2, scores, sampling = trainer.dynamic_sampling(batch, first, scorer)
    assert sampling == {"resampled_groups": 1, "dropped_groups": 0}
    assert calls == [[0, 1, 2, 3, 4, 5], [0, 1, 2]]  # only the tied group's rows were scored again
    assert scores.tolist() == [0.0, 1.0, 0.5, 0.0, 2.0, 0.0]
    assert batch2.replies[3:] == batch.replies[3:]  # the other group is kept as it was
    for row in range(6):  # every row still answers its own prompt
        prompt = two[row // 3]
        assert batch2.tokens[row, batch2.prompt_len - len(prompt) : batch2.prompt_len].tolist() == prompt
    new, _ = trainer.policy_logprobs(batch2)  # old log-probs recomputed for the assembled batch: ratio 1
    assert torch.allclose((new - batch2.logprobs) * batch2.reply_mask, torch.zeros_like(new), atol=1e-5)

    # a policy whose groups always tie: each group is sampled dynamic_sampling_tries times more, then dropped;
    # nothing is left in the loss, so the update leaves the weights as they were
    tied = [[0.5] * 6 for _ in range(1 + config.dynamic_sampling_tries)]
    scorer, calls = scripted_scorer(tied)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    stats, _, _ = trainer.step(two, scorer)
    assert (stats["resampled_groups"], stats["dropped_groups"]) == (2 * config.dynamic_sampling_tries, 2)
    assert len(calls) == 1 + config.dynamic_sampling_tries and stats["tied_groups"] == 1.0 and "t_resample" in stats
    assert stats["policy_loss"] == 0 and stats["kl_loss"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_only_dapo_samples_again():
    config = RLConfig.from_preset("tiny", algorithm="grpo", batch_size=4, minibatch_size=2, group_size=2,
                                   unfinished_penalty=None)
    trainer = rl_run.make_trainer(tiny_policy().lm, config, {STOP}, 0, "cpu")
    scorer, calls = scripted_scorer([[1.0] * 4])
    stats, _, _ = trainer.step(prompts(2), scorer)
    assert len(calls) == 1 and "resampled_groups" not in stats and "t_resample" not in stats


@pytest.mark.parametrize("algorithm", NEW_ALGORITHMS)
def test_train_ppo_runs_each_new_algorithm_end_to_end(algorithm, tmp_path, init_dir, corpus_small_build):
    """Two steps of train_ppo.py with pmi under the frozen reference model (no teacher to load)."""
    out = tmp_path / algorithm
    train_ppo.main(["--init", str(init_dir), "--reward", "pmi", "--pmi-k", "2", "--data", str(corpus_small_build),
                    "--out", str(out), "--preset", "tiny", "--max-steps", "2", "--algorithm", algorithm,
                    "--group-size", "2", "--clip-eps-high", "0.3"])
    record = json.loads((out / "config.json").read_text())["train"]
    low = {"gspo": 3e-4, "cispo": 1.0, "dapo": 0.2}[algorithm]
    assert (record["algorithm"], record["clip_eps"], record["clip_eps_high"]) == (algorithm, low, 0.3)
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    for column in ("reward_mean", "kl", "policy_loss", "kl_loss", "clipfrac", "approx_kl", "tied_groups"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert ("resampled_groups" in rows[0]) == (algorithm == "dapo")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and ("resample" in summary["seconds_per_step"]) == (algorithm == "dapo")


def test_a_dapo_run_with_dynamic_sampling_resumes_exactly(tmp_path, init_dir, corpus_small_build):
    """The resampling draws from the step's RNG, which the checkpoint keeps: a resumed run samples the same."""
    given = run_inputs(init_dir, corpus_small_build)
    options = {"preset": "tiny", "algorithm": "dapo", "group_size": 2, "total_prompts": 12}
    train_on(short_reply_reward, RunFolder(tmp_path / "whole"), given, options)
    train_on(short_reply_reward, RunFolder(tmp_path / "resumed"), given, {**options, "max_steps": 2})
    train_on(short_reply_reward, RunFolder(tmp_path / "resumed", resume=True), given, options)
    rows, resumed = read_log(tmp_path / "whole" / "log.csv"), read_log(tmp_path / "resumed" / "log.csv")
    assert sum(int(r["resampled_groups"]) for r in rows) > 0  # the short-reply reward ties: dynamic sampling ran
    for column in ("reward_mean", "kl", "policy_loss", "resampled_groups", "dropped_groups", "distinct_frac"):
        assert [r[column] for r in resumed] == [r[column] for r in rows], column
