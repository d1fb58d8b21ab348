"""Guards against reward hacking and the held-out judge (llamalogue.rl.guards, llamalogue.rl.judge): each by hand on
small numbers, the reward model's disjoint halves, and train_ppo.py with a judge and every guard, end to end."""

import csv
import dataclasses
import json
import math

import pytest
import torch

import train_ppo
from scripts import ppo_report
from llamalogue.alignment import reward_model
from llamalogue.alignment.pairs import AlignmentInputs
from llamalogue.checkpoint import save_checkpoint
from llamalogue.corpus.dialogue_files import Pair, read_pairs
from llamalogue.model import Llama, ModelConfig
from llamalogue.rl import run as ppo_run
from llamalogue.rl.config import ALGORITHMS, RLConfig
from llamalogue.rl.guards import ParReward, ensemble, preference_as_reward, repeat_penalty
from llamalogue.rl.judge import (GENERIC_REPLIES, GENERIC_SAMPLES, WatchedReward, check_held_out, generic_replies,
                                 generic_share, most_frequent)
from llamalogue.rl.rewards import PreferenceReward
from llamalogue.run_shell import RunFolder
from llamalogue.tokenizer import Tokenizer
from tests.test_ppo import train_on


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_par_is_the_sigmoid_of_the_reward_centred_on_the_reference_replys():
    assert preference_as_reward([2.0, 0.0, -1.0], [0.0, 0.0, 1.0]) == pytest.approx([sigmoid(2), 0.5, sigmoid(-2)])
    # a reward of the reply's word count; the reference replies have 2 and 1 words
    references = {"what ?": "a ball", "where ?": "there"}
    drawn = []

    def sample_reference(prompts, seed):
        drawn.append((prompts, seed))
        return [references[p] for p in prompts]

    par = ParReward(lambda prompts, replies: [float(len(r.split())) for r in replies], sample_reference)
    with pytest.raises(ValueError, match="no reference reply drawn"):
        par(["what ?"], ["no"])
    par.draw(["what ?", "where ?", "what ?"], seed=7)
    assert drawn == [(["what ?", "where ?"], 7)]  # one reference per distinct prompt
    scores = par(["what ?", "where ?", "what ?"], ["a big red ball", "there", "no"])
    assert scores == pytest.approx([sigmoid(4 - 2), 0.5, sigmoid(1 - 2)])
    assert par.last_raw == [4.0, 1.0, 1.0]  # the raw reward, logged beside the judge


def test_an_ensemble_takes_the_mean_or_the_minimum_of_its_models():
    scores = [[1.0, -2.0, 0.5], [3.0, 0.0, 0.5]]
    assert ensemble(scores, "mean") == [2.0, -1.0, 0.5]
    assert ensemble(scores, "min") == [1.0, -2.0, 0.5]
    with pytest.raises(ValueError, match="--ensemble 'max'"):
        ensemble(scores, "max")

    class Fixed:  # a reward model whose score is known: a constant per model
        def __init__(self, value):
            self.value = value

        def score(self, tokenizer, prompts, replies):
            return [self.value * len(r.split()) for r in replies]

    models = [(Fixed(1.0), None), (Fixed(-0.5), None), (Fixed(2.0), None)]
    for how, expected in (("mean", [(2 - 1 + 4) / 3, -5.0]), ("min", [-1.0, -5.0])):
        reward = PreferenceReward(*models[0], *models[1:], ensemble=how)
        assert reward(["what ?", "what ?"], ["a ball", ""]) == pytest.approx(expected)  # empty: worst, -5


def test_a_repeated_reply_loses_the_penalty_times_its_other_copies_over_the_batch():
    replies = [[5, 6], [5, 6], [7], [5, 6]]  # [5, 6] three times, [7] once; B = 4
    assert repeat_penalty(replies, 0.4).tolist() == pytest.approx([0.2, 0.2, 0.0, 0.2])  # 0.4 * 2 / 4
    assert repeat_penalty([[1]] * 8, 1.0).tolist() == pytest.approx([7 / 8] * 8)  # a whole batch: about c
    assert repeat_penalty([[1], [2]], 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_updates_on_the_penalised_reward(algorithm):
    torch.set_num_threads(1)
    config = RLConfig(algorithm=algorithm, batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=3,
                       group_size=1 if algorithm == "ppo" else 2, repeat_penalty=0.4, early_stop_kl=None)
    torch.manual_seed(0)
    trainer = ppo_run.make_trainer(Llama(ModelConfig.preset("tiny", vocab_size=50)), config, [3], 0, "cpu")
    batch = trainer.rollout([[1, 7], [1, 8]] if algorithm != "ppo" else [[1, 7], [1, 8], [1, 9], [1, 7]])
    batch = dataclasses.replace(batch, replies=[[5, 6], [5, 6], [7], [5, 6]])
    stats = trainer.update(batch, torch.tensor([1.0, 0.0, 1.0, 0.5]))
    assert stats["repeat_penalty_mean"] == pytest.approx(0.15)  # (0.2 + 0.2 + 0 + 0.2) / 4
    assert stats["reward_mean"] == pytest.approx(2.5 / 4 - 0.15)


def test_the_generic_replies_are_the_most_frequent_and_their_share_is_counted():
    base = ["no ."] * 3 + ["yes ."] * 2 + ["a  ball ."] + ["", ""]
    assert most_frequent(base, 2) == {"no .", "yes ."}  # an empty reply is never generic
    assert most_frequent(base, 3) == {"no .", "yes .", "a ball ."}  # whitespace normalised
    assert generic_share(["no .", "what ?", " yes . ", "a ball ."], most_frequent(base, 2)) == 0.5
    asked = []

    def sample_reference(prompts, seed):  # the base model answers `no .` to "a", its prompt echoed to the others
        asked.extend(prompts)
        return ["no ." if p == "a" else p for p in prompts]

    generic = generic_replies(sample_reference, ["a", "b"] + [f"p{i}" for i in range(300)], seed=0)
    assert asked[:3] == ["a", "b", "p0"] and len(asked) == GENERIC_SAMPLES == 256  # the first 256 prompts
    assert len(generic) == GENERIC_REPLIES == 20 and {"no .", "b"} <= generic
    asked.clear()
    assert generic_replies(sample_reference, ["a", "b", "c"], seed=0) == {"no .", "b", "c"}
    assert asked[:4] == ["a", "b", "c", "a"] and len(asked) == 256  # fewer prompts: cycled


def test_the_judge_scores_the_same_replies_and_never_changes_the_training_reward():
    seen = []
    train = lambda prompts, replies: [float(len(r)) for r in replies]  # noqa: E731
    judge = lambda prompts, replies: seen.extend(zip(prompts, replies)) or [10.0 * len(r) for r in replies]  # noqa
    watched = WatchedReward(train, judge)
    assert watched(["a", "b"], ["xy", "z"]) == [2.0, 1.0]  # the training reward, unchanged
    assert watched(["c"], ["xyz"]) == [3.0]
    assert seen == [("a", "xy"), ("b", "z"), ("c", "xyz")]
    assert watched.take() == {"reward_raw_mean": 2.0, "judge_mean": 20.0}
    assert math.isnan(watched.take()["judge_mean"])  # took: starts over
    par = ParReward(train, lambda prompts, seed: ["x"] * len(prompts))
    par.draw(["a"], 0)
    watched = WatchedReward(par)
    assert watched(["a"], ["xyz"]) == [pytest.approx(sigmoid(3 - 1))]
    assert watched.take() == {"reward_raw_mean": 3.0}  # PAR's raw reward, not its bounded one; no judge: no column


def test_the_reward_models_halves_are_disjoint_and_recorded(tmp_path, corpus_small_build):
    pairs = read_pairs(corpus_small_build / "pairs" / "dpo_words_nooverlap.jsonl")
    halves = [reward_model.half_of(pairs, h) for h in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and len(halves[0]) + len(halves[1]) == len(pairs)
    assert min(map(len, halves)) > 0.3 * len(pairs)  # a coin flip per pair
    shuffled = list(reversed(pairs))  # the split depends on the pair's text, not its place
    assert set(reward_model.half_of(shuffled, 0)) == set(halves[0])
    assert reward_model.pair_half(Pair("*MOT: a", "*CHI: b", "*CHI: c")) == reward_model.pair_half(
        Pair("*MOT: a", "*CHI: b", "*CHI: c"))
    with pytest.raises(ValueError, match="--half 2: choose 0 or 1"):
        reward_model.RewardModelConfig(half=2)

    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init", Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)),
                    tokenizer, {"stage": "pretrain", "words_seen": 0})
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in pairs[:20]))
    held_out = tmp_path / "held.jsonl"
    held_out.write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in pairs[20:24]))
    inputs = AlignmentInputs(init=str(tmp_path / "init"), pairs_file=str(train_file), eval_pairs_file=[str(held_out)])
    sizes = [len(reward_model.half_of(pairs[:20], h)) for h in (0, 1)]
    for h in (0, 1):
        options = {"preset": "tiny", "half": h, "limit": 0}
        summary = reward_model.train(RunFolder(tmp_path / f"rm{h}"), inputs, options, device="cpu")
        assert summary["train_pairs"] == sizes[h]
        record = json.loads((tmp_path / f"rm{h}" / "config.json").read_text())
        assert record["half"] == {"half": h, "seed": reward_model.HALF_SEED, "sizes": sizes}


def fake_reward_model(path, tokenizer, seed):
    """A reward model directory with a random (not zero) head: scores that differ from reply to reply."""
    torch.manual_seed(seed)
    model = reward_model.RewardModel(Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)))
    torch.nn.init.normal_(model.head.weight)
    save_checkpoint(path, model.lm, tokenizer, {"stage": "reward_model"}, {"reward_head": model.head.state_dict()})
    return path


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algorithm", ["rloo", "ppo", "dapo"])
def test_train_ppo_with_a_judge_an_ensemble_par_and_the_repeat_penalty(algorithm, tmp_path, corpus_small_build,
                                                                       capsys):
    torch.set_num_threads(1)
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    torch.manual_seed(0)
    init = tmp_path / "init"
    save_checkpoint(init, Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                    {"stage": "pretrain", "words_seen": 0})
    rm0, rm1, judge = (fake_reward_model(tmp_path / f"rm{i}", tokenizer, i) for i in range(3))
    out = tmp_path / algorithm
    groups = [] if algorithm == "ppo" else ["--group-size", "2"]
    train_ppo.main(["--init", str(init), "--reward", "preference", "--reward-model", str(rm0), str(rm1),
                    "--ensemble", "min", "--judge", str(judge), "--par", "--repeat-penalty", "0.5",
                    "--data", str(corpus_small_build), "--out", str(out), "--preset", "tiny", "--max-steps", "2",
                    "--algorithm", algorithm, *groups, "--kl-target", "1", "--kl-horizon", "500",
                    "--teacher-dtype", "float32"])  # float32: no dtype to measure
    config = json.loads((out / "config.json").read_text())
    assert config["reward_settings"]["reward_model"] == [str(rm0), str(rm1)]
    assert (config["reward_settings"]["ensemble"], config["reward_settings"]["judge"]) == ("min", str(judge))
    assert config["train"]["par"] and config["train"]["repeat_penalty"] == 0.5
    assert (config["train"]["kl_target"], config["train"]["kl_horizon"]) == (1.0, 500)
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    for column in ("reward_raw_mean", "judge_mean", "generic_share", "repeat_penalty_mean"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert all(0 <= float(r["generic_share"]) <= 1 for r in rows)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(0 < s["reward"] < 1 for s in samples if s["stopped"])  # PAR: bounded (unfinished: the penalty -1)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["judge_mean"]) == {"start", "end"} and "generic_share" in summary
    assert "held-out judge" in capsys.readouterr().out
    table = ppo_report.report([out]).splitlines()
    assert "training reward (raw) | held-out judge | generic share" in table[0]
    judged = f"{summary['judge_mean']['start']:.3f} → {summary['judge_mean']['end']:.3f}"
    assert table[2].startswith(f"| {algorithm} | 2 |") and judged in table[2]
    with pytest.raises(SystemExit, match=f"the run's judge is {judge}, not --judge {rm0}"):
        train_ppo.main(["--out", str(out), "--resume", "--judge", str(rm0)])


def test_the_judge_logged_is_the_mean_of_its_scores_of_each_steps_replies(tmp_path, corpus_small_build,
                                                                          monkeypatch):
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    torch.manual_seed(0)
    init = tmp_path / "init"
    save_checkpoint(init, Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                    {"stage": "pretrain", "words_seen": 0})
    calls = []

    def fake_judge(prompts, replies):  # known scores: the reply's length in characters
        calls.append([float(len(r)) for r in replies])
        return calls[-1]

    monkeypatch.setattr(ppo_run, "make_reward", lambda name, **settings: fake_judge)
    given = ppo_run.RLInputs(init=str(init), reward="short", prompts=str(corpus_small_build / "prompts.txt"),
                             reward_settings={"judge": "a judge directory", "teacher_dtype": "float32"})
    trained = []
    reward = lambda prompts, replies: trained.append(list(replies)) or [1.0] * len(replies)  # noqa: E731
    train_on(reward, RunFolder(tmp_path / "ppo"), given, {"preset": "tiny", "max_steps": 2})
    rows = read_log(tmp_path / "ppo" / "log.csv")
    steps = calls[1:3]  # calls[0]: the fixed prompts before training, [3]: after
    assert [float(r["judge_mean"]) for r in rows] == pytest.approx([sum(s) / len(s) for s in steps])
    assert [[float(len(r)) for r in replies] for replies in trained[1:3]] == steps  # the same replies
    assert [float(r["reward_raw_mean"]) for r in rows] == [1.0, 1.0]
    # the judge never reaches the policy: without it the run trains exactly the same
    given = dataclasses.replace(given, reward_settings={"teacher_dtype": "float32"})
    train_on(reward, RunFolder(tmp_path / "alone"), given, {"preset": "tiny", "max_steps": 2})
    alone = read_log(tmp_path / "alone" / "log.csv")
    assert "judge_mean" not in alone[0]
    for column in ("reward_mean", "kl", "policy_loss", "generic_share"):
        assert [r[column] for r in alone] == [r[column] for r in rows], column


def test_a_judge_that_is_a_training_reward_model_or_saw_its_half_is_refused(tmp_path, corpus_small_build):
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    halves = {}
    for name, half in (("a", 0), ("b", 1), ("c", 0)):
        path = fake_reward_model(tmp_path / name, tokenizer, 0)
        record = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**record, "half": {"half": half, "seed": 0}}))
        halves[name] = str(path)
    check_held_out(halves["b"], [halves["a"], halves["c"]])  # half 1 judges half 0: held out
    with pytest.raises(ValueError, match="is also a --reward-model"):
        check_held_out(halves["a"], halves["a"])
    with pytest.raises(ValueError, match="both trained on half 0"):
        check_held_out(halves["c"], [halves["b"], halves["a"]])
