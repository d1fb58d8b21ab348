"""The Bradley-Terry reward model: its loss by hand, a real (tiny) training on the embedded sample's pairs, and
train_reward_model.py's refusals. (Its scores, batched = alone in the input order: tests/test_dpo.py.)"""

import json
import math

import pytest
import torch

import train_reward_model
from llamalogue.alignment import reward_model
from llamalogue.alignment.pairs import AlignmentInputs
from llamalogue.checkpoint import save_checkpoint
from llamalogue.corpus.dialogue_files import read_pairs
from llamalogue.model import Llama, ModelConfig
from llamalogue.rl.rewards import make_reward
from llamalogue.run_dir import RunError
from llamalogue.run_shell import RunFolder
from llamalogue.tokenizer import Tokenizer


def test_bradley_terry_loss_and_accuracy_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    losses, right = reward_model.bradley_terry_loss(chosen, rejected)
    # -log sigma(d) = log(1 + e^-d): d = 2, 0, -2
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-2)), math.log(2), math.log1p(math.exp(2))])
    assert right.tolist() == [1.0, 0.0, 0.0]  # a tie is not a right answer


@pytest.fixture
def init_dir(tmp_path, corpus_small_build):
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    torch.manual_seed(0)
    path = tmp_path / "init"
    save_checkpoint(path, Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                    {"stage": "pretrain"})
    return path


def test_a_reward_model_learns_a_toy_preference_and_serves_as_a_ppo_reward(tmp_path, init_dir, corpus_small_build):
    # a toy preference the model can learn in a few steps: the chosen reply is always `yes .`
    real = read_pairs(corpus_small_build / "pairs" / "dpo_words_nooverlap.jsonl")[:24]
    toy = [type(p)(p.prompt, "*CHI: yes .", p.rejected) for p in real]
    train_file, held_out_file = tmp_path / "train.jsonl", tmp_path / "toy.jsonl"
    for path, pairs in ((train_file, toy[:16]), (held_out_file, toy[16:])):
        path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                                for p in pairs))
    inputs = AlignmentInputs(init=str(init_dir), pairs_file=str(train_file), eval_pairs_file=[str(held_out_file)])
    options = {"preset": "tiny", "lr": 3e-3, "epochs": 4}
    out = tmp_path / "rm"
    summary = reward_model.train(RunFolder(out), inputs, options, device="cpu")
    assert summary["train_pairs"] == 16 and summary["steps"] == 16
    assert summary["held_out_accuracy"]["toy"] == 1.0
    assert json.loads((out / "reward_model.json").read_text()) == summary
    assert (out / "loss.png").stat().st_size > 1000
    # untrained (zero head), every reply scores 0: accuracy 0, all ties
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    untrained = reward_model.RewardModel(Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)))
    assert untrained.score(tokenizer, ["what is that ?", "where ?"], ["a ball .", "no ."]) == [0.0, 0.0]

    preference = make_reward("preference", reward_model=out, device="cpu")
    prompt = real[20].prompt.split(": ", 1)[1]
    yes, other, empty = preference([prompt] * 3, ["yes .", real[20].rejected.split(": ", 1)[1], ""])
    assert yes > other and empty == preference.worst
    with pytest.raises(RunError, match="already holds a checkpoint"):
        reward_model.train(RunFolder(out), inputs, options, device="cpu")


def test_the_cli_refuses_a_directory_that_is_not_a_reward_model(tmp_path, init_dir, capsys):
    with pytest.raises(FileNotFoundError, match="not a reward model .*python train_reward_model.py"):
        make_reward("preference", reward_model=init_dir)  # a language-model run, not a reward model
    with pytest.raises(SystemExit, match="--init .*nope: not a llamalogue run directory"):
        train_reward_model.main(["--init", str(tmp_path / "nope"), "--out", str(tmp_path / "rm")])
    with pytest.raises(SystemExit, match="--epochs 0: must be at least 1"):
        train_reward_model.main(["--init", str(init_dir), "--epochs", "0", "--out", str(tmp_path / "rm")])
    assert not (tmp_path / "rm").exists()
    with pytest.raises(SystemExit) as exit_:
        train_reward_model.main(["--help"])
    assert exit_.value.code == 0 and "--pairs-file" in capsys.readouterr().out
