"""The interface every RL reward follows (Reward) and everything a reward may need to be built (RewardSettings); the
rewards themselves, their table and make_reward: llamalogue.rl.rewards.

    reward(prompts, replies) -> list[float]     Reward.__call__: tags dropped, an empty reply scored `worst`
    reward.prepare(prompts)                      once, before training, with every prompt of the run
"""

import math
from dataclasses import dataclass, replace
from pathlib import Path

from llamalogue.teacher.config import PAPER_TEACHER, TeacherConfig
from llamalogue.teacher.llm import Teacher, default_teacher
from llamalogue.teacher.reply_cache import TeacherReferences
from llamalogue.teacher.reply_text import content_words, without_speaker_tag


@dataclass
class RewardSettings:
    """Everything a reward may need; each takes what it uses (make_reward's keyword arguments)."""

    teacher: Teacher | None = None  # a loaded teacher; None: teacher_name, or the default SmolLM2 (loaded once)
    teacher_name: str | None = None  # HF folder, .gguf or hub id
    references: str | Path | None = None  # the teacher's JSONL reply cache (None: in memory)
    seed: int = 0  # of the teacher's samples (part of the cache key)
    samples: int = 10  # teacher samples per prompt for the confidence rank (the poster's 10)
    encoder: object = None  # a loaded MiniLM (semsim)
    scorer_run: str | Path | None = None  # pmi: the frozen baby model's run dir (PPO's --init, the reference)
    pmi_scorer: str = "reference"  # pmi: "reference" (the baby model) or "teacher"
    pmi_k: int = 4  # pmi: other caregiver utterances per reply
    reward_model: str | Path | list | None = None  # preference: the directory llamalogue.alignment.reward_model
    # wrote, or several: an ensemble
    ensemble: str = "mean"  # preference with several reward models: "mean" or "min" (llamalogue.rl.guards)
    device: str | None = None
    style: str = "ours"  # or "paper": the paper's scripts exactly (RLConfig.reward_style; see STYLES)
    teacher_dtype: str = "auto"  # the teacher's sampling weights (TeacherConfig.dtype; part of its cache key)

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"reward style {self.style!r}; choose one of {', '.join(STYLES)}")

    def get_teacher(self) -> Teacher:
        if self.teacher is None:
            config = replace(PAPER_TEACHER if self.style == "paper" else TeacherConfig(), dtype=self.teacher_dtype)
            shared = self.teacher_name is None and config == TeacherConfig()
            self.teacher = default_teacher() if shared else Teacher(self.teacher_name, config=config)
        return self.teacher

    def teacher_references(self, n: int) -> "TeacherReferences":
        """The teacher's replies; BLEU and SemSim compare with reply 0, the paper's scripts with reply 1 (its
        `best_response` is the second of its 10 samples, no ranking)."""
        index = 1 if self.style == "paper" else 0
        return TeacherReferences(self.get_teacher(), self.references, n=max(n, index + 1), seed=self.seed,
                                 index=index)


# ours: the CPU preset's better-founded choices -- the teacher answers after real CHILDES exchanges in its chat
# template, replies are written the CHILDES way and resampled when empty, echoed or looping (llamalogue.teacher.llm),
# the judge's rating is its expected digit. paper: the paper's scripts, PPO's paper preset (the README lists both).
STYLES = ("ours", "paper")


class Reward:
    """reward(prompts, replies) -> list[float]. Subclasses define `score` for non-empty replies, `worst` and
    `build(settings)`."""

    name = ""
    worst = 0.0  # the score of an empty reply
    scores_empty = False  # True: an empty reply is scored like any other instead of getting `worst`

    @classmethod
    def build(cls, settings: RewardSettings) -> "Reward":
        raise NotImplementedError

    def prepare(self, prompts: list[str]) -> None:
        """Work to do once for the run's prompts before the first PPO step (nothing by default)."""

    def __call__(self, prompts: list[str], replies: list[str]) -> list[float]:
        if len(prompts) != len(replies):
            raise ValueError(f"reward {self.name}: {len(prompts)} prompts but {len(replies)} replies")
        prompts = [without_speaker_tag(p) for p in prompts]
        replies = [without_speaker_tag(r) for r in replies]
        spoken = [i for i, reply in enumerate(replies) if self.scores_empty or content_words(reply)]
        scores = [self.worst] * len(replies)
        if spoken:
            for i, score in zip(spoken, self.score([prompts[i] for i in spoken], [replies[i] for i in spoken])):
                scores[i] = float(score) if math.isfinite(score) else self.worst
        return scores

    def score(self, prompts: list[str], replies: list[str]) -> list[float]:
        raise NotImplementedError


class TeacherReferenceReward(Reward):
    """A reward that compares the reply with the teacher's own replies to the same prompt."""

    references: TeacherReferences

    def prepare(self, prompts):
        self.references.prepare(prompts)
