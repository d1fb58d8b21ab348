"""The model's padding, positions and key/value cache agree with plain full recomputation."""

import pytest
import torch

from llamalogue.generation import filter_logits, generate, sampling_candidates
from conftest import sequence_logprobs
from llamalogue.model import Llama, ModelConfig


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Llama(ModelConfig.preset("tiny", vocab_size=50, **overrides)).eval()


def test_presets_have_the_documented_sizes():
    small = Llama(ModelConfig.preset("small", vocab_size=16000))
    assert 2.5e6 < small.num_parameters() < 4.5e6  # "~3M parameters" with a 16k vocabulary
    assert ModelConfig.preset("paper").n_layers == 16


def test_left_padding_does_not_change_the_logits():
    model = tiny_model()
    seq = torch.randint(4, 50, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    with torch.no_grad():
        alone = model(seq)
        in_batch = model(padded, mask)[:, 3:]
    assert (alone - in_batch).abs().max() < 1e-5


def test_right_padding_does_not_change_the_logprobs():
    model = tiny_model()
    seq = torch.randint(4, 50, (1, 6))
    padded = torch.cat([seq, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    with torch.no_grad():
        alone = sequence_logprobs(model, seq)
        in_batch = sequence_logprobs(model, padded, mask)[:, :5]
    assert (alone - in_batch).abs().max() < 1e-5


def test_cached_decoding_equals_full_recomputation():
    model = tiny_model(n_kv_heads=2)  # grouped-query attention: 4 query heads share 2 key/value heads
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    out = generate(model, prompts, max_new_tokens=8, temperature=0)
    for prompt, new, logprobs in zip(prompts, out.tokens, out.logprobs):
        full = torch.tensor([prompt + new])
        with torch.no_grad():
            recomputed = sequence_logprobs(model, full)[0, len(prompt) - 1 :]
            greedy = model(full).argmax(-1)[0, len(prompt) - 1 : -1]
        assert (recomputed - logprobs).abs().max() < 1e-5
        assert greedy.tolist() == new  # greedy decoding picks the argmax of the full recomputation


def test_generation_stops_at_a_stop_token_and_reports_it():
    model = tiny_model()
    free = generate(model, [[5, 6, 7]], max_new_tokens=6, temperature=0)
    first = free.tokens[0][0]
    out = generate(model, [[5, 6, 7]], max_new_tokens=6, temperature=0, stop_ids={first})
    assert out.tokens == [[]] and out.stopped == [True] and out.stop_tokens == [first]
    assert free.stopped == [False] and len(free.tokens[0]) == 6


def test_a_reply_does_not_depend_on_when_the_other_rows_finish():
    """Finished rows leave the batch (and the cache) while the others decode on: every row samples what it samples
    in a batch where no row ever stops, up to its own stop token."""
    model = tiny_model()
    prompts = [[5 + i, 6, 7 + i] for i in range(8)]
    free = generate(model, prompts, 12, generator=torch.Generator().manual_seed(1))
    stop = {free.tokens[0][3], free.tokens[1][1]}
    out = generate(model, prompts, 12, stop_ids=stop, generator=torch.Generator().manual_seed(1))
    ends = [next((i for i, t in enumerate(row) if t in stop), None) for row in free.tokens]
    early = sorted(end for end in ends if end is not None)[:2]
    assert len(early) == 2 and early[1] < 11  # a quarter of the rows left the batch ...
    assert any(end is None or end > early[1] + 1 for end in ends)  # ... while others went on decoding
    for row, end in enumerate(ends):
        assert out.tokens[row] == free.tokens[row][:end]
        assert out.stop_tokens[row] == (None if end is None else free.tokens[row][end])
        assert torch.allclose(out.logprobs[row], free.logprobs[row][: len(out.tokens[row])], atol=1e-5)


def test_rows_that_wait_for_a_place_sample_what_they_sample_in_one_batch():
    """generate(..., max_rows=3): eight rows of different prompt lengths, after different prefixes or none, three
    decoding at once, the others taking the places of ended ones: each row's tokens, stop and log-probabilities are
    those of all eight decoded together, greedy or sampled."""
    from llamalogue.generation import SharedPrefix

    model = tiny_model(n_kv_heads=2)
    examples = SharedPrefix(model, [5, 6, 7, 8, 9, 10])
    turn = SharedPrefix(model, [5, 6, 7, 8, 9, 10, 11, 12, 13], start=examples)
    rows = [(examples, [20, 21]), (turn, [14]), (turn, [15, 16, 17]), (examples, [22]), (turn, [18]),
            (examples, [23, 24, 25, 26]), (turn, [19]), (examples, [27])]
    free = generate(model, [p.tokens + s for p, s in rows], 10, temperature=0)
    stop = {free.tokens[0][2], free.tokens[1][1], free.tokens[3][0]}  # rows end at different steps
    for temperature in (0, 1.0):
        after_prefixes = ([s for _, s in rows], [p for p, _ in rows])
        for prompts, prefixes in (after_prefixes, ([p.tokens + s for p, s in rows], None)):
            together, waiting = (generate(model, prompts, 10, temperature, stop_ids=stop, prefixes=prefixes,
                                          generator=torch.Generator().manual_seed(4), max_rows=max_rows)
                                 for max_rows in (None, 3))
            assert waiting.tokens == together.tokens and waiting.stop_tokens == together.stop_tokens
            assert 0 < sum(waiting.stopped) < len(rows) or temperature
            for mine, reference in zip(waiting.logprobs, together.logprobs):
                assert torch.allclose(mine, reference, atol=1e-5)


def test_inverse_cdf_picks_each_token_in_proportion_and_never_an_impossible_one():
    from llamalogue.generation import inverse_cdf_pick

    probs = torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0]).expand(1024, 5)
    uniforms = torch.arange(1024) / 1024  # evenly spread over [0, 1)
    counts = torch.bincount(inverse_cdf_pick(probs * 8, uniforms).squeeze(-1), minlength=5)  # unnormalised is fine
    assert counts.tolist() == [512, 0, 256, 256, 0]
    assert inverse_cdf_pick(probs[:1], torch.tensor([1 - 2**-24])).item() == 3  # u near 1: the last possible token
    assert inverse_cdf_pick(torch.tensor([[0.1, 0.0, 0.7, 0.3, 0.0]]), torch.tensor([1 - 2**-24])).item() == 3


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny_model()
    runs = [generate(model, [[5, 6], [7]], 10, generator=torch.Generator().manual_seed(3)).tokens for _ in range(2)]
    assert runs[0] == runs[1]


def sorted_nucleus(logits, temperature, top_k, top_p):
    """The plain reference: mask below the k-th logit, then sort the whole vocabulary for the nucleus."""
    logits = logits / temperature
    if top_k:
        logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[..., -1:], float("-inf"))
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = (probs.cumsum(-1) - probs) >= top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 0.9), (1.0, 50, 0.9), (1.0, 50, 1.0), (3.0, 0, 0.95)])
def test_sampling_candidates_are_the_sorted_nucleus(temperature, top_k, top_p):
    """The candidates (top-k, or a growing top-n for the nucleus) give the distribution a full sort gives, also when
    a flat row's nucleus holds far more tokens than the first NUCLEUS_CANDIDATES (temperature 3)."""
    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(0)) * 4
    logits[0] = 0.01 * logits[0]  # nearly flat: thousands of tokens in its nucleus
    reference = sorted_nucleus(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(filter_logits(logits, temperature, top_k, top_p)), torch.isfinite(reference))
    values, ids = sampling_candidates(logits, temperature, top_k, top_p)
    picked = torch.full_like(logits, float("-inf")).scatter(-1, ids, values.log_softmax(-1))
    assert torch.allclose(picked.exp(), reference.softmax(-1), atol=1e-6)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # softmax = [0.64, 0.24, 0.09, 0.03]: 0.64 < 0.7, so the nucleus needs the second token too.
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]


def test_the_decoding_step_computes_what_the_model_computes():
    """DecodeStep (stacked weights, one mask and angle table per step) against the model's own forward with a
    cache, on rows with left padding, a finished (padding) row and grouped-query attention."""
    from llamalogue.decode_step import DecodeStep

    model = tiny_model()  # tiny: 4 query heads share 2 key/value heads
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    caches = [model.new_cache(2, 9), model.new_cache(2, 9)]
    with torch.no_grad():
        for cache in caches:
            model(prompts, mask, cache=cache)
        step = DecodeStep(model)
        for tokens, active in (([13, 14], [True, True]), ([15, 16], [False, True]), ([17, 18], [True, True])):
            tokens, active = torch.tensor(tokens), torch.tensor(active)
            expected = model(tokens[:, None], active[:, None].long(), cache=caches[0])[:, -1]
            assert torch.allclose(step(tokens, active, caches[1]), expected, atol=1e-5)
            assert torch.equal(caches[0].next_pos, caches[1].next_pos) and caches[0].length == caches[1].length
            assert torch.allclose(caches[0].k, caches[1].k, atol=1e-6) and torch.equal(caches[0].key_mask,
                                                                                        caches[1].key_mask)


def test_rows_after_different_computed_prefixes_generate_as_their_whole_prompts():
    """generate(..., prefixes=...): each row continues its own SharedPrefix (of different lengths, one built from
    another with `start`), as the teacher samples a prompt's replies after its turn: the tokens and log-probabilities
    of generating from the whole prompts. Every row's prefix begins with the same examples, which decoding then
    reads once for all rows (DecodeStep's shared prefix)."""
    from llamalogue.generation import SharedPrefix

    model = tiny_model(n_kv_heads=2)
    examples = SharedPrefix(model, [5, 6, 7, 8, 9, 10])
    turn = SharedPrefix(model, [5, 6, 7, 8, 9, 10, 11, 12, 13], start=examples)
    rows = [(examples, [20, 21]), (turn, [14]), (turn, [15, 16, 17]), (examples, [22])] * 2
    free = generate(model, [prefix.tokens + suffix for prefix, suffix in rows], 8, temperature=0)
    stop = {free.tokens[0][2], free.tokens[1][1]}  # some rows end early and leave the batch
    for temperature, max_rows in ((0, None), (1.0, None), (1.0, 3)):  # 3: rows wait, then join the batch
        whole, after = (generate(model, prompts, 8, temperature, stop_ids=stop, prefixes=prefixes,
                                 generator=torch.Generator().manual_seed(2), max_rows=max_rows)
                        for prompts, prefixes in (([p.tokens + s for p, s in rows], None),
                                                  ([s for _, s in rows], [p for p, _ in rows])))
        assert after.tokens == whole.tokens and after.stop_tokens == whole.stop_tokens
        assert 0 < sum(after.stopped) < len(rows) or temperature
        for mine, reference in zip(after.logprobs, whole.logprobs):
            assert torch.allclose(mine, reference, atol=1e-5)


def test_a_shared_prefix_is_freed_once_dropped():
    """A SharedPrefix's cache is filled without an autograd graph, even with gradients on (the teacher's weights
    require them): a graph through a cache written in place is a reference cycle that is never freed, which grew an
    RL run with the confidence reward by ~300 MB a step until the machine ran out of memory."""
    import gc
    import weakref

    from llamalogue.generation import SharedPrefix

    model = Llama(ModelConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    examples = SharedPrefix(model, list(range(1, 30)))
    assert examples.keys.grad_fn is None
    prompt = SharedPrefix(model, list(range(1, 40)), start=examples)
    cache = weakref.ref(prompt.keys)
    del prompt
    gc.collect()
    assert cache() is None
