"""The interaction stage (llamalogue/interaction/): the SimPO + lambda LM loss by hand, the correction's cut and checks,
resume to the same weights, Ctrl-C, the word budget, the command line."""

import csv
import dataclasses
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from llamalogue.alignment.reply_scoring import encode_reply
from llamalogue.checkpoint import load_model, load_state, save_checkpoint
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.interaction import __main__ as cli
from llamalogue.interaction import training
from llamalogue.interaction.config import InteractionConfig
from llamalogue.interaction.corrections import (CORRECTIONS, correct, cut_to_length, dropped_counts, read_corrections,
                                                reply_length)
from llamalogue.interaction.training import InteractionInputs, interaction_loss
from llamalogue.pipeline import interaction_complete
from llamalogue.run_shell import RunFolder
from llamalogue.word_budget import count_words
from scripts import ppo_report

GOOD = ["I want the red ball now please .", "we can go outside and play .", "my teddy is sleeping in the bed .",
        "no I don't like it ."]


class FakeTeacher:
    """The Teacher's two methods that corrections use. draws(prompt, reply, draw) -> raw text; a prompt's context is
    its chat's user turn. interrupt_at: the call of sample() that sends this process a Ctrl-C (SIGINT)."""

    def __init__(self, draws=None, interrupt_at=None):
        self.draws = draws or (lambda prompt, reply, draw: GOOD[len(prompt) % len(GOOD)])
        self.calls, self.seen, self.interrupt_at = 0, {}, interrupt_at

    def context_ids(self, messages):
        return messages[-1]["content"]

    def sample(self, contexts, seed):
        self.calls += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        texts = []
        for context in contexts:
            self.seen[context] = self.seen.get(context, 0) + 1
            prompt, reply = context.split("\n")[0][len("Caregiver: "):], context.split("\n")[1][len("Child: "):]
            texts.append(self.draws(prompt, reply, self.seen[context]))
        return texts, [True] * len(texts)


@pytest.fixture(scope="module")
def init_run(tiny_runs, tmp_path_factory):
    """A tiny student that records the words it has seen (1,000), as a pretrained run does."""
    model, tokenizer = load_model(tiny_runs[0])
    run = tmp_path_factory.mktemp("init")
    save_checkpoint(run, model, tokenizer, {"stage": "pretraining", "scale": "tiny", "words_seen": 1000})
    return run


@pytest.fixture(scope="module")
def prompts(corpus_small_build):
    return str(corpus_small_build / "prompts.txt")


def run_options(**changes):
    return {"preset": "tiny", "rounds": 2, "contexts_per_round": 5, **changes}


def train(teacher, folder: RunFolder, inputs: InteractionInputs, options: dict) -> dict:
    """An interaction run on the CPU whose corrections `teacher` (a FakeTeacher) makes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "load_teacher", lambda *args: teacher)
        return training.train(folder, inputs, options, "cpu")


@pytest.fixture(scope="module")
def straight(init_run, prompts, tmp_path_factory):
    """A tiny run of 2 rounds, never stopped."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("straight") / "run"
    summary = train(FakeTeacher(), RunFolder(out), InteractionInputs(str(init_run), prompts), run_options())
    return out, summary


def read_csv_rows(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(run):
    return load_state(run)["model"]


def same_weights(a, b) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_simpo_plus_lm_loss_by_hand(tiny_runs):
    torch.manual_seed(0)
    model, tokenizer = load_model(tiny_runs[0])
    pairs = [Pair("*MOT: what is that ?", "*CHI: a big ball .", "*CHI: ball the the"),
             Pair("*MOT: do you want some milk ?", "*CHI: yes please .", "*CHI: no"),
             Pair("*MOT: where is the dog ?", "*CHI: it is in the garden .", "*CHI: dog garden is")]
    config = InteractionConfig.from_preset("tiny", beta=2.0, gamma_ratio=0.5, lm_weight=0.2)
    loss, sums = interaction_loss(model, tokenizer, pairs, config, simpo=True)

    def token_logprobs(ids):  # log p(ids[t] | ids[:t]) for t >= 1, one row alone: no padding
        logits = model(torch.tensor([ids]))[0, :-1]
        return F.log_softmax(logits.double(), -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)

    simpo_terms, lm_sum, lm_tokens, margins = [], 0.0, 0, []
    for pair in pairs:
        rewards = []
        for reply in (pair.chosen, pair.rejected):
            ids, start = encode_reply(tokenizer, pair.prompt, reply)
            reply_logprobs = token_logprobs(ids)[start - 1 :]  # the reply's tokens and its newline
            rewards.append(2.0 * reply_logprobs.sum().item() / len(reply_logprobs))  # beta/|y| log pi(y|x)
        ids, _ = encode_reply(tokenizer, pair.prompt, pair.chosen)
        lm_sum -= token_logprobs(ids).sum().item()  # every token after BOS: context + correction + newline
        lm_tokens += len(ids) - 1
        margin = rewards[0] - rewards[1]
        margins.append(margin)
        simpo_terms.append(-math.log(1 / (1 + math.exp(-(margin - 1.0)))))  # gamma = 2 x 0.5
    by_hand = sum(simpo_terms) / len(pairs) + 0.2 * lm_sum / lm_tokens
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert sums["margin"] == pytest.approx(sum(margins), abs=1e-5)  # float32 against float64
    assert sums["simpo_lm_nll"] / sums["simpo_lm_tokens"] == pytest.approx(lm_sum / lm_tokens, rel=1e-5)
    lm_only, _ = interaction_loss(model, tokenizer, pairs, config, simpo=False)
    assert lm_only.item() == pytest.approx(lm_sum / lm_tokens, rel=1e-5) and lm_only.item() != loss.item()
    loss.backward()  # a loss to learn from
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_correction_is_cut_to_the_students_length_in_tokens(tiny_runs):
    _, tokenizer = load_model(tiny_runs[0])
    long = "I want to play with the big red ball in the garden with my daddy ."
    items = [{"index": 0, "prompt": "what do you want to do ?", "reply": "ball ."},
             {"index": 1, "prompt": "shall we read a book ?", "reply": "the book the book of the dog ."}]
    records = correct(FakeTeacher(lambda prompt, reply, draw: long), tokenizer, items, 0, seed=0, tries=2,
                      batch_size=4)
    for item, record in zip(items, records):
        student = reply_length(tokenizer, item["reply"])
        assert reply_length(tokenizer, record["correction"]) <= student < reply_length(tokenizer, long)
        assert record["correction"] == cut_to_length(tokenizer, long, student)
        assert long.startswith(record["correction"].rstrip())  # its first tokens, nothing else
    assert reply_length(tokenizer, records[0]["correction"]) < reply_length(tokenizer, records[1]["correction"])
    whole = correct(FakeTeacher(lambda prompt, reply, draw: long), tokenizer, items, 0, seed=0, tries=2, batch_size=4,
                    cut="none")
    assert [record["correction"] for record in whole] == [long, long]  # --cut none: the teacher's reply as it is


def test_bad_teacher_output_is_drawn_again_then_dropped_and_counted(tiny_runs):
    _, tokenizer = load_model(tiny_runs[0])
    draws = {"is that your teddy bear ?": ["", "*MOT: is that your teddy ?", "yes he is my teddy ."],  # then good
             "look at the big red bus .": ["look at the big red bus ."] * 4,  # an echo, always
             "what does the cow say ?": ["the cow says *MOT: yes"] * 4,  # a transcript, always
             "is it raining ?": ["Child: yes it is raining ."] * 4,  # the teacher labels its reply: kept
             "where did you put it ?": ["in the box ."] * 4,
             "shall we have a bath ?": ["Now give the corrected reply to the child."] * 4}  # the instruction, echoed
    teacher = FakeTeacher(lambda prompt, reply, draw: draws[prompt][draw - 1])
    items = [{"index": i, "prompt": p, "reply": "it the in box"} for i, p in enumerate(draws)]
    records = correct(teacher, tokenizer, items, 0, seed=0, tries=4, batch_size=2)
    kept = {r["prompt"]: r for r in records if r["correction"] is not None}
    assert set(kept) == {"is that your teddy bear ?", "where did you put it ?", "is it raining ?"}
    assert kept["is that your teddy bear ?"]["rejected"] == ["empty", "tag"]  # the mother's tag: a transcript
    assert kept["is it raining ?"]["correction"].startswith("yes")
    assert kept["where did you put it ?"]["rejected"] == []
    assert dropped_counts(records) == {"echo": 2, "tag": 1}
    assert sorted(teacher.seen.values()) == [1, 1, 3, 4, 4, 4]  # good at once, good at the 3rd, dropped after 4


def test_a_round_that_drops_corrections_counts_them_and_trains_on_the_rest(init_run, prompts, tmp_path):
    def draws(prompt, reply, draw):  # every other prompt's correction is always a transcript
        return "*MOT: what ?" if len(prompt) % 2 else GOOD[0]

    out = tmp_path / "run"
    train(FakeTeacher(draws), RunFolder(out), InteractionInputs(str(init_run), prompts),
          run_options(rounds=3, max_rounds=1))
    records = list(read_corrections(out / CORRECTIONS).values())
    row = read_csv_rows(out)[0]
    dropped = sum(r["correction"] is None for r in records)
    assert 0 < dropped < len(records)
    assert int(row["dropped"]) == dropped and int(row["dropped_tag"]) == sum(r["reason"] == "tag" for r in records)
    assert int(row["kept"]) == len(records) - dropped
    assert all("*MOT" not in (r["correction"] or "") for r in records)


def test_a_run_stopped_after_a_round_resumes_to_the_weights_of_one_never_stopped(straight, init_run, prompts,
                                                                                  tmp_path):
    out = tmp_path / "run"
    inputs = InteractionInputs(str(init_run), prompts)
    first = train(FakeTeacher(), RunFolder(out), inputs, run_options(max_rounds=1))
    assert first["rounds_done"] == 1 and not first["interrupted"]
    assert not same_weights(weights(out), weights(straight[0]))
    assert not interaction_complete(out)  # scripts/replication.py resumes it
    train(FakeTeacher(), RunFolder(out, resume=True), inputs, {})
    assert same_weights(weights(out), weights(straight[0])) and interaction_complete(out)
    assert [r["round"] for r in read_csv_rows(out)] == ["1", "2"] == [r["round"] for r in read_csv_rows(straight[0])]
    with pytest.raises(ValueError, match="has done all its 2 rounds"):
        train(FakeTeacher(), RunFolder(out, resume=True), inputs, {})


@pytest.mark.parametrize("interrupt_at, corrected", [(3, 4), (4, 5)],
                         ids=["while-the-teacher-corrects", "before-the-student-trains"])
def test_ctrl_c_saves_exits_130_and_resume_ends_where_a_straight_run_does(straight, init_run, prompts, tmp_path,
                                                                          monkeypatch, interrupt_at, corrected):
    """Ctrl-C in round 2, while the teacher corrects its first batch (5 contexts: batches of 4 and 1) or its last:
    the command saves what the teacher did and exits 130; --resume ends with the weights of a run never stopped."""
    out = tmp_path / "run"
    teacher = FakeTeacher(interrupt_at=interrupt_at)
    monkeypatch.setattr(training, "load_teacher", lambda *args: teacher)
    argv = ["--init", str(init_run), "--prompts", prompts, "--out", str(out), "--preset", "tiny", "--rounds", "2",
            "--contexts-per-round", "5", "--device", "cpu"]
    assert cli.main(argv) == 130
    assert teacher.calls >= interrupt_at
    state = load_state(out)
    assert (state["round"], state["round_step"]) == (1, 0)
    assert sum(round_ == 1 for round_, _ in read_corrections(out / CORRECTIONS)) == corrected
    assert not same_weights(weights(out), weights(straight[0]))
    monkeypatch.setattr(training, "load_teacher", lambda *args: FakeTeacher())
    assert cli.main(["--out", str(out), "--resume", "--device", "cpu"]) == 0
    assert same_weights(weights(out), weights(straight[0]))


def test_ctrl_c_while_the_student_trains_saves_the_step_and_resume_goes_on_from_it(straight, init_run, prompts,
                                                                                  tmp_path, monkeypatch):
    """Ctrl-C during round 2's second step (4 steps a round): that step finishes and is saved; --resume trains the
    round's last two steps on the corrections in the file, without the teacher, to the weights of a straight run."""
    out, calls = tmp_path / "run", []

    def loss_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return interaction_loss(*args, **kwargs)

    monkeypatch.setattr(training, "interaction_loss", loss_then_ctrl_c)
    inputs = InteractionInputs(str(init_run), prompts)
    assert train(FakeTeacher(), RunFolder(out), inputs, run_options())["interrupted"]
    state = load_state(out)
    assert (state["round"], state["round_step"], state["step"]) == (1, 2, 6)
    teacher = FakeTeacher()
    train(teacher, RunFolder(out, resume=True), inputs, {})
    assert teacher.calls == 0 and len(calls) == 8
    assert same_weights(weights(out), weights(straight[0]))
    assert [r["round"] for r in read_csv_rows(out)] == ["1", "2"]


def test_words_seen_grow_by_the_corrections_words(straight, init_run):
    out, summary = straight
    record = json.loads((out / "config.json").read_text())
    records = [r for r in read_corrections(out / CORRECTIONS).values() if r["correction"] is not None]
    config = InteractionConfig(**record["train"])
    prompt = sum(count_words(r["prompt"]) for r in records)
    corrections = sum(count_words(r["correction"]) for r in records)
    replies = sum(count_words(r["reply"]) for r in records)
    expected = (config.lm_epochs * (prompt + corrections) + config.simpo_epochs * (2 * prompt + corrections + replies))
    assert corrections > 0
    assert record["words_seen"] == summary["words_seen"] == 1000 + expected


def test_samples_before_and_after_for_ten_fixed_prompts(straight):
    out, _ = straight
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    before = [s["prompt"] for s in samples if s["phase"] == "before"]
    after = [s["prompt"] for s in samples if s["phase"] == "after"]
    assert before == after and len(before) == min(10, 5)  # the first round's contexts (5 here)
    assert (out / "loss.png").is_file() and (out / "rewards.png").is_file() and (out / "summary.json").is_file()
    table = ppo_report.report([out])  # the replies before -> after, as for RL runs
    replies = {(s["phase"], s["prompt"]): s["reply"] for s in samples}
    assert all(f"| {prompt} | {replies['before', prompt]} | {replies['after', prompt]} |" in table for prompt in before)


def test_help_and_a_users_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert exit_.value.code == 0 and "baseline: 0.2" in shown  # lambda, the LM weight, read from the preset
    assert all(f"--{field.name.replace('_', '-')} " in shown for field in dataclasses.fields(InteractionConfig)
               if field.name != "preset")  # every setting a flag
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--init", str(tmp_path / "missing"), "--prompts", str(tmp_path / "p.txt"), "--out",
                  str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]


def test_the_teacher_is_shown_the_caregivers_turn_and_the_childs_reply(tiny_runs, tmp_path):
    """A real Teacher (a tiny llamalogue exported as a Hugging Face folder): the instruction, the turn and the reply
    are in the text it continues, and each correction it makes is kept cut and clean, or dropped with its reason."""
    from llamalogue.hf import export
    from llamalogue.interaction.corrections import CORRECTION_PROMPT, correction_messages, draw_reason
    from llamalogue.interaction.training import DROP_REASONS
    from llamalogue.teacher.config import TeacherConfig
    from llamalogue.teacher.llm import Teacher

    teacher = Teacher(str(export(tiny_runs[0], tmp_path / "hf")), device="cpu",
                      config=TeacherConfig(dtype="float32", temperature=1.0, top_p=0.8, max_new_tokens=12, tries=2))
    shown = teacher.chat_text(correction_messages("*MOT: what is that ?", "ball the"))
    assert CORRECTION_PROMPT in shown and "Caregiver: what is that ?\nChild: ball the\n" in shown
    _, tokenizer = load_model(tiny_runs[0])
    items = [{"index": i, "prompt": p, "reply": r} for i, (p, r) in enumerate(
        [("what is that ?", "ball the"), ("do you want milk ?", "no want no"), ("where is it ?", "")])]
    records = correct(teacher, tokenizer, items, 0, seed=0, tries=2, batch_size=4)
    assert records[2]["reason"] == "empty reply" and records[2]["raw"] is None  # nothing to correct: no draw
    for item, record in zip(items, records):
        if record["correction"] is None:
            assert record["reason"] in DROP_REASONS
        else:
            assert 0 < reply_length(tokenizer, record["correction"]) <= reply_length(tokenizer, item["reply"])
            assert draw_reason(record["raw"], record["correction"], record["correction"], item["prompt"], True) in (
                None, "unfinished")


def test_a_preamble_is_taken_off_and_talk_about_the_task_is_drawn_again(tiny_runs):
    """The teacher's preamble ("Here is the corrected reply:") leaves the correction after it; a caregiver's label is
    a transcript ("tag"); a draw about the child or the correction is "meta": drawn again, then dropped."""
    _, tokenizer = load_model(tiny_runs[0])
    draws = {"shall we eat the cakes ?": ['The corrected reply is: "Now we have to eat these cakes."'],
             "what is that ?": ["Here is the corrected reply:\n\nI want the ball .\nMore text."],
             "where is it ?": ["Caregiver: Brought it back down .", "it is in the box ."],
             "do you want it ?": ["The child wanted it in the kitchen.", "Here is a corrected version of the "
                                  "child's response:\n", "yes I want it ."],
             "is it yours ?": ["It seems like the child is asking for a rice dessert."] * 3}
    teacher = FakeTeacher(lambda prompt, reply, draw: draws[prompt][draw - 1])
    items = [{"index": i, "prompt": p, "reply": "it the in box"} for i, p in enumerate(draws)]
    records = {r["prompt"]: r for r in correct(teacher, tokenizer, items, 0, seed=0, tries=3, batch_size=8,
                                               cut="none")}
    assert records["shall we eat the cakes ?"]["correction"] == "now we have to eat these cakes ."
    assert records["what is that ?"]["correction"] == "I want the ball ."
    assert records["where is it ?"]["rejected"] == ["tag"] and records["where is it ?"]["correction"]
    assert records["do you want it ?"]["rejected"] == ["meta", "empty"]
    assert records["do you want it ?"]["correction"] == "yes I want it ."
    assert records["is it yours ?"]["correction"] is None and dropped_counts(records.values()) == {"meta": 1}
