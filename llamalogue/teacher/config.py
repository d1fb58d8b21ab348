"""The teacher's settings (TeacherConfig): how it samples and scores a child reply; the paper's (PAPER_TEACHER).

What each setting does, and why the defaults, is in llamalogue.teacher.llm's docstring.
"""

from dataclasses import dataclass

from llamalogue.model import cpu_has_bf16

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
    # the sampling Llama's weights and KV cache: auto = bfloat16 where its products are native (CUDA; CPUs with AMX
    # or AVX512-BF16, where the teacher's 576 x 1,536 products of a 64-row decoding step run 3x faster than in fp32),
    # else float32. Log-likelihoods are always fp32: in bf16 a reply's value moves by up to 0.4 nats with the rows
    # it is batched with (SmolLM2's large activations), and the confidence reward ranks such values.
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


def sampling_dtype(dtype: str, device_type: str) -> str:
    """"float32" or "bfloat16": what TeacherConfig.dtype means on this device (auto: bf16 where its products are
    native, CUDA and CPUs with AMX or AVX512-BF16)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()) else "float32"
