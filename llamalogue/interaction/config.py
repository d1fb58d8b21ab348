"""The settings of an interaction run (InteractionConfig) and its presets: `tiny` (tests, seconds), `small` (a CPU
finishes it), `baseline` (the BabyLM 2025 interaction baseline's own settings, as its code ran them).

The baseline (github BabyLM-community/babylm-interaction-baseline-simpo; read here in the copy
momergul/babylm-interaction-simpo-baseline, commit 5bc3303: config.yaml, interactive_training.py, data_utils.py,
models.py) trains a GPT-2 from scratch in 20 rounds. Each round takes fresh contexts from its own part of the corpus
(the corpus cut into 20 parts; 256 tokens of a 512-token window), samples the student's continuation (vLLM,
temperature 1.0 by default, top-p 0.8, 255-256 tokens), asks Llama-3.1-8B-Instruct for a correction (top-p 0.8,
temperature 1.0), cuts it to the student's length in tokens, then trains 7 epochs of language modelling on context +
correction and 2 epochs of SimPO (beta 2, gamma = beta x 0.5) + 0.2 x the language-modelling loss, in batches of 16,
one AdamW (lr 5e-5, weight decay 0, betas 0.9/0.999, eps 1e-8) and one cosine schedule (2,000 warmup steps of
200,000) over all rounds, gradients clipped at 1.0.

Ours is a child's reply to a caregiver's turn, so a continuation is a reply (at most max_new_tokens, stopped at the
end of the turn) rather than 256 tokens of running text.
"""

from dataclasses import dataclass

from llamalogue.presets import Presets

CUTS = ("student", "none")  # what is kept of the teacher's correction: its first |y_l| tokens, or all of it

# tiny: tests (seconds). small: a few hundred contexts a round, a few rounds, from a pretrained base, on a CPU.
# baseline: the baseline's config.yaml and models.py, every setting that has a counterpart here.
PRESETS = {
    "tiny": dict(preset="tiny", rounds=2, contexts_per_round=6, lm_epochs=1, simpo_epochs=1, batch_size=3,
                 max_new_tokens=8, teacher_max_new_tokens=12, lr=1e-3, warmup_steps=1, sample_batch_size=4),
    "small": dict(preset="small", rounds=4, contexts_per_round=256, lm_epochs=2, simpo_epochs=2),
    "baseline": dict(preset="baseline", rounds=20, contexts_per_round=0, lm_epochs=7, simpo_epochs=2,
                     warmup_steps=2000, schedule_steps=200000),
}


@dataclass
class InteractionConfig(Presets):
    preset: str = "small"
    # the rounds: each takes fresh contexts from its own part of the prompts (the prompts cut into `rounds` parts)
    rounds: int = 4  # baseline: 20
    contexts_per_round: int = 256  # 0: the whole of the round's part (the baseline's way)
    max_rounds: int = 0  # > 0: stop after this many rounds (--resume goes on to `rounds`)
    # the student's reply
    temperature: float = 1.0  # the baseline: vLLM's default, 1.0
    top_p: float = 0.8  # the baseline's
    max_new_tokens: int = 20  # a child reply (the baseline: 256 tokens of running text)
    sample_batch_size: int = 64  # replies sampled per batch, each batch under its own seed (so part of the run)
    # the teacher's correction (llamalogue.interaction.corrections)
    teacher_temperature: float = 1.0  # the baseline's
    teacher_top_p: float = 0.8  # the baseline's
    teacher_max_new_tokens: int = 30
    cut: str = "student"  # student: cut to the student's reply length in tokens (the baseline's); none: kept whole
    tries: int = 4  # draws per correction before it is dropped (and counted)
    # the training of a round
    lm_epochs: int = 2  # language modelling on context + correction; the baseline: 7
    simpo_epochs: int = 2  # SimPO + lambda x LM; the baseline: 2
    beta: float = 2.0  # SimPO's beta; the baseline's
    gamma_ratio: float = 0.5  # SimPO's margin gamma = beta x gamma_ratio; the baseline's
    lm_weight: float = 0.2  # lambda, the LM loss's weight in the SimPO epochs; the baseline's
    batch_size: int = 16  # pairs per optimizer step, both phases; the baseline's
    lr: float = 5e-5  # the baseline's
    weight_decay: float = 0.0  # the baseline's
    grad_clip: float = 1.0  # the baseline's
    warmup_steps: int = 10  # the baseline: 2,000
    schedule_steps: int = 0  # the cosine's length in steps; 0: the run's planned steps (the baseline: 200,000)
    seed: int = 1337

    presets = PRESETS
    resume_may_change = frozenset({"max_rounds"})  # where it stops; never what it samples or learns
    stop_setting = "max_rounds"

    def __post_init__(self):
        self.check_at_least(1, "rounds", "max_new_tokens", "sample_batch_size", "teacher_max_new_tokens", "tries",
                            "batch_size")
        self.check_at_least(0, "contexts_per_round", "max_rounds", "lm_epochs", "simpo_epochs", "warmup_steps",
                            "schedule_steps", "lm_weight", "weight_decay", "gamma_ratio")
        if self.cut not in CUTS:
            raise ValueError(f"--cut {self.cut!r}: choose {' or '.join(CUTS)}")
        if self.beta <= 0:
            raise ValueError(f"--beta {self.beta}: must be positive")
        for name in ("top_p", "teacher_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be in (0, 1]")

    @property
    def gamma(self) -> float:
        """SimPO's margin, as the baseline sets it: gamma = beta x gamma_ratio."""
        return self.beta * self.gamma_ratio
