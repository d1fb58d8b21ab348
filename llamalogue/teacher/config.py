"""The teacher's settings (TeacherConfig): how it samples and scores a child reply; the paper's (PAPER_TEACHER).

What each setting does, and why the defaults, is in llamalogue.teacher.llm's docstring.
"""

from dataclasses import dataclass

import torch

from llamalogue.generation import generate
from llamalogue.measured_speed import faster
from llamalogue.model import Llama, ModelConfig

LAYOUTS = ("few-shot chat", "paper")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TeacherConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 30
    shots: int = 3  # real exchanges shown before the prompt
    shot_sets: int = 8  # fixed sets of examples; each prompt gets one (prompts with the same set share a prefix)
    tries: int = 4  # draws per reply before a rejected one is kept
    batch_size: int = 64  # sequences per forward pass
    layout: str = "few-shot chat"  # or "paper": the paper's scripts exactly (PAPER_TEACHER)
    # the sampling Llama's weights and KV cache: auto = whichever samples faster on this machine (sampling_dtype).
    # Log-likelihoods are always fp32: in bf16 a reply's value moves by up to 0.4 nats with the rows it is batched
    # with (SmolLM2's large activations), and the confidence reward ranks such values.
    dtype: str = "auto"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"TeacherConfig: layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TeacherConfig: dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")


# The paper's teacher (fpadovani/communicative_baby_ppo: answers_generation_vllm_fast.py, utils_ppo.py): the
# instruction and `Mother says: ...\n Child answers:` as plain text (no chat template, no examples), 10 samples at
# temperature 0.8 and top-p 0.8, at most 20 new tokens, stopped at a new line; its first utterance kept as written
# (paper_first_utterance, no CHILDES rewriting, no rejection: one draw); a reply's log-likelihood is that of
# " " + reply after the bare caregiver utterance and a space (lnP_mom: no instruction, no BOS).
PAPER_TEACHER = TeacherConfig(temperature=0.8, top_p=0.8, max_new_tokens=20, shots=0, tries=1, layout="paper")


# Sampling is timed on a slice of the default teacher (SmolLM2-135M-Instruct): its matrices' widths, 8 of its 30
# layers and a quarter of its 49,152-token output layer, which keeps the share of the work in the output layer (a
# fifth), at a quarter of the cost: a probe of a few seconds, once per machine.
TEACHER_SLICE = ModelConfig(vocab_size=49152 // 4, dim=576, n_layers=8, n_heads=9, n_kv_heads=3, hidden_dim=1536)
PROBE_ROWS, PROBE_PROMPT, PROBE_TOKENS = 64, 4, 4  # a batch of replies: 64 rows, 4 tokens after the shared prefix


def sampling_dtype(dtype: str, device) -> str:
    """"float32" or "bfloat16": what TeacherConfig.dtype means here. auto: the one that samples a batch of replies
    faster on this machine (llamalogue.measured_speed; once per machine), timed on a slice of the default
    teacher with random weights -- bf16 gains 3x on some CPUs with bf16 products and loses on others. Recorded by the
    run that resolves it, so a resumed run samples as it began."""
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(TEACHER_SLICE.vocab_size, (PROBE_ROWS, PROBE_PROMPT), generator=generator).tolist()
    models = {}

    def sample_with(name):
        if name not in models:  # built on first use: a model exists only if it is timed
            torch.manual_seed(0)
            model = Llama(TEACHER_SLICE).to(device)
            models[name] = model.to(torch.bfloat16) if name == "bfloat16" else model
        with torch.no_grad():
            generate(models[name], prompts, PROBE_TOKENS, temperature=0.7, top_p=0.9)

    probe = f"teacher sampling, {PROBE_ROWS} rows x {PROBE_PROMPT}+{PROBE_TOKENS} tokens, a slice of SmolLM2-135M"
    return faster(probe, {name: (lambda name=name: sample_with(name)) for name in ("float32", "bfloat16")},
                  str(device))["choice"]

