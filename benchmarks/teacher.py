"""Teacher speed: SmolLM2 on our Llama with its KV cache vs transformers' generate, side by side.

    python -m benchmarks teacher [--rows 64] [--new-tokens 30] [--repeats 3] [--teacher ID_OR_PATH] [--device cpu]

Both backends hold the same weights (our model takes them from the transformers model through llamalogue.hf) and
sample, with the same settings (temperature 0.7, top-p 0.9), continuations of the same batch of chat contexts: a
batch as teacher_replies builds it, rows that share one example set (here the embedded real CHILDES mother turns of
the largest set, repeated as `--n K` repeats a prompt). So that both do exactly the same work, stopping is switched
off: every row gets --new-tokens tokens. The backends take turns (llamalogue.measured_speed.median_seconds: a
warm-up call each, then --repeats rounds, median time). The last line is `teacher ratio=X.XX`: transformers' time /
ours (> 1: ours is faster). What ours does differently: the rows' common prefix (system prompt + examples) runs
once, not once per row, and so does each prompt's turn for its many rows (generation.SharedPrefix,
teacher.prefixes.KeptPrefixes.rows, as Teacher.reply runs them; both computed inside every timed call, nothing kept
from one call to the next); the prefill applies the output layer to the last column only;
decoding uses llamalogue.generation's preallocated KV cache, a nucleus found among the top candidates instead of a
sort of the 49,152-token vocabulary, and bf16 weights where they sample faster on this machine (TeacherConfig.dtype,
measured; transformers runs the model as loaded, fp32).
"""

import argparse
import math
from collections import Counter

import torch

from benchmarks.common import machine
from llamalogue.measured_speed import median_seconds
from llamalogue.teacher.few_shot import DEFAULT_EXAMPLES
from llamalogue.teacher.config import TeacherConfig
from llamalogue.teacher.llm import Teacher
from llamalogue.teacher.prefixes import KeptPrefixes


def sample_with(teacher: Teacher, backend, prompts: list[str], contexts: list[list[int]]):
    """One batch with backend (our Llama, or None: transformers' generate), stopping switched off. Ours samples
    each row after its prompt's turn, computed now (nothing kept from an earlier call), as Teacher.reply does."""
    saved = teacher.sampler, teacher.stop_ids
    teacher.sampler, teacher.stop_ids = backend, [len(teacher.tokenizer)]  # an id no token has: rows never stop
    try:
        prefixes = KeptPrefixes(teacher).rows(prompts, contexts, backend) if backend is not None else None
        teacher.sample(contexts, [0] * math.ceil(len(contexts) / teacher.config.batch_size), prefixes)  # a seed a batch
    finally:
        teacher.sampler, teacher.stop_ids = saved


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=TeacherConfig.batch_size, help="rows per batch")
    parser.add_argument("--new-tokens", type=int, default=TeacherConfig.max_new_tokens, help="tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", default=None, help="a Llama teacher: HF folder, .gguf or hub id (default SmolLM2)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    print(machine())

    config = TeacherConfig(batch_size=args.rows, max_new_tokens=args.new_tokens)
    teacher = Teacher(args.teacher, config=config, device=args.device, backend="llamalogue")
    by_set = Counter(teacher.shot_set(mother) for mother, _ in DEFAULT_EXAMPLES)
    largest = by_set.most_common(1)[0][0]
    mothers = [mother for mother, _ in DEFAULT_EXAMPLES if teacher.shot_set(mother) == largest]
    prompts = [mothers[i % len(mothers)] for i in range(args.rows)]
    contexts = [teacher.reply_context(prompt) for prompt in prompts]
    ours = teacher.sampler
    median = median_seconds({"transformers": lambda: sample_with(teacher, None, prompts, contexts),
                             "llamalogue": lambda: sample_with(teacher, ours, prompts, contexts)},
                            args.repeats, teacher.device.type)
    print(f"teacher {teacher.id} on {teacher.device} ({torch.get_num_threads()} threads): batches of {args.rows} rows "
          f"x {args.new_tokens} new tokens, median of {args.repeats}; chat contexts of "
          f"{min(map(len, contexts))}-{max(map(len, contexts))} tokens, {len(mothers)} prompts of one example set")
    for name, seconds in median.items():
        print(f"  {name:12s} {args.rows / seconds:7.2f} replies/s  ({seconds:.1f} s per batch)")
    print(f"teacher ratio={median['transformers'] / median['llamalogue']:.2f}")


if __name__ == "__main__":
    main()
