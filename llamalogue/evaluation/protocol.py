"""How a task is scored: `ours` (the official BabyLM pipeline's rules, every task) or `paper` (the paper's own
scripts, for the benchmarks it scored itself: dialogue minimal pairs, Zorro, lexical decision).

The paper scored those three with minicons, `IncrementalLMScorer(model).sequence_score(text, reduction=sum,
bow_correction=True)` on its Hugging Face model (`fpadovani/communicative_baby_ppo`, evaluation/evaluate_*.py). Its
rules, each beside ours:

1. The score. minicons sums log p(t_i | BOS, t_<i) over the text's tokens (our exported tokenizer puts BOS first,
   so every token counts, as in ours), then applies the beginning-of-word correction (Pimentel & Meister, 2024; Oh
   & Schuler, 2024): a word's probability is that of its tokens *and* of the word ending there, i.e. of the next
   token beginning a new word (B: the tokens written with a leading "▁"). minicons adds, at each token i that ends
   a word, log p(B | t_<=i), and subtracts, at each token that begins one (the first excepted), log p(B | t_<i).
   Inside a text the two terms meet at every word boundary and cancel exactly, so what remains is

       score_paper(text) = sum_i log p(t_i | BOS, t_<i)  +  log p(B | BOS, t_1 .. t_n)

   ours without the last term (`scoring.token_logprobs(..., word_end=True)` computes it in the same tree pass).
2. The text: the dialogue pairs as `prompt + " " + reply`, as ours; Zorro sentences lowercased (its
   evaluate_zorro.py, lower_case=True); lexical decision scores each word alone, as ours.
3. The denominator: its lexical-decision script divides by every row of the set, so a row it cannot score (an
   empty lexeme or wug) counts as wrong; ours leaves such a row out and reports it as skipped.
4. A tie counts as wrong in both (`pos_score > neg_score`).

The other tasks keep the official pipeline's rules under either protocol.
"""

from dataclasses import replace

from llamalogue.suites import ChoiceItem, Suite

PROTOCOLS = ("ours", "paper")
PAPER_TASKS = ("dialogue_words", "dialogue_tokens", "zorro", "lexical_decision")


def protocol_of(task: str, protocol: str) -> str:
    """The protocol a task is scored under when `protocol` is asked for: the paper's only where it has one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return protocol if task in PAPER_TASKS else "ours"


def apply_protocol(suite: Suite, protocol: str) -> Suite:
    """The suite as `protocol` scores it (rules 1-3 above); under `ours`, or for another task, the suite itself."""
    if protocol_of(suite.name, protocol) == "ours":
        return suite
    items = suite.items
    if suite.name == "zorro":
        items = [replace(item, candidates=[c.lower() for c in item.candidates]) for item in items]
    if suite.name == "lexical_decision":  # rule 3: an item without candidates is one that is never right
        group = next(iter(suite.group_weights))
        items = items + [ChoiceItem(f"unscored:{k}", group, []) for k in range(suite.skipped)]
    return replace(suite, items=items, word_end=True)
