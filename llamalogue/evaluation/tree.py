"""Tree attention: our model run over the trie of all prefixes to score, every distinct prefix computed once.

The sequences to score form a trie rooted at BOS (node 0); node n stands for the prefix BOS t_1 .. t_d ending there,
d = depth(n). A row of trie nodes in depth-first order is a valid input to a causal transformer once

- each node sits at position depth(n), where its token sits in its own sequence, and
- each node attends to its ancestors and itself only. In depth-first order a subtree is contiguous, so

      node j attends to node i   <=>   i <= j < end(i)        (end(i): the slot after i's last descendant in the row)

Then the final hidden state h_n of every node is that of its prefix run alone (up to the order of floating-point
sums), and for every child c of n:

    log p(token(c) | prefix(n)) = h_n . w_token(c) - logsumexp(h_n W^T)        (W: the output layer, [vocab, dim])

Only nodes with children are run (a sequence's last token is only ever a target), each once: about a third fewer
tokens than the sentences themselves for BLiMP's minimal pairs, whose two sentences share their start and many of
which begin alike. The logsumexp, the costly part of the output layer, is computed once per node too.
"""

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from llamalogue.model import rope_cos_sin

ROW_SLOTS = 96  # nodes per row, at least: attention per node grows with them, the sharing between sequences slowly
HEAD_ROWS = 256  # hidden states per output-layer product: measured fastest on CPU (larger blocks leave the cache)


@dataclass
class Trie:
    """Node n > 0: a distinct prefix of the sequences, one token longer than its parent (node 0: BOS alone)."""

    parent: np.ndarray  # [nodes]
    token: np.ndarray  # [nodes]: the prefix's last token (node 0: none)
    depth: np.ndarray  # [nodes]: the prefix's length in tokens, BOS not counted
    chains: list[list[int]]  # per sequence: the nodes of its prefixes, shortest first (one per token)


def build_trie(sequences: list[tuple[int, ...]]) -> Trie:
    node: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    chains = []
    for seq in sequences:
        parent, chain = 0, []
        for t in seq:
            parent = node.setdefault((parent, t), len(node) + 1)
            chain.append(parent)
        chains.append(chain)
    edges = np.array([(n, p, t) for (p, t), n in node.items()], dtype=np.int64).reshape(-1, 3)
    parent, token, depth = (np.zeros(len(node) + 1, dtype=np.int64) for _ in range(3))
    parent[edges[:, 0]], token[edges[:, 0]] = edges[:, 1], edges[:, 2]
    for chain in chains:
        depth[chain] = np.arange(1, len(chain) + 1)
    return Trie(parent, token, depth, chains)


def pack_rows(trie: Trie, sequences: list[tuple[int, ...]]) -> tuple[list[list[int]], list[int]]:
    """(rows, sequences per row): the nodes to run, in depth-first order, rows of at most ROW_SLOTS nodes or twice
    the contexts of the row's first sequence, whichever is more (a long context then still shares its row with the
    continuations that follow it, as an EWoK or entity-tracking item's candidates).

    A sequence needs its contexts: BOS and every prefix but the whole. Taken in lexicographic order (depth-first),
    a sequence shares with the row only its common start with the sequence before it, and adds the rest of its
    contexts there, or starts a new row with all of them where they do not fit.
    """
    rows, counts, previous, capacity = [], [], [], 0
    for s in sorted(range(len(sequences)), key=sequences.__getitem__):
        contexts = [0, *trie.chains[s][:-1]]
        shared = 0
        while shared < min(len(contexts), len(previous)) and contexts[shared] == previous[shared]:
            shared += 1
        if not rows or (len(contexts) > shared and len(rows[-1]) + len(contexts) - shared > capacity):
            rows.append([])
            counts.append(0)
            shared, capacity = 0, max(ROW_SLOTS, 2 * len(contexts))
        rows[-1] += contexts[shared:]
        counts[-1] += 1
        previous = contexts
    return rows, counts


def subtree_ends(depth: np.ndarray) -> np.ndarray:
    """end(i) of every slot of rows in depth-first order, depths [R, S] (padding: -1): the first later slot whose
    depth is not greater than i's, where i's subtree stops (S if none)."""
    S = depth.shape[1]
    later = np.arange(S)[None, :] > np.arange(S)[:, None]  # [i, k]: slot k comes after slot i
    stops = later[None] & (depth[:, None, :] <= depth[:, :, None])  # [R, i, k]
    return np.where(stops.any(-1), stops.argmax(-1), S)


def tree_hidden(model, tokens: torch.Tensor, depths: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Final hidden states [R, S, dim] of rows of trie nodes, given their tokens, depths and subtree ends [R, S].

    Our model's own layers with the tree's positions and mask (`Llama.forward` builds a causal mask itself). The mask
    is additive (0 or -inf), made once for all layers (attention would convert a boolean one in each). A padding slot
    has end = its slot + 1: it attends to itself only, and no real node attends to it.
    """
    slot = torch.arange(tokens.shape[1], device=tokens.device)
    allowed = (slot[None, None, :] <= slot[None, :, None]) & (slot[None, :, None] < ends[:, None, :])  # [R, q, key]
    mask = torch.zeros(allowed.shape, device=tokens.device).masked_fill_(~allowed, float("-inf"))[:, None]
    cos, sin = rope_cos_sin(depths[:, None, :], model.config.head_dim, model.config.rope_theta)
    x = model.embed(tokens)
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, mask, None, i)
    return model.norm(x)


def plan(trie: Trie, sequences: list[tuple[int, ...]], batch_size: int, max_tokens: int):
    """The batches to run, each (nodes [R, S] with -1 as padding, sequences in it), and for every node the batch and
    flat slot of its first occurrence (a node repeated in a later row is scored in the first)."""
    rows, counts = pack_rows(trie, sequences)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))  # longest first: the largest batch fails first
    batches, start = [], 0
    while start < len(order):
        width, end, held = len(rows[order[start]]), start + 1, counts[order[start]]
        while end < len(order) and (end + 1 - start) * width <= max_tokens and held + counts[order[end]] <= batch_size:
            held += counts[order[end]]
            end += 1
        nodes = np.full((end - start, width), -1)
        for r, row in enumerate(order[start:end]):
            nodes[r, : len(rows[row])] = rows[row]
        batches.append((nodes, held))
        start = end
    offsets = np.cumsum([0] + [nodes.size for nodes, _ in batches])
    found, first = np.unique(np.concatenate([nodes.ravel() for nodes, _ in batches]), return_index=True)
    found, first = found[found >= 0], first[found >= 0]
    batch_of, slot_of = np.zeros(len(trie.parent), dtype=np.int64), np.zeros(len(trie.parent), dtype=np.int64)
    batch_of[found] = np.searchsorted(offsets, first, side="right") - 1
    slot_of[found] = first - offsets[batch_of[found]]
    return batches, batch_of, slot_of


def tree_logprobs(lm, sequences: list[tuple[int, ...]], trie: Trie, batch_size: int, max_tokens: int,
                  bar: tqdm, word_start_ids: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """log p(token(n) | prefix(parent(n))) for every node n > 0 of the trie of `sequences` (index 0: unused, NaN);
    with word_start_ids, also, per node n > 0, the mass those tokens have in the same distribution:

        log p(word start | prefix(parent(n))) = logsumexp_{b in word_start_ids} h . w_b - logsumexp(h W^T)

    A batch holds at most batch_size sequences and max_tokens slots, or one row that alone needs more; the bar
    counts sequences."""
    model, device = lm.model, lm.device
    weight = model.lm_head.weight
    batches, batch_of, slot_of = plan(trie, sequences, batch_size, max_tokens)
    # Every node but the root is a target, scored in the batch where its parent, its context, first runs.
    targets = np.arange(1, len(trie.parent))
    context_batch = batch_of[trie.parent[targets]]
    targets_of = np.split(targets[np.argsort(context_batch, kind="stable")],
                          np.cumsum(np.bincount(context_batch, minlength=len(batches)))[:-1])
    logprob = np.full(len(trie.parent), np.nan)
    word_start = None if word_start_ids is None else np.full(len(trie.parent), np.nan)
    for (nodes, held), targets in zip(batches, targets_of):
        bar.update(held)
        if not len(targets):  # every node of these rows first runs in another batch
            continue
        depths = np.where(nodes >= 0, trie.depth[nodes], -1)
        tokens = np.where(nodes > 0, trie.token[nodes], lm.bos_id)  # BOS at the root, and in padding (never seen)
        hidden = tree_hidden(model, torch.as_tensor(tokens, device=device),
                             torch.as_tensor(np.maximum(depths, 0), device=device),
                             torch.as_tensor(subtree_ends(depths), device=device)).flatten(0, 1)
        slots, context = np.unique(slot_of[trie.parent[targets]], return_inverse=True)
        states = hidden[torch.as_tensor(slots, device=device)]  # one per context
        log_normalizer, word_start_logit = [], []
        for i in range(0, len(states), HEAD_ROWS):
            logits = states[i : i + HEAD_ROWS] @ weight.T
            log_normalizer.append(torch.logsumexp(logits, dim=-1))
            if word_start_ids is not None:
                word_start_logit.append(torch.logsumexp(logits[:, word_start_ids], dim=-1))
        log_normalizer = torch.cat(log_normalizer)
        context = torch.as_tensor(context, device=device)
        target_logits = (states[context] * weight[torch.as_tensor(trie.token[targets], device=device)]).sum(-1)
        logprob[targets] = (target_logits - log_normalizer[context]).double().cpu().numpy()
        if word_start_ids is not None:
            word_start[targets] = (torch.cat(word_start_logit) - log_normalizer)[context].double().cpu().numpy()
    return logprob, word_start
