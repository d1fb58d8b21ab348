"""The teacher: reply cleaning and rejection rules (pure text), the JSONL cache, and the real SmolLM2-135M teacher
answering real caregiver prompts from the paper's DPO data."""

import json
import os
from pathlib import Path

import pytest
import torch

from llamalogue.teacher.reply_text import clean_reply, is_echo, is_loop, reject_reason, without_speaker_tag
from llamalogue.teacher.few_shot import read_examples
from llamalogue.teacher.reply_cache import ReplyCache, teacher_replies
from llamalogue.teacher.__main__ import main as teacher_cli
from llamalogue.teacher.llm import default_teacher

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLAMALOGUE_SHARED", REPO.parent / "shared"))
SYNTHETIC = SHARED / "data/paper/dpo/synthetic_dpo_format.json"


def real_prompts(count: int) -> list[str]:
    if not SYNTHETIC.is_file():
        pytest.skip(f"paper data not found at {SYNTHETIC} (set LLAMALOGUE_SHARED)")
    return [row["prompt"] for row in json.loads(SYNTHETIC.read_text())[:count]]


@pytest.mark.parametrize("raw, clean", [
    ("It is a ball.", "it is a ball ."),
    ("*CHI: my toys!\n*MOT: your toys ?", "my toys !"),
    ("Child: \"I want the red one\" *giggles* Mother: ok", "I want the red one ."),
    ("I'm hungry. Can I have a cookie?", "I'm hungry ."),
    ("yes, mom, it\u2019s my favorite", "yes , mom , it's my favorite ."),
    ("where's the doggy??", "where's the doggy ?"),
    ("...", ""),
    ("  \n*MOT: what is it ?", ""),
])
def test_clean_reply_makes_one_childes_utterance(raw, clean):
    assert clean_reply(raw) == clean


def test_echo_loop_and_empty_rules():
    assert is_echo("pull the string .", "pull the string .")
    assert is_echo("on a windy day , on a windy day .", "on a windy day .")
    assert is_echo("no .", "no .")
    assert not is_echo("the monkeys .", "and where are these monkeys ?")
    assert not is_echo("and you could put the hat .", "and you could put .")  # 4 of 6 words: 67% < 80%
    assert is_loop("no no no no no no no")
    assert is_loop("I want it I want it I want it .")
    assert not is_loop("no no no .")
    assert reject_reason("", "what is it ?") == "empty"
    assert reject_reason("what is it ?", "what is it ?") == "echo"
    assert reject_reason("a big tree", "what is it ?", finished=False) == "unfinished"
    assert reject_reason("a big tree .", "what is it ?") is None
    assert reject_reason("The eye!", "what is it ?", shown=["the eye .", "yes I do ."]) == "copy"
    assert without_speaker_tag("*MOT: what is that ?") == "what is that ?"
    assert without_speaker_tag("*CHI: a house .") == "a house ."


def test_read_examples_from_a_data_dir(tmp_path):
    (tmp_path / "train.txt").write_text(
        "*MOT: what're you making there ?\n*CHI: a house .\n*MOT: oh very nice .\n\n"
        "*CHI: look .\n*MOT: what do you think that is ?\n*CHI: eggs .\n\n"
        "*MOT: yes .\n*CHI: make it flat .\n*MOT: okay .\n"
    )
    assert read_examples(tmp_path) == [("what're you making there ?", "a house ."),
                                       ("what do you think that is ?", "eggs .")]  # "yes ." is too short
    with pytest.raises(FileNotFoundError, match="nope"):
        read_examples(tmp_path / "nope")


def test_cache_drops_a_torn_line_skips_bad_records_and_serves_fewer_replies(tmp_path, capsys):
    path = tmp_path / "cache.jsonl"
    settings = {"teacher": "t"}
    record = {"key": ReplyCache.key(settings, "what is it ?", 0), "prompt": "what is it ?", "seed": 0,
              "settings": settings, "replies": ["a ball .", "a cat ."], "logliks": [-3.0, -4.0],
              "reasons": [None, None], "rejected": [[], ["echo"]]}
    path.write_text(json.dumps(record) + "\n" + '{"key": "torn', encoding="utf-8")  # killed mid-write
    cache = ReplyCache(path)
    assert path.read_text().count("\n") == 1 and path.read_text().endswith("\n")
    assert cache.get(settings, "*MOT: what is it ?", 0, 1)["replies"] == ["a ball ."]
    assert cache.get(settings, "what is it ?", 0, 3) is None  # needs more replies than cached
    assert cache.get(settings, "what is it ?", 1, 1) is None  # another seed
    three_of_ten = {**record, "key": "k3", "replies": ["a ."] * 10, "logliks": [-1.0] * 3}
    path.write_text("not json\n" + json.dumps({"prompt": "no key"}) + "\n" + json.dumps(three_of_ten) + "\n"
                    + json.dumps(record) + "\n")
    cache = ReplyCache(path)  # bad records are skipped and counted, never used: their prompts are answered again
    assert list(cache.entries) == [record["key"]]
    warning = capsys.readouterr().err
    assert "3 bad line(s) skipped" in warning and "cache.jsonl:1: " in warning
    assert "cache.jsonl:2: not a teacher-cache" in warning and "cache.jsonl:3: 3 log-likelihoods for 10 replies" in warning


def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # before any teacher is loaded
        teacher_cli(["--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o.jsonl")])
    message = capsys.readouterr().err
    assert exit_.value.code == 2 and "missing.txt: no such prompts file" in message and len(message.splitlines()) == 1


def test_real_teacher_answers_like_a_child_and_caches_resumably(tmp_path):
    teacher = default_teacher()
    prompts = real_prompts(4)
    path = tmp_path / "replies.jsonl"
    first = teacher_replies(teacher, prompts[:3], n=2, cache=ReplyCache(path))
    assert [r["prompt"] for r in first] == prompts[:3]
    for record in first:
        assert len(record["replies"]) == len(record["logliks"]) == 2
        for reply, loglik, reason in zip(record["replies"], record["logliks"], record["reasons"]):
            if reason is None:  # a kept reply passed every rule
                assert reply == clean_reply(reply) and reply[-1] in ".?!" and not is_echo(reply, record["prompt"])
            assert reply and loglik < 0
    lines = path.read_text().splitlines()
    assert len(lines) == 3

    # A second run (as after a kill) reuses the three cached prompts and appends only the new one.
    again = teacher_replies(teacher, prompts, n=2, cache=ReplyCache(path))
    assert [r["replies"] for r in again[:3]] == [r["replies"] for r in first]
    assert path.read_text().splitlines()[:3] == lines and len(path.read_text().splitlines()) == 4

    # The cached log-likelihood is log P(reply | context), recomputed the same way for any reply.
    record = first[0]
    scored = teacher.loglik([record["prompt"]] * 2, [record["replies"][0], "purple seven quantum tax invoice ."])
    assert scored[0] == pytest.approx(record["logliks"][0], abs=1e-3)
    assert scored[1] < scored[0] - 5


def test_loglik_after_the_kept_example_prefixes_equals_transformers_on_each_whole_context():
    """loglik scores each reply after a prefix computed once -- its example set's, kept across calls, or a prompt's
    own turn for its many replies -- with rows of different prefixes in one batch (the confidence reward's speed):
    the values are transformers' log P(reply | whole context), row by row."""
    teacher = default_teacher()
    prompts = [without_speaker_tag(p) for p in real_prompts(12)]
    replies = [["yes .", "I want the ball .", "no !", "mommy do it ."][i % 4] for i in range(len(prompts))]
    # and one prompt with five replies, as the cache scores its samples: after a prefix that holds its turn too
    prompts += [prompts[0]] * 5
    replies += ["the doggie .", "no .", "I want to go outside and play with my red ball .", "yes mommy .", "uh oh ."]
    sets = {teacher.shot_set(p) for p in prompts}
    ours = teacher.loglik(prompts, replies)
    assert len(sets) > 1 and {(torch.float32, s) for s in sets} <= set(teacher.kept.examples)  # fp32: ours
    kept = {s: teacher.kept.examples[(torch.float32, s)] for s in sets}
    assert teacher.loglik(prompts[:4], replies[:4]) == pytest.approx(ours[:4], abs=1e-4)
    assert all(teacher.kept.example_prefix(s, teacher.ours) is prefix for s, prefix in kept.items())  # kept, not rerun
    for prompt, reply, value in zip(prompts, replies, ours):
        messages = teacher.child_messages(prompt)
        context, reply_ids = teacher.context_ids(messages), teacher.reply_ids(messages, reply)
        with torch.no_grad():
            logits = teacher.model(input_ids=torch.tensor([context + reply_ids])).logits[0, len(context) - 1 : -1]
        reference = logits.float().log_softmax(-1).gather(-1, torch.tensor(reply_ids)[:, None]).sum().item()
        assert value == pytest.approx(reference, abs=1e-3)


def test_bf16_sampling_is_part_of_the_cache_key_and_float32_keeps_the_old_keys():
    """A bfloat16 teacher samples with a bf16 copy of its weights (and says so in its cache key); float32 samples
    with the fp32 weights and keeps the keys caches had before dtypes existed. Both score log-likelihoods with the
    same fp32 weights. The default (auto) is the one measured to sample faster on this machine."""
    from llamalogue.rl.reward_interface import RewardSettings
    from llamalogue.teacher.config import sampling_dtype

    default = default_teacher()
    assert default.settings().get("dtype", "float32") == sampling_dtype("auto", "cpu")
    fp32 = RewardSettings(teacher_dtype="float32").get_teacher()
    bf16 = default if default.settings().get("dtype") == "bfloat16" else RewardSettings(
        teacher_dtype="bfloat16").get_teacher()
    assert fp32 is not bf16 and fp32.sampler is fp32.ours and "dtype" not in fp32.settings()
    assert bf16.settings()["dtype"] == "bfloat16" and bf16.sampler.embed.weight.dtype == torch.bfloat16
    assert bf16.ours.embed.weight.dtype == torch.float32
    prompt, replies = real_prompts(1) * 2, ["yes .", "the red ball ."]
    assert bf16.loglik(prompt, replies) == pytest.approx(fp32.loglik(prompt, replies), abs=1e-4)


def test_a_prompts_replies_sampled_after_its_own_turn_are_those_of_its_whole_context():
    """reply() samples a prompt's many replies after its turn, run once (KeptPrefixes.rows: the example set's kept
    prefix, then the turn): in fp32 the same tokens as sampling the whole contexts after their common prefix."""
    from llamalogue.rl.reward_interface import RewardSettings

    teacher = RewardSettings(teacher_dtype="float32").get_teacher()
    prompts = [without_speaker_tag(p) for p in real_prompts(3)]
    rows = [p for p in prompts for _ in range(4)]  # 4 = PROMPT_PREFIX_ROWS: each prompt gets its own prefix
    contexts = [teacher.reply_context(p) for p in rows]
    prefixes = teacher.kept.rows(rows, contexts, teacher.sampler)
    assert len({id(p) for p in prefixes}) == len(prompts) and all(
        context[: len(p.tokens)] == p.tokens and len(p.tokens) == len(context) - 1
        for context, p in zip(contexts, prefixes))
    assert teacher.sample(contexts, [5], prefixes=prefixes) == teacher.sample(contexts, [5])
