"""The settings of an RL run, for each of its seven algorithms: PPO (llamalogue.rl.ppo) and the critic-free RLOO, GRPO,
Dr. GRPO, GSPO, CISPO and DAPO (llamalogue.rl.group). The numbers (n) in the comments are the implementation details
listed in llamalogue.rl.ppo's docstring.

One budget for all: batch_size is the replies sampled per step and total_prompts the replies sampled in the whole
run (the episodes), so that runs of different algorithms compare at the same number of sampled replies. A step
answers batch_size / group_size prompts, group_size times each.
"""

from dataclasses import dataclass

from llamalogue.presets import Presets
from llamalogue.rl.kl import KL_ESTIMATORS

ALGORITHMS = ("ppo", "rloo", "grpo", "dr_grpo", "gspo", "cispo", "dapo")
ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dr_grpo": "Dr. GRPO", "gspo": "GSPO",
                   "cispo": "CISPO", "dapo": "DAPO"}
CRITIC_FREE_GROUP_SIZE = 4  # replies per prompt when not given, for the algorithms whose baseline is the group

# (11) The clip range (eps_low, eps_high) when not given: the ratio is held to [1 - eps_low, 1 + eps_high]. PPO, RLOO,
# GRPO and Dr. GRPO: (0.2, 0.2), or (clip_eps, clip_eps) when only clip_eps is given. GSPO's clips a sequence's ratio,
# which moves far less than a token's (Zheng et al., 2025, sec. 5.1: 3e-4 and 4e-4). CISPO's clips a weight, not the
# update: MiniMax-M1 sets no lower bound (eps_low = 1: weights >= 0) and publishes no eps_high; ours is DAPO's 0.28
# (verl's and Trinity-RFT's CISPO default). DAPO's "clip-higher" (Yu et al., 2025): 0.2 below, 0.28 above.
CLIP_RANGES = {"gspo": (3e-4, 4e-4), "cispo": (1.0, 0.28), "dapo": (0.2, 0.28)}
DEFAULT_CLIP_EPS = 0.2

# tiny: tests and smoke runs (seconds). small: the CPU run, 2,000 prompts per reward with the small llamalogue
# (2,000 episodes = 4 passes over 500 prompts; the paper: 3-4 epochs). paper: the paper's scripts (github
# fpadovani/communicative_baby_ppo) on TRL 0.8.6, whose PPOConfig defaults fill in what they leave unset: batch 16,
# minibatch 4, 4 PPO epochs, lr 1.41e-5, adaptive KL from beta 0.2 (target 6, horizon 10,000), k1, gamma 1, lambda
# 0.95, clip 0.2 (policy and value), value coefficient 0.1, no reward scaling, no gradient clipping, no early stop (but
# no update from a minibatch whose mean ratio exceeds 10), no penalty for unfinished replies; replies of at most 20 new
# tokens sampled with top-p 0.9 and top-k 50 (transformers' default, left on) at temperature 1; the rewards as its
# scripts compute them. The README lists how small differs.
PRESETS = {
    "tiny": dict(preset="tiny", batch_size=4, minibatch_size=2, max_new_tokens=8, ppo_epochs=2, total_prompts=16,
                 lr=1e-4, sample_every=1, save_every=2),
    "small": dict(preset="small", lr=3e-5, max_prompts=500),
    "paper": dict(preset="paper", reward_style="paper", warped_logprobs=False, value_head="random", top_k=50,
                  top_p=0.9, unfinished_penalty=None,
                  max_grad_norm=None, early_stop_kl=None, ratio_threshold=10.0, total_prompts=20000, sample_every=50,
                  save_every=100),  # total_prompts: pmi and preference; the paper's four rewards, PRESET_BY_REWARD
}


@dataclass
class RLConfig(Presets):
    preset: str = "small"  # the name of the preset the run started from (recorded, shown in the run's scale line)
    algorithm: str = "ppo"  # one of ALGORITHMS
    group_size: int | None = None  # G, replies sampled per prompt; None: 1 for ppo, CRITIC_FREE_GROUP_SIZE otherwise
    # rollouts
    batch_size: int = 16  # episodes (sampled replies) per step; the paper: 16 (PPO, one reply per prompt)
    max_new_tokens: int = 20  # reply budget; the paper: 20
    max_prompt_tokens: int = 64  # longer prompts are skipped (and counted) rather than cut
    temperature: float = 1.0  # (16) any setting stays on-policy: log-probs come from the warped distribution
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    unfinished_penalty: float | None = -1.0  # (8) task reward of a reply that never stops; None: score it anyway
    warped_logprobs: bool = True  # (16) False: ratio and KL from the raw softmax at temperature 1, as TRL 0.8.6 did
    # the KL to the reference: a penalty in the reward (ppo, rloo) or a term of the loss (grpo, dr_grpo: always k3)
    kl_coef: float = 0.2  # beta (its starting value when adaptive); TRL's default, which the paper used
    kl_estimator: str = "k1"  # (4) of the reward's penalty: "k1", "abs" (the paper's confidence run) or "k3"
    adaptive_kl: bool = True  # (6)
    kl_target: float = 6.0  # nats per reply
    kl_horizon: int = 10000  # episodes
    normalize_reward: bool = False  # (7) ppo only: the critic-free algorithms' group baselines set the scale
    par: bool = False  # sigmoid(r(x, y) - r(x, y_ref)), y_ref a reference model's reply (llamalogue.rl.guards)
    repeat_penalty: float = 0.0  # c: a reply said n_i times in the batch of B loses c * (n_i - 1) / B (guards)
    reward_style: str = "ours"  # the rewards' rules (llamalogue.rl.reward_interface.STYLES): "ours" or "paper" (its scripts')
    # advantages (ppo only: the critic-free ones compare the replies of a group)
    gamma: float = 1.0  # (9)
    lam: float = 0.95
    whiten_advantages: bool = True  # (10)
    # update
    ppo_epochs: int = 4  # (13)
    minibatch_size: int = 4
    clip_eps: float | None = None  # (11) eps_low, the clip range below a ratio of 1; None: the algorithm's CLIP_RANGES
    clip_eps_high: float | None = None  # (11) eps_high, above 1; None: the algorithm's, else clip_eps (symmetric)
    dynamic_sampling_tries: int = 3  # dapo only: a group whose G task rewards are all equal is sampled again at most
    # this many times; still tied after them, it is dropped from the loss (and counted in dropped_groups)
    value_clip_eps: float = 0.2  # (12) ppo only, as are the value head's two settings
    value_coef: float = 0.1  # weight of the value loss: the value head shares the model's trunk
    value_head: str = "zero"  # (1) its initial weights: "zero" (V = 0 at the start) or "random" (nn.Linear's, as TRL)
    lr: float = 1.41e-5
    max_grad_norm: float | None = 1.0  # (15) None: no clipping
    early_stop_kl: float | None = 0.1  # (14) mean per-token approximate KL(pi_old || pi); None: never stop early
    ratio_threshold: float | None = None  # (14) a minibatch whose mean ratio exceeds it makes no update (TRL: 10)
    # the run
    total_prompts: int = 2000  # episodes (sampled replies) in the whole run; the prompts are reshuffled as they run out
    max_steps: int = 0  # > 0: stop after this many steps (--resume goes on to total_prompts)
    max_prompts: int | None = None  # distinct prompts to draw episodes from (None: all); bounds the teacher's work
    sample_every: int = 10  # steps between sample replies written to samples.jsonl
    save_every: int = 25  # steps between checkpoints
    keep_every: int = 0  # steps between weights-only copies kept in RUN/steps/step_N (a curve to evaluate); 0: none
    seed: int = 0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"RLConfig: algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.group_size is None:
            self.group_size = 1 if self.algorithm == "ppo" else CRITIC_FREE_GROUP_SIZE
        eps_low, eps_high = CLIP_RANGES.get(self.algorithm, (DEFAULT_CLIP_EPS, None))
        if self.clip_eps is None:
            self.clip_eps = eps_low
        if self.clip_eps_high is None:
            self.clip_eps_high = self.clip_eps if eps_high is None else eps_high
        at_least_one = ("group_size", "batch_size", "minibatch_size", "max_new_tokens", "max_prompt_tokens",
                        "ppo_epochs", "total_prompts", "sample_every", "save_every")
        for name in at_least_one + (("max_prompts",) if self.max_prompts is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"RLConfig: {name} ({getattr(self, name)}) must be at least 1")
        positive = ("lr", "clip_eps", "clip_eps_high", "value_clip_eps", "temperature", "kl_target", "kl_horizon")
        for name in positive + (("max_grad_norm",) if self.max_grad_norm is not None else ()):
            if getattr(self, name) <= 0:
                raise ValueError(f"RLConfig: {name} ({getattr(self, name)}) must be positive")
        if self.kl_coef < 0 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"RLConfig: need kl_coef >= 0 ({self.kl_coef}), gamma ({self.gamma}) and lam "
                             f"({self.lam}) in [0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"RLConfig: kl_estimator {self.kl_estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"RLConfig: need top_k >= 0 ({self.top_k}) and top_p in (0, 1] ({self.top_p})")
        self.check_at_least(0, "max_steps", "keep_every", "dynamic_sampling_tries", "repeat_penalty")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"RLConfig: batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")
        if self.batch_size % self.group_size:
            raise ValueError(f"RLConfig: batch_size ({self.batch_size}, replies per step) must be a multiple of "
                             f"group_size ({self.group_size}, replies per prompt)")
        if self.critic_free and self.group_size < 2:
            raise ValueError(f"RLConfig: {self.algorithm} compares the replies to one prompt: group_size "
                             f"({self.group_size}) must be at least 2")
        if self.critic_free and self.normalize_reward:
            raise ValueError(f"RLConfig: normalize_reward is PPO's; {self.algorithm}'s group baseline sets the scale")

    @property
    def critic_free(self) -> bool:
        """Every algorithm but PPO: no value head, the other replies to the same prompt are the baseline."""
        return self.algorithm != "ppo"

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size

    @property
    def logprob_temperature(self) -> float:
        """(16) The temperature of the distribution whose log-probs the ratio and the KL use."""
        return self.temperature if self.warped_logprobs else 1.0

    presets = PRESETS
    # What a resumed run may change: how long it runs (episodes, where it stops) and how often it reports and saves.
    resume_may_change = frozenset({"total_prompts", "max_steps", "sample_every", "save_every", "keep_every"})

    @classmethod
    def from_preset(cls, name: str, reward: str | None = None, **overrides) -> "RLConfig":
        """The preset's settings, then those it sets for this reward (PRESET_BY_REWARD), then the overrides."""
        return super().from_preset(name, **{**PRESET_BY_REWARD.get((name, reward), {}), **overrides})


# What a preset sets for one reward only. The paper's confidence script (ppo_training_conf.py) changed four settings;
# and each reward ran as long as the checkpoint the paper evaluated (its evaluate_*.py and plot_reward.py): bleu and
# semsim `epoch-1` = 13,750 steps of 16 = 220,000 episodes, llm `checkpoint-5000` = 80,000, confidence `epoch-1` =
# 8,645 steps = 138,320.
PRESET_BY_REWARD = {
    ("paper", "bleu"): dict(total_prompts=220_000),
    ("paper", "semsim"): dict(total_prompts=220_000),
    ("paper", "llm"): dict(total_prompts=80_000),
    ("paper", "confidence"): dict(lr=5e-6, minibatch_size=2, kl_estimator="abs", kl_coef=0.02, total_prompts=138_320),
}
