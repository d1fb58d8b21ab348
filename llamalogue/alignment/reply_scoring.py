"""Scoring replies: from (prompt, reply) texts to token rows, and a model's score of each row.

DPO, the reward model and the PMI reward all score a child reply y after a caregiver prompt x, laid out as in
pretraining (see llamalogue.corpus.build), one row per exchange:

    [BOS] *MOT: what is that ?\\n*CHI: it looks like a gun .\\n

The scored part of a row is the reply: the tokens after its speaker tag `*CHI:`, up to and including the newline
that ends the child's turn. Every turn ends with "\\n" in the pretraining text and generation stops there, so
scoring the newline includes where a reply ends. Everything before is context: BOS, the prompt, the speaker tag.

DPO can lay its pairs out as the paper's TRL trainer did instead (`layout="paper"`, `encode_reply_as_trl`).

    encode_reply -> collate -> score                  one batch, with gradients (training: pair_scores)
    encode_reply -> length_batches -> collate -> score -> back into the input order
                                                      many rows, no gradients (score_replies)

A score is a function (model, tokens, attention, reply_mask) -> [N]: `reply_logprob_sums`, log π(y|x), by
default; the reward model's r(x, y) reads the last token instead (llamalogue.alignment.reward_model).
"""

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llamalogue.checkpoint import load_model
from llamalogue.corpus.dialogue_files import SPEAKER_TAG, Pair
from llamalogue.model import default_device
from llamalogue.run_dir import RunError


def encode_reply(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    """[BOS] + prompt "\\n" reply + "\\n" as token ids, and the index of the reply's first scored token.

    The prompt and the reply (with its speaker tag) are encoded as one text, exactly as the pretraining triplets were.
    The scored part starts right after the reply's speaker tag: its tokens are the encoding of "prompt\\n*CHI:".
    """
    tag = SPEAKER_TAG.match(reply)
    if tag is None:
        raise ValueError(f"reply {reply!r} does not start with a speaker tag such as '*CHI:'")
    context = [tokenizer.bos_id] + tokenizer.encode(f"{prompt}\n{tag.group()}")
    ids = [tokenizer.bos_id] + tokenizer.encode(f"{prompt}\n{reply}") + [tokenizer.newline_id]
    if ids[: len(context)] != context:  # a speaker tag is one piece, so this holds for every well-formed pair
        raise ValueError(f"the tokenizer splits {prompt!r} + {reply!r} across the speaker tag")
    return ids, len(context)


def encode_reply_as_trl(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    """prompt + reply + [EOS] as token ids, the two tokenized apart with no BOS, and the index of the reply's first
    token: the rows of TRL's DPOTrainer (0.19, `tokenize_row`), which the paper trained with. The whole reply is
    scored, its speaker tag `*CHI:` included, and the EOS after it."""
    context = tokenizer.encode(prompt)
    if not context:
        raise ValueError(f"prompt {prompt!r} has no tokens")
    return context + tokenizer.encode(reply) + [tokenizer.eos_id], len(context)


PAIR_LAYOUTS = {"ours": encode_reply, "paper": encode_reply_as_trl}


def tagged(prompts: list[str], replies: list[str]) -> list[tuple[str, str]]:
    """(prompt, reply) exchanges of untagged texts ("what is that ?", "a ball ."), tagged as the corpus writes them."""
    return [(f"*MOT: {prompt}", f"*CHI: {reply}") for prompt, reply in zip(prompts, replies)]


def pair_exchanges(pairs: list[Pair]) -> list[tuple[str, str]]:
    """The (prompt, chosen) exchange of every pair, then the (prompt, rejected) exchange of every pair: scores[:n]
    are the chosen replies', scores[n:] the rejected ones'."""
    return [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def pairs_that_fit(tokenizer, pairs: list[Pair], max_len: int, layout: str = "ours") -> tuple[list[Pair], int]:
    """(the pairs whose rows both fit in max_len tokens, the number of pairs left out for being longer)."""
    fits, encode = [], PAIR_LAYOUTS[layout]
    for number, pair in enumerate(pairs, 1):
        try:
            longest = max(len(encode(tokenizer, pair.prompt, reply)[0]) for reply in (pair.chosen, pair.rejected))
        except ValueError as error:
            raise ValueError(f"pair {number}: {error}") from None
        if longest <= max_len:
            fits.append(pair)
    return fits, len(pairs) - len(fits)


def trainable_pairs(tokenizer, pairs: list[Pair], max_len: int, layout: str, notes: list[str]) -> list[Pair]:
    """The training pairs that fit in max_len tokens; those left out are counted in the run's notes, and a run
    with none left is a RunError."""
    pairs, too_long = pairs_that_fit(tokenizer, pairs, max_len, layout)
    if too_long:
        notes.append(f"dropped {too_long:,} pairs longer than the model's {max_len} tokens")
    if not pairs:
        raise RunError("no training pairs left")
    return pairs


def collate(rows: list[tuple[list[int], int]], pad_id: int, device):
    """Right-padded token rows [N, T], their attention mask [N, T], and the reply mask [N, T-1] (bool).

    The reply mask lines up with the predictions: column t predicts token t + 1, so scored token i sits in
    column i - 1.
    """
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    reply = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    for row, (ids, start) in enumerate(rows):
        tokens[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        reply[row, start - 1 : len(ids) - 1] = True
    return tokens.to(device), attention.to(device), reply.to(device)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of rows of similar length, so that padding costs little (for scoring, where the order
    of the rows does not matter, unlike in training)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def reply_logprob_sums(model, tokens, attention, reply):
    """log π(y|x) = sum_t log π(y_t | x, y_<t) over each row's reply tokens, [N], from collate's tensors.

    The output layer runs only where a reply token is predicted: logits at every position of every row (prompt and
    padding included) would cost more than the transformer itself with a 16k vocabulary.
    """
    hidden = model(tokens, attention, compute_logits=False)[:, :-1]  # column t predicts token t + 1
    logits = model.lm_head(hidden[reply]).float()  # [scored tokens, vocab]
    token_logprobs = -F.cross_entropy(logits, tokens[:, 1:][reply], reduction="none")
    row_of_token = reply.nonzero()[:, 0]
    return torch.zeros(len(tokens), device=tokens.device).index_add(0, row_of_token, token_logprobs)


def reply_lengths(tokenizer, pairs: list[Pair], layout: str = "ours") -> torch.Tensor:
    """|y|, the scored tokens of the chosen and of the rejected replies, [B, 2] (SimPO normalises by them)."""
    encode = PAIR_LAYOUTS[layout]
    rows = [encode(tokenizer, prompt, reply) for prompt, reply in pair_exchanges(pairs)]
    return torch.tensor([len(ids) - start for ids, start in rows], dtype=torch.float).view(2, -1).T


def pair_scores(model, tokenizer, pairs: list[Pair], score=reply_logprob_sums, layout: str = "ours"):
    """The scores of the chosen and of the rejected replies, each [B], in one forward pass with gradients."""
    rows = [PAIR_LAYOUTS[layout](tokenizer, prompt, reply) for prompt, reply in pair_exchanges(pairs)]
    scores = score(model, *collate(rows, tokenizer.pad_id, next(model.parameters()).device))
    return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def score_replies(model, tokenizer, exchanges: list[tuple[str, str]], batch_size: int, score=reply_logprob_sums,
                  desc: str | None = None, layout: str = "ours") -> torch.Tensor:
    """The score of every (prompt, reply) exchange, [N] on the CPU, in the order given.

    Rows are scored in batches of similar length (length_batches) and each batch's scores are written back to the
    rows' own places. desc: a progress bar's label (None: no bar)."""
    rows = [PAIR_LAYOUTS[layout](tokenizer, prompt, reply) for prompt, reply in exchanges]
    scores = torch.zeros(len(rows))
    device = next(model.parameters()).device
    for batch in tqdm(length_batches([len(ids) for ids, _ in rows], batch_size), desc=desc, disable=desc is None,
                      unit="batch", leave=False):
        scores[batch] = score(model, *collate([rows[i] for i in batch], tokenizer.pad_id, device)).float().cpu()
    return scores


class BabyScorer:
    """log P_baby(y | x): a frozen llamalogue's log-likelihood of the reply and the newline that ends it, after
    `[BOS] *MOT: x\\n*CHI:` -- the layout of pretraining and of DPO (PMI's reference scorer, llamalogue.rl.rewards)."""

    def __init__(self, run_dir, device: str | None = None, batch_size: int = 64):
        self.model, self.tokenizer = load_model(run_dir, device or default_device())
        self.batch_size = batch_size

    def loglik(self, prompts: list[str], replies: list[str]) -> list[float]:
        """log P_baby(y | x) of untagged prompts and replies ("what is that ?", "a ball .")."""
        return score_replies(self.model, self.tokenizer, tagged(prompts, replies), self.batch_size).tolist()
