"""DPO: the loss against hand-computed values, the prompt mask, the shared reply scoring (batched = alone, in input
order), what a few steps do to a tiny model, held-out pairs kept out of training, and train_dpo.py end to end (a
loadable run dir, logs, plots, an exact resume with the run's own inputs, refusals that cost no teacher time).

Tokenizer and pairs are real: the corpus stage's small build of the embedded CHILDES sample (conftest.py)."""

import csv
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import llamalogue.alignment.dpo as dpo
import train_dpo
from conftest import sequence_logprobs
from llamalogue.checkpoint import load_model, load_state, save_checkpoint
from llamalogue.corpus.dialogue_files import Pair, read_pairs
from llamalogue.alignment import pairs as preference_pairs
from llamalogue.alignment.dpo import preference_loss, reference_logprobs
from llamalogue.alignment.pairs import AlignmentInputs, drop_overlap, load_pairs
from llamalogue.alignment.reply_scoring import (encode_reply, encode_reply_as_trl, length_batches, pair_scores,
                                                pairs_that_fit, score_replies)
from llamalogue.alignment.reward_model import RewardModel
from llamalogue.model import Llama, ModelConfig
from llamalogue.run_dir import RunError
from llamalogue.run_shell import RunFolder
from llamalogue.tokenizer import Tokenizer

SHARED = Path(os.environ.get("LLAMALOGUE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAPER_DPO = SHARED / "data" / "paper" / "dpo"


@pytest.fixture(scope="module")
def tokenizer(corpus_small_build):
    return Tokenizer(corpus_small_build / "tokenizer.model")


@pytest.fixture(scope="module")
def pairs(corpus_small_build):
    return read_pairs(corpus_small_build / "pairs" / "dpo_words_nooverlap.jsonl")


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).eval()


@pytest.fixture
def init_dir(tmp_path, tokenizer):
    path = tmp_path / "init"
    save_checkpoint(path, tiny_model(tokenizer), tokenizer, {"stage": "pretrain", "scale": "random tiny"})
    return path


def test_preference_loss_matches_hand_computed_values():
    # The policy gained 1 nat on the chosen reply and lost 1 on the rejected one: h = 2, beta * h = 0.2.
    logps = [torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])]
    losses, reward_chosen, reward_rejected = preference_loss(*logps, beta=0.1)
    assert losses.item() == pytest.approx(0.5981388693815918)  # log(1 + e^-0.2)
    assert reward_chosen.item() == pytest.approx(0.1) and reward_rejected.item() == pytest.approx(-0.1)
    cdpo = preference_loss(*logps, beta=0.1, loss="cdpo", label_smoothing=0.1)[0]
    assert cdpo.item() == pytest.approx(0.9 * 0.5981388693815918 + 0.1 * 0.7981388693815918)  # log(1 + e^0.2)
    ipo = preference_loss(*logps, beta=0.1, loss="ipo")[0]
    assert ipo.item() == pytest.approx(9.0)  # (2 - 1 / (2 * 0.1))^2
    with pytest.raises(ValueError, match="unknown DPO loss"):
        preference_loss(*logps, beta=0.1, loss="hinge")


def test_simpo_loss_matches_a_hand_computation():
    # log pi(y_w|x) = -6 over 3 tokens (average -2), log pi(y_l|x) = -12 over 4 tokens (average -3): with beta 2 the
    # rewards are -4 and -6, the margin 2, and with gamma 0.5 the loss is -log sigma(1.5) = log(1 + e^-1.5)
    losses, reward_chosen, reward_rejected = dpo.simpo_loss(torch.tensor([-6.0]), torch.tensor([-12.0]),
                                                            torch.tensor([3.0]), torch.tensor([4.0]), 2.0, 0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.5)))
    assert (reward_chosen.item(), reward_rejected.item()) == pytest.approx((-4.0, -6.0))


def test_the_words_a_dpo_run_trains_on_count_each_pair_each_time_it_is_seen():
    words = [1, 2, 3, 4, 5]  # five pairs, two per step: three steps an epoch
    assert dpo.words_trained(0, words, 2, seed=0) == 0
    assert dpo.words_trained(3, words, 2, seed=0) == 15  # one whole epoch
    second = dpo.epoch_order(5, 0, 1)[:2].tolist()
    assert dpo.words_trained(4, words, 2, seed=0) == 15 + words[second[0]] + words[second[1]]


def test_the_papers_layout_tokenizes_prompt_and_reply_apart_and_scores_the_tag_and_eos(tokenizer):
    ids, start = encode_reply_as_trl(tokenizer, "*MOT: what is that ?", "*CHI: it looks like a gun .")
    assert ids[:start] == tokenizer.encode("*MOT: what is that ?")  # no BOS
    assert ids[start:] == tokenizer.encode("*CHI: it looks like a gun .") + [tokenizer.eos_id]
    config = dpo.DPOConfig.from_preset("paper")
    assert config.pairs_per_step == 32 and config.pair_layout == "paper"
    with pytest.raises(ValueError, match="--pair-layout 'trl'"):
        dpo.DPOConfig.from_preset("small", pair_layout="trl")


def test_only_the_reply_and_its_newline_are_scored(tokenizer):
    ids, start = encode_reply(tokenizer, "*MOT: what is that ?", "*CHI: it looks like a gun .")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.newline_id
    assert tokenizer.decode(ids[:start]) == "*MOT: what is that ?\n*CHI:"
    assert tokenizer.decode(ids[start:]) == " it looks like a gun .\n"
    assert ids[1:-1] == tokenizer.encode("*MOT: what is that ?\n*CHI: it looks like a gun .")  # as in pretraining
    with pytest.raises(ValueError, match="speaker tag"):
        encode_reply(tokenizer, "*MOT: what is that ?", "it looks like a gun .")


def test_batched_reply_logprobs_sum_exactly_the_reply_positions(tokenizer, pairs):
    model = tiny_model(tokenizer)
    data, _ = pairs_that_fit(tokenizer, pairs[:6], model.config.max_seq_len)
    rows = {(p.prompt, reply): encode_reply(tokenizer, p.prompt, reply)
            for p in data for reply in (p.chosen, p.rejected)}
    assert len({len(ids) for ids, _ in rows.values()}) > 1  # padding is exercised
    with torch.no_grad():
        chosen, rejected = pair_scores(model, tokenizer, data)
        for row, pair in enumerate(data):
            for reply, batched in ((pair.chosen, chosen), (pair.rejected, rejected)):
                ids, start = rows[pair.prompt, reply]
                alone = sequence_logprobs(model, torch.tensor([ids]))[0]  # column t scores token t + 1
                assert batched[row].item() == pytest.approx(alone[start - 1 :].sum().item(), abs=1e-4)
                assert abs(batched[row].item() - alone.sum().item()) > 1e-3  # the prompt's tokens were left out


@pytest.mark.parametrize("scorer", ["log-probs", "reward model"])
def test_scoring_in_length_batches_gives_each_row_its_own_score_in_the_input_order(tokenizer, pairs, scorer):
    torch.manual_seed(0)
    model, score = tiny_model(tokenizer), None
    if scorer == "reward model":  # the head reads each row's last real token, wherever the padding starts
        model, score = RewardModel(model).eval(), RewardModel.__call__
        torch.nn.init.normal_(model.head.weight)
    exchanges = [(p.prompt, reply) for p in pairs[:7] for reply in (p.chosen, p.rejected)]
    lengths = [len(encode_reply(tokenizer, *exchange)[0]) for exchange in exchanges]
    batches = length_batches(lengths, 3)
    assert sum(batches, []) != list(range(len(exchanges)))  # the batches reorder the rows...
    assert any(len({lengths[i] for i in batch}) > 1 for batch in batches)  # ...and pad some
    kwargs = {"score": score} if score else {}
    batched = score_replies(model, tokenizer, exchanges, 3, **kwargs)
    alone = [score_replies(model, tokenizer, [exchange], 1, **kwargs).item() for exchange in exchanges]
    assert batched.tolist() == pytest.approx(alone, abs=1e-4)
    assert len(set(alone)) > len(alone) // 2  # the scores tell the rows apart: a mix-up would show
    assert score_replies(model, tokenizer, [], 3, **kwargs).tolist() == []


def test_at_the_start_the_loss_is_log2_and_its_gradient_symmetric(tokenizer, pairs):
    model = tiny_model(tokenizer)
    data, _ = pairs_that_fit(tokenizer, pairs[:8], model.config.max_seq_len)
    reference = reference_logprobs(model, tokenizer, data, batch_size=3)  # batched unlike the policy pass
    chosen, rejected = pair_scores(model, tokenizer, data)
    chosen.retain_grad()
    rejected.retain_grad()
    losses, reward_chosen, reward_rejected = preference_loss(chosen, rejected, reference[:, 0], reference[:, 1], 0.1)
    losses.mean().backward()
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-5)
    assert reward_chosen.abs().max() < 1e-5 and reward_rejected.abs().max() < 1e-5
    # dL/dlog π(y_w) = -β σ(0) / B and dL/dlog π(y_l) = +β σ(0) / B: equal pull up and push down.
    n = len(data)
    assert torch.allclose(chosen.grad, torch.full((n,), -0.05 / n), atol=1e-6)
    assert torch.allclose(rejected.grad, torch.full((n,), 0.05 / n), atol=1e-6)


def test_a_few_dpo_steps_raise_chosen_and_lower_rejected(tokenizer, pairs):
    model = tiny_model(tokenizer)
    data, _ = pairs_that_fit(tokenizer, pairs[:8], model.config.max_seq_len)
    reference = reference_logprobs(model, tokenizer, data, batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(8):
        chosen, rejected = pair_scores(model, tokenizer, data)
        losses, _, _ = preference_loss(chosen, rejected, reference[:, 0], reference[:, 1], beta=0.1)
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        chosen, rejected = pair_scores(model, tokenizer, data)
        losses, reward_chosen, reward_rejected = preference_loss(chosen, rejected, reference[:, 0], reference[:, 1],
                                                                 beta=0.1)
    assert (chosen - reference[:, 0]).mean() > 0  # appropriate replies became more likely
    assert (rejected - reference[:, 1]).mean() < 0  # random ones less likely
    assert losses.mean() < math.log(2)
    assert (reward_chosen > reward_rejected).float().mean() >= 0.75


def test_training_pairs_sharing_an_exchange_with_held_out_pairs_are_dropped():
    held_out = [Pair("*MOT: what is it ?", "*CHI: a ball .", "*CHI: no .")]
    train = [
        Pair("*MOT: what is it ?", "*CHI: a  ball .", "*CHI: yes ."),  # same appropriate reply (extra space)
        Pair("*MOT: what is it ?", "*CHI: a dog .", "*CHI: a ball ."),  # trained away from the held-out reply
        Pair("*MOT: what is it ?", "*CHI: a dog .", "*CHI: yes ."),  # same prompt, other replies: kept
        Pair("*MOT: where is it ?", "*CHI: a ball .", "*CHI: no ."),  # other prompt: kept
    ]
    kept, dropped = drop_overlap(train, held_out)
    assert kept == train[2:] and dropped == train[:2]


@pytest.mark.skipif(not PAPER_DPO.is_dir(), reason=f"the paper's DPO files are not in {PAPER_DPO}")
def test_the_papers_train_and_eval_files_overlap_and_load_pairs_drops_it(capsys):
    # the in-loop check scores 64 held-out pairs...
    train, held_out, notes = load_pairs(AlignmentInputs(pairs="natural", pairs_file=PAPER_DPO /
                                                        "huggingface_dpo_format.json"), limit=0, eval_limit=64)
    evaluation = read_pairs(PAPER_DPO / "huggingface_dpo_format_eval.json")  # ...training is disjoint from all
    assert list(held_out) == ["huggingface_dpo_format_eval"] and len(held_out["huggingface_dpo_format_eval"]) == 64
    assert set(held_out["huggingface_dpo_format_eval"]) <= set(evaluation)
    original = read_pairs(PAPER_DPO / "huggingface_dpo_format.json")
    leaked = {(p.prompt, p.chosen) for p in evaluation} & {(p.prompt, p.chosen) for p in original}
    assert leaked  # the README counts 38 such (prompt, appropriate reply) pairs
    assert not {(p.prompt, p.chosen) for p in train} & leaked
    exchanges = preference_pairs.exchanges
    assert not set().union(*map(exchanges, train)) & set().union(*map(exchanges, evaluation))
    assert f"dropped {len(original) - len(train):,} training pairs" in " ".join(notes)


@pytest.mark.skipif(not PAPER_DPO.is_dir(), reason=f"the paper's DPO files are not in {PAPER_DPO}")
def test_the_papers_synthetic_replies_are_written_as_transcripts_unless_raw_is_asked():
    raw = read_pairs(PAPER_DPO / "synthetic_dpo_format.json")
    assert raw[1].chosen == "*CHI: i can do it!"
    synthetic = AlignmentInputs(pairs="synthetic", pairs_file=PAPER_DPO / "synthetic_dpo_format.json")
    train, _, notes = load_pairs(synthetic, eval_limit=1)
    chosen = {pair.chosen for pair in train}
    assert {"*CHI: I can do it !", "*CHI: it is a ball ."} <= chosen  # the file's rows 1 and 0
    # the transcripts' orthography: an utterance ends in a terminator of its own, "I" is capitalised
    assert all(reply.rsplit(" ", 1)[-1] in {".", "?", "!"} for reply in chosen)
    assert not any(" i " in f"{reply} " for reply in chosen)
    assert "rewritten" in " ".join(notes)
    as_written, _, notes = load_pairs(synthetic, eval_limit=1, raw_synthetic=True)
    assert {pair.chosen for pair in as_written} <= {pair.chosen for pair in raw}
    assert "rewritten" not in " ".join(notes)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_dpo_writes_a_loadable_run_with_logs_and_plots(tmp_path, init_dir, corpus_small_build):
    out = tmp_path / "dpo"
    train_dpo.main(["--init", str(init_dir), "--pairs", "natural", "--data", str(corpus_small_build), "--out", str(out),
                    "--preset", "tiny", "--max-steps", "3", "--loss", "cdpo", "--beta", "0.2", "--eval-limit", "20"])
    rows = read_log(out / "log.csv")
    for column in ("step", "loss", "reward_chosen", "reward_rejected", "margin", "accuracy",
                   "dialogue_mp_eval_words_nooverlap", "dialogue_mp_eval_tokens_nooverlap"):
        assert column in rows[0]
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2", "3"]
    held_out = [r for r in rows if r["dialogue_mp_eval_words_nooverlap"]]
    assert [r["step"] for r in held_out] == ["0", "3"]  # the init model's score, and the final one
    assert all(0 <= float(r["dialogue_mp_eval_words_nooverlap"]) <= 1 for r in held_out)
    for png in ("rewards.png", "loss.png", "accuracy.png"):
        assert (out / png).stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "dpo" and config["train"]["loss"] == "cdpo" and config["train"]["beta"] == 0.2
    assert "preset tiny" in config["scale"]
    model, tokenizer = load_model(out)  # what evaluate.py does
    initial, _ = load_model(init_dir)
    assert any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), initial.parameters()))
    assert load_state(out)["reference"].shape[1] == 2


@pytest.mark.parametrize("options", [["--loss", "simpo", "--beta", "2.0", "--gamma", "1.0"],
                                     ["--pair-layout", "paper"]])
def test_simpo_and_the_papers_layout_train_and_record_their_settings(tmp_path, init_dir, corpus_small_build, options):
    out = tmp_path / "dpo"
    train_dpo.main(["--init", str(init_dir), "--data", str(corpus_small_build), "--out", str(out), "--preset", "tiny",
                    "--max-steps", "2", "--eval-limit", "8", *options])
    rows = [r for r in read_log(out / "log.csv") if r["loss"]]
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    train = json.loads((out / "config.json").read_text())["train"]
    if "simpo" in options:  # reference-free: no reference log-probs were computed, and the first loss is not log 2
        assert (train["loss"], train["beta"], train["gamma"]) == ("simpo", 2.0, 1.0)
        assert not load_state(out)["reference"].any() and abs(float(rows[0]["loss"]) - math.log(2)) > 1e-3
    else:  # at step 0 the policy is the reference, whatever the layout: the first loss is log 2
        assert train["pair_layout"] == "paper" and float(rows[0]["loss"]) == pytest.approx(math.log(2), abs=1e-4)


def write_pairs(path: Path, pairs: list[Pair]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs))
    return path


def test_a_crashed_or_interrupted_run_resumes_exactly_with_its_own_inputs(tmp_path, init_dir, pairs, monkeypatch):
    # 4 steps of 8 pairs: one epoch; no held-out pairs beside the file, so no dialogue-MP check
    pairs_file = write_pairs(tmp_path / "train.jsonl", pairs[:32])
    inputs = AlignmentInputs(init=str(init_dir), pairs_file=str(pairs_file))
    options = {"preset": "tiny", "checkpoint_every": 2}
    dpo.train(RunFolder(tmp_path / "whole"), inputs, options, device="cpu")
    whole, _ = load_model(tmp_path / "whole")
    whole_log = read_log(tmp_path / "whole" / "log.csv")
    real_learning_rate = dpo.learning_rate

    def crash_at(crash_step, how):
        def learning_rate(step, *args, **kwargs):
            if step == crash_step:
                how()
            return real_learning_rate(step, *args, **kwargs)
        monkeypatch.setattr(dpo, "learning_rate", learning_rate)

    def assert_same_as_whole(run):
        resumed, _ = load_model(run)
        assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
        resumed_log = read_log(run / "log.csv")
        assert [r["step"] for r in resumed_log] == ["1", "2", "3", "4"]  # no step logged twice
        assert [r["loss"] for r in resumed_log] == [r["loss"] for r in whole_log]

    def kill():
        raise KeyboardInterrupt  # a hard stop after the step-2 checkpoint and the step-3 log row

    crash_at(3, kill)
    with pytest.raises(KeyboardInterrupt):
        dpo.train(RunFolder(tmp_path / "crashed"), inputs, options, device="cpu")
    assert load_state(tmp_path / "crashed")["step"] == 2
    monkeypatch.setattr(dpo, "learning_rate", real_learning_rate)
    dpo.train(RunFolder(tmp_path / "crashed", resume=True), AlignmentInputs(), {}, "cpu")  # the recorded inputs
    assert_same_as_whole(tmp_path / "crashed")

    crash_at(0, lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C during step 1: it finishes, saves, stops
    summary = dpo.train(RunFolder(tmp_path / "stopped"), inputs, options, device="cpu")
    assert summary["interrupted"] and load_state(tmp_path / "stopped")["step"] == 1
    monkeypatch.setattr(dpo, "learning_rate", real_learning_rate)
    dpo.train(RunFolder(tmp_path / "stopped", resume=True), inputs, {"preset": "tiny"}, "cpu")  # the same, given again
    assert_same_as_whole(tmp_path / "stopped")

    other_file = write_pairs(tmp_path / "other.jsonl", pairs[16:48])
    with pytest.raises(RunError, match="made from pairs_file .*train.jsonl, not .*other.jsonl"):
        dpo.train(RunFolder(tmp_path / "stopped", resume=True), AlignmentInputs(pairs_file=str(other_file)), {})
    write_pairs(pairs_file, pairs[16:48])  # the run's own file, changed since
    with pytest.raises(RunError, match="differ"):  # other pairs would not match the cached reference log-probs
        dpo.train(RunFolder(tmp_path / "stopped", resume=True), inputs, {}, device="cpu")
    with pytest.raises(RunError, match="other settings"):
        dpo.train(RunFolder(tmp_path / "stopped", resume=True), inputs, {"beta": 0.5})
    with pytest.raises(RunError, match="other settings"):
        dpo.train(RunFolder(tmp_path / "stopped", resume=True), inputs, {"preset": "small"})
    with pytest.raises(RunError, match="already holds a checkpoint"):  # never overwritten by accident
        dpo.train(RunFolder(tmp_path / "stopped"), inputs, options, device="cpu")


def test_a_run_made_before_inputs_were_recorded_resumes_with_the_inputs_given(tmp_path, init_dir, corpus_small_build):
    out = tmp_path / "dpo"
    flags = ["--pairs", "natural", "--data", str(corpus_small_build), "--out", str(out), "--eval-limit", "4"]
    train_dpo.main(["--init", str(init_dir), "--preset", "tiny", "--max-steps", "2", *flags])
    record = json.loads((out / "config.json").read_text())
    del record["inputs"]  # the record of an earlier version
    (out / "config.json").write_text(json.dumps(record))
    train_dpo.main(["--resume", "--max-steps", "3", *flags])
    assert load_state(out)["step"] == 3
    assert json.loads((out / "config.json").read_text())["inputs"]["data"] == str(corpus_small_build.resolve())


def test_bad_input_stops_with_a_one_line_error(tmp_path, init_dir, corpus_small_build, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "*MOT: what is it ?", "chosen": "*CHI: a ball .", "rejected": "no ."}) + "\n")
    base = ["--init", str(init_dir), "--preset", "tiny", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"pairs.jsonl: no usable pairs .*pairs.jsonl:1: rejected reply 'no \.' "
                                         r"does not start with a speaker tag"):
        train_dpo.main(base + ["--pairs-file", str(bad)])
    with pytest.raises(SystemExit, match="holds no checkpoint to resume"):
        train_dpo.main(base + ["--pairs-file", str(bad), "--resume"])
    with pytest.raises(SystemExit, match="missing.jsonl: no such pairs file"):
        train_dpo.main(base + ["--pairs-file", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="--beta -1.0: must be positive"):
        train_dpo.main(base + ["--data", str(corpus_small_build), "--beta", "-1"])


def test_a_refused_synthetic_run_spends_no_teacher_time_and_writes_no_cache(tmp_path, init_dir, corpus_small_build,
                                                                            monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded for a run that is refused")

    monkeypatch.setattr(preference_pairs, "default_teacher", no_teacher)
    monkeypatch.setattr(preference_pairs, "Teacher", no_teacher)
    out = tmp_path / "dpo"
    base = ["--init", str(init_dir), "--pairs", "synthetic", "--data", str(corpus_small_build), "--out", str(out),
            "--preset", "tiny"]
    for flags, message in ((["--beta", "-1"], "--beta -1.0: must be positive"),
                           (["--resume"], "holds no checkpoint to resume"),
                           (["--init", str(tmp_path / "nope")], "nope: not a llamalogue run directory")):
        with pytest.raises(SystemExit, match=message):
            train_dpo.main(base + flags)
        assert not out.exists()
    shutil.copytree(init_dir, out)  # a run already there
    with pytest.raises(SystemExit, match="already holds a checkpoint"):
        train_dpo.main(base)
    assert not (out / "teacher.jsonl").exists()


def test_synthetic_pairs_take_the_teachers_reply_as_chosen_and_cache_it(tmp_path, pairs):
    from llamalogue.teacher.llm import default_teacher  # SmolLM2-135M, loaded once per test session

    natural = pairs[:2]
    cache = tmp_path / "teacher.jsonl"
    synthetic, empty = preference_pairs.with_teacher_replies(natural, default_teacher(), cache, seed=0)
    assert empty == 0 and len(synthetic) == 2
    for pair, original in zip(synthetic, natural):
        assert pair.prompt == original.prompt and pair.rejected == original.rejected  # the random child reply
        assert pair.chosen.startswith("*CHI: ") and len(pair.chosen) > len("*CHI: ")
    assert len(cache.read_text().splitlines()) == 2
    # from the cache, nothing new
    again, _ = preference_pairs.with_teacher_replies(natural, default_teacher(), cache, seed=0)
    assert again == synthetic and len(cache.read_text().splitlines()) == 2
