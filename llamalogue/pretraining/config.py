"""The settings of a pretraining run (TrainConfig) and its presets: `tiny` (tests, seconds), `small` (the CPU default),
`paper` (the GPU run on the full CHILDES pretraining split). The loop that reads them: llamalogue.pretraining.training.
"""

from dataclasses import dataclass

from llamalogue.model import PRESETS as MODEL_PRESETS
from llamalogue.presets import Presets
from llamalogue.pretraining.speed import COMPILE_CHOICES


# tiny: tests (seconds). small: the CPU default: 6 epochs of the embedded sample (~3M tokens) fit in ~5-6 minutes on
# 2 cores; the paper's 10 epochs on the full corpus are `--epochs 10` (as scripts/gpu_run.sh does). paper: the GPU
# run on the full CHILDES pretraining split (~10M tokens; 10 epochs).
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=8, epochs=1, lr=3e-3, warmup_steps=5, eval_every=20, eval_tokens=4_000,
                 log_every=5, samples=2),
    "small": dict(preset="small", batch_size=32, epochs=6, lr=2e-3, warmup_steps=100, eval_every=200,
                  eval_tokens=50_000),
    "paper": dict(preset="paper", batch_size=64, epochs=10, lr=1e-3, warmup_steps=500, eval_every=1000,
                  eval_tokens=500_000, log_every=50),
}


@dataclass
class TrainConfig(Presets):
    preset: str = "small"  # the training preset, and the ModelConfig preset of the model trained unless `model`
    model: str = ""  # another ModelConfig preset than `preset`'s (a larger model with the same optimisation)
    batch_size: int = 32  # windows per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimisation step
    epochs: float = 10.0  # passes over the training split (the paper: 10; `small` on CPU: 6); fixes the LR schedule
    max_steps: int = 0  # stop after this step (0: at the end of the schedule); `--resume` can go on from there
    minutes: float = 0.0  # a time budget: the schedule ends at the epochs that fit (at most `epochs`); 0: none
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only: never on norms or the embedding
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 200  # steps between validation runs and checkpoints (also at the end of every epoch)
    eval_tokens: int = 100_000  # validation tokens scored each time (the first windows of val.bin)
    log_every: int = 10  # steps between log.csv rows
    seed: int = 1337
    dtype: str = "auto"  # bfloat16 autocast | float32 | auto: the faster here, measured (llamalogue.pretraining.speed)
    compile: str = "auto"  # on | off | auto: when the run is long enough for the compile to pay (speed.py)
    samples: int = 5  # replies generated to real caregiver prompts at the end
    milestones: tuple[int, ...] = ()  # training-token counts at which to keep a checkpoint (milestones.py)
    milestone_words: tuple[int, ...] = ()  # the same in words seen, turned into tokens at the training text's rate

    presets = PRESETS
    # What a resumed run may change: where it stops, how often it reports, and speed-only settings. (A new `epochs`
    # changes the schedule's length: allowed, to extend a run.)
    resume_may_change = frozenset({"epochs", "max_steps", "eval_every", "eval_tokens", "log_every", "compile",
                                   "samples", "milestones", "milestone_words"})

    @property
    def model_preset(self) -> str:
        """The ModelConfig preset of the model trained."""
        return self.model or self.preset

    def __post_init__(self):
        self.check_at_least(1, "batch_size", "grad_accum", "eval_every", "eval_tokens", "log_every")
        self.check_at_least(0, "max_steps", "warmup_steps", "samples", "minutes")
        if self.model and self.model not in MODEL_PRESETS:
            raise ValueError(f"--model {self.model}: not a model preset ({', '.join(MODEL_PRESETS)})")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"--epochs {self.epochs} and --lr {self.lr}: must be positive")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32 or bfloat16")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"--compile {self.compile!r}: choose {', '.join(COMPILE_CHOICES)}")
