"""The four PPO rewards with hand-checked numbers: an identical, an unrelated and an empty reply for each, computed
with the real teacher (SmolLM2-135M) and the real all-MiniLM-L6-v2 on a real caregiver prompt."""

import math

import pytest
import torch

from llamalogue.rl.rewards import (PAPER_REWARDS, BleuReward, ConfidenceReward, LLMScoreReward, PMIReward,
                                   SemSimReward, load_minilm, make_reward, paper_rating)
from llamalogue.teacher.llm import default_teacher

PROMPT = "what are you playing with huh toys ?"  # the poster's natural DPO example
UNRELATED = "purple seven quantum tax invoice ."


class FixedReferences:
    """Hand-written teacher references, so that BLEU and SemSim can be checked by hand."""

    def __init__(self, reference: str):
        self.reference = reference

    def reference_replies(self, prompts):
        return [self.reference] * len(prompts)


@pytest.fixture(scope="module")
def minilm():
    return load_minilm("cpu")


def test_unknown_reward_names_all_seven():
    with pytest.raises(ValueError, match="bleu, semsim, llm, confidence, pmi, preference, zero"):
        make_reward("rouge")


def test_bleu_by_hand():
    bleu = BleuReward(FixedReferences("there's a dog ."))
    scores = bleu([PROMPT] * 6, ["*CHI: There's a dog!", "a dog .", "dog", "a cat too .", "my red car .", ""])
    # identical up to case, tag and punctuation: every unigram matches, no brevity penalty
    assert scores[0] == pytest.approx(1.0)
    # 2 of 2 unigrams match, but 2 < 3 reference words: brevity penalty exp(1 - 3/2)
    assert scores[1] == pytest.approx(math.exp(1 - 3 / 2))
    assert scores[2] == pytest.approx(math.exp(1 - 3 / 1))
    assert scores[3] == pytest.approx(1 / 3)  # 1 of 3 unigrams, same length
    assert scores[4] == 0.0  # unrelated: no unigram matches
    assert scores[5] == bleu.worst == 0.0  # empty reply: the documented penalty


def test_semsim_by_hand(minilm):
    semsim = SemSimReward(FixedReferences("there's a dog ."), encoder=minilm)
    scores = semsim([PROMPT] * 4, ["there's a dog .", "a little puppy .", UNRELATED, "*CHI: "])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    a, b = minilm.encode(["a little puppy .", "there's a dog ."], convert_to_tensor=True)
    assert scores[1] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)
    assert scores[1] > 0.5 > 0.2 > scores[2]
    assert scores[3] == semsim.worst == -1.0


def test_llm_score_is_the_expected_digit_under_the_teacher():
    teacher = default_teacher()
    llm = LLMScoreReward(teacher)
    replies = ["there's a dog .", UNRELATED, ""]
    scores = llm([PROMPT] * 3, replies)
    # by hand: softmax over the logits of "0".."5" at the judge's first answer token, E = sum d p(d), reward E / 5
    context = teacher.context_ids(llm.judge_messages(PROMPT, replies[0]))
    with torch.no_grad():
        logits = teacher.model(torch.tensor([context], device=teacher.device)).logits[0, -1].float().cpu()
    digits = [teacher.tokenizer.convert_tokens_to_ids(d) for d in "012345"]
    p = logits[digits].softmax(-1)
    assert scores[0] == pytest.approx(sum(d * p[d].item() for d in range(6)) / 5, abs=1e-4)
    assert 0 <= scores[1] <= 1 and scores[0] != scores[1]
    assert scores[2] == llm.worst == 0.0


def test_confidence_ranks_a_reply_among_ten_teacher_samples(tmp_path):
    teacher = default_teacher()
    confidence = make_reward("confidence", teacher, references=tmp_path / "refs.jsonl")  # cold cache: computed
    assert isinstance(confidence, ConfidenceReward)
    entry = confidence.references.entries([PROMPT])[0]
    samples = entry["logliks"]
    assert len(samples) == 10 and (tmp_path / "refs.jsonl").read_text().count("\n") == 1
    best = entry["replies"][samples.index(max(samples))]
    worst = entry["replies"][samples.index(min(samples))]
    scores = confidence([PROMPT] * 4, [best, worst, UNRELATED, ""])
    # identical to the likeliest sample: all 10 samples are <= it, rank 1, r = 2 * 1 - 1
    assert scores[0] == pytest.approx(1.0)
    # identical to the least likely sample: only that one (and ties) is <= it, rank >= 1/10, r = 2 * 0.1 - 1
    ties = sum(abs(s - min(samples)) <= 1e-3 for s in samples)
    assert scores[1] == pytest.approx(2 * ties / 10 - 1)
    assert scores[2] == -1.0  # unrelated: less likely than every sample, rank 0
    assert scores[3] == confidence.worst == -1.0  # empty reply: the documented penalty


def test_every_paper_reward_keeps_the_interface(minilm):
    teacher = default_teacher()
    for name in PAPER_REWARDS:
        reward = make_reward(name, teacher, encoder=minilm)
        scores = reward(["*MOT: what is that ?", "pull the string ."], ["it looks like a gun .", ""])
        assert len(scores) == 2 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
        assert scores[1] == reward.worst
        with pytest.raises(ValueError, match="2 prompts but 1 replies"):
            reward(["a", "b"], ["c"])


class ToyScorer:
    """log P(reply | prompt) by hand: -1 when the reply shares a word with the prompt, else -5, and -2 for `no .`
    whatever the prompt (a generic reply fits every prompt equally)."""

    def __init__(self):
        self.calls = []

    def loglik(self, prompts, replies):
        self.calls.append(len(prompts))
        return [-2.0 if r == "no ." else -1.0 if set(p.split()) & set(r.split()) - {".", "?"} else -5.0
                for p, r in zip(prompts, replies)]


def test_pmi_pays_a_prompt_specific_reply_and_not_a_generic_or_echoed_one():
    pmi = PMIReward(ToyScorer(), k=4, seed=0)
    pool = ["where is the ball ?", "do you want juice ?", "look at the doggie .", "is it hot ?", "who is that ?",
            "can you draw a cat ?"]
    pmi.prepare(["*MOT: " + p for p in pool])  # tags are dropped
    others = pmi.other_prompts("where is the ball ?")
    assert len(others) == 4 and "where is the ball ?" not in others and others == pmi.other_prompts(
        "where is the ball ?")  # a fixed draw per prompt
    scores = pmi(["where is the ball ?"] * 4, ["the ball is here .", "no .", "", "where is the ball ?"])
    # specific: log P(y|x) = -1 and, after 4 prompts sharing no word with it ("ball", "the", "is" are absent from
    # them, or present: counted per prompt), -1 or -5 each
    expected = -1.0 - sum(-1.0 if set(o.split()) & {"the", "ball", "is", "here"} else -5.0 for o in others) / 4
    assert scores[0] == pytest.approx(expected) and scores[0] > 0
    assert scores[1] == pytest.approx(0.0)  # generic: -2 after every prompt, PMI 0
    assert scores[2] == pmi.worst == 0.0  # empty
    assert scores[3] == 0.0  # an echo of the prompt is paid nothing
    with pytest.raises(ValueError, match="need more than k"):
        PMIReward(ToyScorer(), k=6).score(["a ?"], ["b ."])  # no pool prepared


def test_pmi_with_the_real_frozen_baby_model_prefers_the_fitting_reply(corpus_small_build, tmp_path):
    from llamalogue.checkpoint import save_checkpoint
    from llamalogue.model import Llama, ModelConfig
    from llamalogue.tokenizer import Tokenizer

    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer,
                    {"stage": "pretrain"})
    pmi = make_reward("pmi", scorer_run=tmp_path / "run", device="cpu", pmi_k=2)
    pmi.prepare(["what is that ?", "where is it ?", "do you want it ?"])
    scores = pmi(["what is that ?", "where is it ?"], ["a ball .", "there ."])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    # by definition: the reply's own log-likelihood minus the mean over the two other prompts
    scorer = pmi.scorer
    others = pmi.other_prompts("what is that ?")
    own, *rest = scorer.loglik(["what is that ?", *others], ["a ball ."] * 3)
    assert scores[0] == pytest.approx(own - sum(rest) / 2, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# The paper's reward rules (--preset paper), with the real teacher.


@pytest.fixture(scope="module")
def paper_teacher():
    from llamalogue.teacher.llm import Teacher
    from llamalogue.teacher.config import PAPER_TEACHER

    return Teacher(config=PAPER_TEACHER)


def test_paper_first_utterance_keeps_the_text_as_written_up_to_the_first_sentence_end():
    from llamalogue.teacher.reply_text import paper_first_utterance

    assert paper_first_utterance(" I like the red one! It is big.") == "I like the red one!"
    assert paper_first_utterance("Yes mommy\nMother says: ok") == "Yes mommy"
    assert paper_first_utterance("no thanks") == "no thanks"


def test_paper_confidence_scores_the_reply_after_the_bare_prompt_as_transformers_does(paper_teacher):
    tokenizer, model = paper_teacher.tokenizer, paper_teacher.model
    prompt, reply = PROMPT, "there's a dog ."
    context = tokenizer(prompt + " ", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + reply, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context + answer])).logits[0].float()
    expected = logits[len(context) - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).sum().item()
    assert paper_teacher.loglik([PROMPT], [reply])[0] == pytest.approx(expected, abs=2e-3)
    assert "layout" in paper_teacher.settings() and "layout" not in default_teacher().settings()  # old cache keys


def test_the_paper_judges_rating_is_the_first_number_from_1_to_5_in_its_answer():
    assert paper_rating("4") == 4.0 and paper_rating("Rating: 3.5/5") == 3.5
    assert paper_rating("0 or maybe 2") == 2.0  # 0 is no rating: the first from 1 to 5
    assert paper_rating("0") == paper_rating("x") == paper_rating("") == 0.0  # none: the paper's 0


def test_paper_rewards_use_the_second_teacher_sample_and_the_generated_rating(paper_teacher, tmp_path, minilm):
    bleu = make_reward("bleu", paper_teacher, references=tmp_path / "refs.jsonl", style="paper")
    entry = bleu.references.entries([PROMPT])[0]
    assert len(entry["replies"]) == 2 and bleu.references.reference_replies([PROMPT]) == [entry["replies"][1]]
    assert bleu([PROMPT], [entry["replies"][1]])[0] == pytest.approx(1.0)
    judge = make_reward("llm", paper_teacher, style="paper")
    ratings = judge([PROMPT, PROMPT], ["there's a dog .", ""])
    assert ratings[0] == 0.0 or 1.0 <= ratings[0] <= 5.0
    assert ratings[1] == 0.0  # an empty reply, as the paper's scripts
    semsim = make_reward("semsim", paper_teacher, references=tmp_path / "refs.jsonl", style="paper", encoder=minilm)
    assert -1.0 < semsim([PROMPT], [""])[0] < 1.0  # the paper's script embeds an empty reply; ours gives it -1
    assert make_reward("semsim", paper_teacher, references=tmp_path / "refs.jsonl", encoder=minilm)([PROMPT], [""]) \
        == [-1.0]
    confidence = make_reward("confidence", paper_teacher, references=tmp_path / "refs.jsonl", style="paper")
    assert confidence.worst == -0.5
    # the paper's script lowercases the baby's reply before the teacher scores it
    assert confidence([PROMPT], ["There's A Dog ."]) == confidence([PROMPT], ["there's a dog ."])
    ours = make_reward("confidence", paper_teacher, references=tmp_path / "refs.jsonl")
    assert ours.teacher.loglik([PROMPT], ["There's A Dog ."]) != ours.teacher.loglik([PROMPT], ["there's a dog ."])
    with pytest.raises(ValueError, match="reward style 'olmo'"):
        make_reward("bleu", paper_teacher, style="olmo")


def test_the_zero_reward_pays_nothing_and_loads_no_model():
    control = make_reward("zero", style="paper")
    assert control([PROMPT, PROMPT, PROMPT], ["there's a dog .", "*CHI: no .", ""]) == [0.0, 0.0, 0.0]
    assert not vars(control)  # no teacher, encoder or reward model was built for it
