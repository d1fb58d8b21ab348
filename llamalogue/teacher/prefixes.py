"""What the teacher keeps computed: the prefixes its contexts continue (llamalogue.generation.SharedPrefix), so that
the same tokens do not run through SmolLM2 twice.

- An example set's prefix (the instruction, the examples, the opening of the mother's turn): every context of the
  set starts with it; computed once per process and per model that runs it (ours, or the bf16 sampler).
- A prompt's turn (all of its context but the last token, which predicts the reply's first): run for a prompt with
  PROMPT_PREFIX_ROWS rows or more (the cache's 10 samples), the turns of many prompts as one batch, and kept (up to
  TURNS_KEPT_BYTES), so that scoring the replies just sampled, or an RL policy's replies to the same prompts, does
  not run them again.
"""

import collections

import torch

from llamalogue.generation import SharedPrefix, split_common_prefix

PROMPT_PREFIX_ROWS = 4  # rows of one prompt from which reply and loglik run the prompt's turn once for all of them
TURNS_KEPT_BYTES = 2**30  # prompts' turns kept computed (SmolLM2 in fp32: ~0.9 MB a turn, a thousand of them)


class KeptPrefixes:
    """A teacher's computed prefixes, by (the model's dtype, example set) and (the model's dtype, prompt)."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.examples: dict[tuple[torch.dtype, int], SharedPrefix] = {}
        self.turns: collections.OrderedDict[tuple[torch.dtype, str], SharedPrefix] = collections.OrderedDict()

    def example_prefix(self, shot_set: int, model) -> SharedPrefix:
        """The tokens that every context of this example set starts with (system prompt, examples, the opening of
        the mother's turn) in the cache of `model` (the teacher's own Llama, or its sampler). Computed once and
        kept: the teacher answers and scores new prompts all the time, but always after one of the same few example
        sets."""
        teacher = self.teacher
        key = (model.embed.weight.dtype, shot_set)  # the sampler is ours, or its copy in another dtype
        if key not in self.examples:
            # two prompts that differ from their first character on: their contexts part where the prompt begins
            contexts = [teacher.context_ids(teacher.child_messages(prompt, shot_set)) for prompt in ("a", "b")]
            self.examples[key] = SharedPrefix(model, split_common_prefix(contexts, keep=1)[0])
        return self.examples[key]

    def rows(self, prompts: list[str], contexts: list[list[int]], model) -> list[SharedPrefix]:
        """The computed prefix (in `model`) that each row's context continues: its prompt's turn, kept or run now
        (for a prompt with PROMPT_PREFIX_ROWS rows or more, many as one batch: SharedPrefix.batch), else its example
        set's prefix. (A context that does not extend its example prefix token for token -- a merge at the prompt's
        start -- gets a turn of its own, run alone.)"""
        rows_per_prompt = collections.Counter(prompts)
        context_of = dict(zip(prompts, contexts))
        examples = {p: self.example_prefix(self.teacher.shot_set(p), model) for p in context_of}
        extends = {p: context_of[p][: examples[p].length] == examples[p].tokens for p in context_of}
        dtype = model.embed.weight.dtype  # the sampler is ours, or its copy in another dtype
        # a kept turn serves every row of its prompt; a prompt with many rows, or whose context does not extend its
        # examples, has its turn run now
        turns = {p: turn for p in context_of
                 if (turn := self.turns.get((dtype, p))) is not None and turn.tokens == context_of[p][:-1]}
        by_examples = collections.defaultdict(list)  # the turns to run, by the example prefix they extend
        for p in context_of:
            if p in turns or (rows_per_prompt[p] < PROMPT_PREFIX_ROWS and extends[p]):
                continue
            if extends[p]:
                by_examples[examples[p]].append(p)
            else:
                turns[p] = SharedPrefix(model, context_of[p][:-1])
        for start, group in by_examples.items():
            for first in range(0, len(group), self.teacher.config.batch_size):
                chunk = group[first : first + self.teacher.config.batch_size]
                turns.update(zip(chunk, SharedPrefix.batch(model, [context_of[p][:-1] for p in chunk], start)))
        for p, turn in turns.items():  # kept, the most recently used last; the oldest beyond TURNS_KEPT_BYTES go
            self.turns[(dtype, p)] = turn
            self.turns.move_to_end((dtype, p))
        while sum(turn.keys.nbytes + turn.values.nbytes for turn in self.turns.values()) > TURNS_KEPT_BYTES:
            self.turns.popitem(last=False)
        return [turns.get(p, examples[p]) for p in prompts]
