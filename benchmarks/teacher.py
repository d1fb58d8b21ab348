"""Teacher speed: SmolLM2 on our Llama with its KV cache vs transformers' generate, side by side.

    python -m benchmarks teacher [--rows 32] [--new-tokens 30] [--repeats 3] [--teacher ID_OR_PATH] [--device cpu]

Both backends hold the same weights (our model takes them from the transformers model through llamalogue.hf) and
sample, with the same settings (temperature 0.7, top-p 0.9), continuations of the same batch of chat contexts: a
batch as teacher_replies builds it, rows that share one example set (here the embedded real CHILDES mother turns of
the largest set, repeated as `--n K` repeats a prompt). So that both do exactly the same work, stopping is switched
off: every row gets --new-tokens tokens. Each repeat times one batch per backend, alternating which goes first. The
last line is `teacher ratio=X.XX`: transformers' time / ours (> 1: ours is faster). What ours does differently: the
rows' common prefix (system prompt + examples) runs once, not once per row (teacher.SharedPrefix), and decoding
uses llamalogue.generation's preallocated KV cache.
"""

import argparse
import time
from collections import Counter

import torch

from llamalogue.teacher import DEFAULT_EXAMPLES, Teacher, TeacherConfig


def timed_sample(teacher: Teacher, backend, contexts, seed: int) -> float:
    """Seconds for one batch with backend (our Llama, or None: transformers' generate), stopping switched off."""
    saved = teacher.ours, teacher.stop_ids
    teacher.ours, teacher.stop_ids = backend, [len(teacher.tokenizer)]  # an id no token has: rows never stop
    try:
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        teacher.sample(contexts, seed)
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started
    finally:
        teacher.ours, teacher.stop_ids = saved


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32, help="rows per batch")
    parser.add_argument("--new-tokens", type=int, default=TeacherConfig.max_new_tokens, help="tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", default=None, help="a Llama teacher: HF folder, .gguf or hub id (default SmolLM2)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    config = TeacherConfig(batch_size=args.rows, max_new_tokens=args.new_tokens)
    teacher = Teacher(args.teacher, config=config, device=args.device, backend="llamalogue")
    by_set = Counter(teacher.shot_set(mother) for mother, _ in DEFAULT_EXAMPLES)
    largest = by_set.most_common(1)[0][0]
    mothers = [mother for mother, _ in DEFAULT_EXAMPLES if teacher.shot_set(mother) == largest]
    contexts = [teacher.context_ids(teacher.child_messages(mothers[i % len(mothers)])) for i in range(args.rows)]
    ours = teacher.ours
    timed_sample(teacher, ours, contexts[:2], seed=0)  # warm-up: first-call allocations of both backends
    timed_sample(teacher, None, contexts[:2], seed=0)
    totals = {"transformers": 0.0, "llamalogue": 0.0}
    for repeat in range(args.repeats):
        order = [("transformers", None), ("llamalogue", ours)]
        for name, backend in order if repeat % 2 == 0 else order[::-1]:
            totals[name] += timed_sample(teacher, backend, contexts, seed=repeat)
    replies = args.rows * args.repeats
    print(f"teacher {teacher.id} on {teacher.device} ({torch.get_num_threads()} threads): {args.repeats} batches x "
          f"{args.rows} rows x {args.new_tokens} new tokens; chat contexts of "
          f"{min(map(len, contexts))}-{max(map(len, contexts))} tokens, {len(mothers)} prompts of one example set")
    for name, seconds in totals.items():
        print(f"  {name:12s} {replies / seconds:7.2f} replies/s  ({seconds:.1f} s)")
    print(f"teacher ratio={totals['transformers'] / totals['llamalogue']:.2f}")


if __name__ == "__main__":
    main()
