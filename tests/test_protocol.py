"""The paper's protocol: minicons' sum with its beginning-of-word correction, computed in our tree pass; Zorro
lowercased; lexical decision over every row of its set."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from llamalogue import evaluation as ev
from llamalogue.evaluation.protocol import apply_protocol, protocol_of
from llamalogue.evaluation.tasks import evaluate_suite
from llamalogue.hf import export
from llamalogue.suites import load_dialogue, load_lexical_decision, load_zorro
from test_evaluation import REPO, real_texts


def minicons_formula(lm, text: str) -> float:
    """minicons' sequence_score(text, reduction=sum, bow_correction=True), written out as its code does it (the
    per-token correction masks, before they cancel), in float64 from the model's full logits."""
    ids = [lm.bos_id] + lm.encode([text])[0]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0].double()
    logprobs = logits.log_softmax(-1)  # row t predicts token t + 1; the last row, what follows the text
    idx, begins = ids[1:], set(lm.word_start_ids)
    n = len(idx)
    score = logprobs[torch.arange(n), torch.tensor(idx)]
    forward = torch.tensor([1.0 if i == n - 1 or idx[i + 1] in begins else 0.0 for i in range(n)])
    current = torch.roll(forward, 1)
    current[0] = 0.0
    mass = logprobs[:, sorted(begins)].logsumexp(-1)  # log p(a word begins next | prefix), at every row
    return (score + forward * mass[1 : n + 1] - current * mass[:n]).sum().item()


def test_word_end_is_minicons_correction_by_hand_in_the_tree_and_the_padded_pass(tiny_runs, tmp_path):
    texts = real_texts()
    ours = ev.load_lm(tiny_runs[0], "cpu")
    via_hf = ev.load_lm(export(tiny_runs[0], tmp_path / "hf"), "cpu")  # transformers: the padded pass
    assert ours.word_start_ids == via_hf.word_start_ids and len(ours.word_start_ids) > 10
    for lm in (ours, via_hf):
        scored, _ = ev.score_texts(lm, texts, batch_size=4, word_end=True)
        plain, _ = ev.score_texts(lm, texts, batch_size=4)
        expected = [minicons_formula(lm, text) for text in texts]
        assert np.abs(np.array(scored) - expected).max() <= 1e-4
        assert not np.allclose(scored, plain)  # the word-end term is there, and changes the scores


@pytest.mark.skipif(importlib.util.find_spec("minicons") is None,
                    reason="minicons is not installed (a reference only: `.venv/bin/pip install minicons`)")
def test_paper_protocol_equals_minicons_itself(tiny_runs, tmp_path):
    from minicons import scorer

    hf_dir = export(tiny_runs[1], tmp_path / "hf")
    suite = apply_protocol(load_dialogue(REPO / "data/eval/dialogue/words_eval_sample.json", "dialogue_words"), "paper")
    texts = [text for item in suite.items[:25] for text in item.candidates]
    ours, _ = ev.score_texts(ev.load_lm(tiny_runs[1], "cpu"), texts, word_end=suite.word_end)
    reference = scorer.IncrementalLMScorer(str(hf_dir), device="cpu")
    theirs = [reference.sequence_score(text, reduction=lambda x: x.sum(0).item(), bow_correction=True)[0]
              for text in texts]
    assert np.abs(np.array(ours) - np.array(theirs)).max() <= 1e-4


def test_the_paper_protocol_lowercases_zorro_and_leaves_other_tasks_alone():
    zorro = load_zorro(REPO / "data/eval/zorro")
    paper = apply_protocol(zorro, "paper")
    assert paper.word_end and not zorro.word_end
    assert [c.lower() for item in zorro.items for c in item.candidates] == [c for i in paper.items for c in i.candidates]
    assert any(c != c.lower() for item in zorro.items for c in item.candidates)  # there was something to lowercase
    assert protocol_of("blimp", "paper") == "ours" and protocol_of("zorro", "ours") == "ours"
    with pytest.raises(ValueError, match="--protocol 'minicons'"):
        protocol_of("zorro", "minicons")


def test_lexical_decision_in_the_papers_format_counts_every_row(tiny_runs, tmp_path):
    """bbunzeck/lexical-decision's items: a real word (`lexeme`) and a matched nonword (`wug`), each scored alone.
    The paper's script divides by every row; a row it cannot score (an empty field) is never right."""
    rows = [{"lexeme": "doggy", "wug": "dobby", "id": 1}, {"lexeme": "ball", "wug": "bawl"},
            {"lexeme": "mommy", "wug": "mothy"}, {"lexeme": "", "wug": "flig"}, {"lexeme": "juice", "wug": "jeece"},
            {"lexeme": "cookie", "wug": "coopie"}]
    path = tmp_path / "lexical_decision.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    suite = load_lexical_decision(path)
    assert [item.candidates for item in suite.items][:2] == [["doggy", "dobby"], ["ball", "bawl"]]
    assert suite.skipped == 1 and len(suite.items) == 5
    lm = ev.load_lm(tiny_runs[0], "cpu")
    ours = evaluate_suite(lm, suite, replicates=20)[0]
    paper = evaluate_suite(lm, apply_protocol(suite, "paper"), replicates=20)[0]
    right = sum(p["right"] for p in paper.predictions)
    assert ours.n == 5 and paper.n == 6
    assert paper.value == pytest.approx(100 * right / 6)  # the unscorable row counts, and is wrong
    assert not paper.predictions[-1]["right"] and paper.predictions[-1]["scores"] == []
    alone = [ev.score_texts(lm, [word], word_end=True)[0][0] for word in ("doggy", "dobby")]
    assert paper.predictions[0]["scores"] == pytest.approx(alone, abs=1e-4)  # each word scored alone
