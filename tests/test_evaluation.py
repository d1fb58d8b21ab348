"""The scorer equals an independent transformers computation; suites read the real files as documented; metrics,
ties and bad input behave as promised; evaluate.py writes the poster's table."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
from llamalogue import evaluation as ev
from llamalogue.checkpoint import load_model
from llamalogue.corpus.dialogue_files import Pair
from llamalogue.evaluation import statistics, tasks
from llamalogue.suites import (ChoiceItem, Suite, SuiteError, load_blimp, load_dialogue, load_entity_tracking,
                               load_ewok, load_lexical_decision, load_reading, load_suite, load_zorro, suite_paths)

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMALOGUE_SHARED", REPO.parent / "shared"))
PAPER_DPO = SHARED / "data" / "paper" / "dpo"


def real_texts() -> list[str]:
    """Sentences of every shape the suites score: BLiMP, Zorro, a supplement dialogue, dialogue pairs."""
    blimp = [json.loads(line) for line in (REPO / "data/eval/blimp/adjunct_island.jsonl").open()][:6]
    zorro = (REPO / "data/eval/zorro/irregular-verb.txt").read_text().splitlines()[:4]
    turn = json.loads((REPO / "data/eval/supplement/turn_taking.jsonl").open().readline())["sentence_good"]
    return [b[k] for b in blimp for k in ("sentence_good", "sentence_bad")] + zorro + [
        turn, "*MOT: what is that ? *CHI: it looks like a gun .", "*MOT: what is that ? *CHI: you do it like that ."]


def test_scores_equal_an_independent_transformers_computation(tiny_runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamalogue.hf import export

    hf_dir = export(tiny_runs[0], tmp_path / "hf")
    texts = real_texts()
    ours = ev.sentence_logprobs(*load_model(tiny_runs[0]), texts, batch_size=4)
    through_hf = ev.score_texts(ev.load_lm(hf_dir, "cpu"), texts, batch_size=4)[0]  # our scorer, transformers model

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for text, mine, via_hf in zip(texts, ours, through_hf):
        ids = torch.tensor([tokenizer(text)["input_ids"]])  # the exported tokenizer puts BOS first itself
        assert ids[0, 0].item() == tokenizer.bos_token_id
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        expected = logprobs.gather(1, ids[0, 1:, None]).sum().item()
        assert abs(mine - expected) <= 1e-4, text
        assert abs(via_hf - expected) <= 1e-4, text


def test_batching_and_shared_prefixes_do_not_change_a_score(tiny_runs):
    lm = ev.load_lm(tiny_runs[0], "cpu")
    texts = real_texts()
    together, lengths = ev.score_texts(lm, texts + texts[:3], batch_size=5)
    alone = [ev.score_texts(lm, [t], batch_size=1)[0][0] for t in texts]
    assert np.allclose(together[: len(texts)], alone, atol=1e-4, rtol=0)
    assert together[len(texts) :] == together[:3]  # identical texts get identical scores
    assert lengths[0] == len(lm.encode([texts[0]])[0]) + 1  # + BOS
    mean = ev.score_texts(lm, texts, reduction="mean")[0]
    assert np.allclose(mean, [s / (n - 1) for s, n in zip(alone, lengths)], atol=1e-5)


@pytest.mark.parametrize("row_slots", [96, 8])
def test_tree_attention_gives_every_token_the_logprob_of_its_sequence_run_alone(tiny_runs, monkeypatch, row_slots):
    from llamalogue.evaluation import scoring, tree
    from conftest import sequence_logprobs

    monkeypatch.setattr(tree, "ROW_SLOTS", row_slots)  # 8: sequences split over rows, prefixes repeated across rows
    lm = ev.load_lm(tiny_runs[0], "cpu")
    texts = real_texts()
    encoded = lm.encode(texts)
    # Shared starts, a sequence that is a prefix of another, a repeat, an empty one, one longer than a row.
    sequences = encoded + [encoded[0][:3], encoded[0][:5], encoded[1], [], sum(encoded[:3], [])]
    scored = scoring.token_logprobs(lm, sequences, batch_size=3, max_tokens=64)
    for seq, logprobs in zip(sequences, scored):
        with torch.inference_mode():
            alone = sequence_logprobs(lm.model, torch.tensor([[lm.bos_id, *seq]]))[0].double().numpy()
        assert logprobs.shape == alone.shape and np.allclose(logprobs, alone, atol=1e-5, rtol=0)
    assert scoring.token_logprobs(lm, []) == []  # nothing to score: no batch, no error


def test_scores_stay_fp32_inside_a_bf16_autocast_training_loop(tiny_runs):
    model, tokenizer = load_model(tiny_runs[0])
    texts = real_texts()
    plain = ev.sentence_logprobs(model, tokenizer, texts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ev.sentence_logprobs(model, tokenizer, texts)
    assert inside == plain


def test_a_continuation_is_scored_given_its_context(tiny_runs):
    lm = ev.load_lm(tiny_runs[0], "cpu")
    context, word = "*MOT: what is", "that"
    whole, only_context = ev.score_texts(lm, [f"{context} {word}", context])[0]
    continuation = ev.score_texts(lm, [f"{context} {word}"], contexts=[context])[0][0]
    assert continuation < 0
    assert abs(only_context + continuation - whole) <= 1e-4


def test_ties_count_as_wrong_and_are_reported(tiny_runs):
    model, tokenizer = load_model(tiny_runs[0])
    model.train()
    pairs = [Pair("*MOT: look .", "*CHI: a ball .", "*CHI: a ball ."), Pair("*MOT: hi .", "*CHI: hi .", "*CHI: no .")]
    out = ev.dialogue_mp(model, tokenizer, pairs)
    assert out["n"] == 2 and out["ties"] == 1 and out["accuracy"] in (0.0, 0.5)
    assert model.training  # the caller's mode is restored
    assert ev.judge([-1.0, -1.0]) == (False, True) and ev.judge([-1.0, -2.0, -1.5]) == (True, False)
    suite = Suite("ties", "choice", [ChoiceItem("a", "g", ["a ball .", "a ball ."]),
                                     ChoiceItem("b", "g", ["the ball .", "ball the ."])], "test", group_weights={"g": 1})
    result = tasks.evaluate_suite(ev.as_lm(model, tokenizer), suite, replicates=20)[0]
    assert result.ties == 1 and result.value in (0.0, 50.0) and not result.predictions[0]["right"]


def test_zorro_pairs_the_second_line_as_the_good_one():
    suite = load_zorro()
    assert len(suite.items) == 23 * 50 and suite.skipped == 0
    first = {item.group: item for item in reversed(suite.items)}
    assert first["agreement_determiner_noun-between_neighbors"].candidates == [
        "this color must be white .", "this colors must be white ."]
    assert first["irregular-verb"].candidates[0].startswith("Michael chose ")


def test_blimp_groups_by_paradigm_and_field():
    suite = load_blimp()
    assert len(suite.group_weights) == 67 and math.isclose(sum(suite.group_weights.values()), 1.0)
    assert {item.meta["field"] for item in suite.items} <= {"syntax", "morphology", "semantics", "syntax/semantics"}
    supplement = suite_paths({})[0]["supplement"]
    assert sorted(load_blimp(supplement, "supplement").group_weights) == [
        "hypernym", "qa_congruence_easy", "qa_congruence_tricky", "subject_aux_inversion", "turn_taking"]


def test_entity_tracking_averages_operations_within_each_file():
    suite = load_entity_tracking()
    weights = suite.group_weights
    assert math.isclose(sum(weights.values()), 1.0)
    assert math.isclose(sum(w for g, w in weights.items() if g.startswith("regular_")), 1 / 3)
    item = suite.items[0]
    assert len(item.candidates) == 5 and all(c.startswith(x) for c, x in zip(item.candidates, item.contexts))


@pytest.mark.skipif(not PAPER_DPO.is_dir(), reason="shared paper data not found (set LLAMALOGUE_SHARED)")
def test_paper_dialogue_files_give_their_evaluation_rows():
    words = load_dialogue(PAPER_DPO / "len_pairs_no_overlap_1.csv", "dialogue_words")
    same = load_dialogue(PAPER_DPO / "huggingface_dpo_format_eval.json", "dialogue_words")
    tokens = load_dialogue(PAPER_DPO / "tok_pairs_no_overlap_1.csv", "dialogue_tokens")
    assert len(words.items) == len(same.items) == 7548 and len(tokens.items) == 7520
    assert [i.candidates for i in words.items] == [i.candidates for i in same.items]
    assert same.items[0].candidates == ["*MOT: you are green ? *CHI: I am blue .",
                                        "*MOT: you are green ? *CHI: and that one !"]


@pytest.mark.skipif(not (SHARED / "data/eval/babylm2025/ewok_filtered").is_dir(), reason="shared EWoK not found")
def test_ewok_reads_the_local_gzipped_files_as_the_pipeline():
    suite = load_ewok(SHARED / "data/eval/babylm2025/ewok_filtered")  # local only: never copied into the repo
    assert len(suite.items) == 7618 and suite.skipped == 0 and len(suite.group_weights) == 11
    assert all(c.startswith(item.contexts[0] + " ") for item in suite.items for c in item.candidates)


def test_malformed_lines_are_skipped_and_counted_and_missing_files_named(tmp_path):
    good = '{"sentence_good": "A cat sleeps.", "sentence_bad": "A cat sleep."}\n'
    (tmp_path / "agr.jsonl").write_text(good + "{not json\n" + '{"sentence_good": "x"}\n' + good)
    suite = load_blimp(tmp_path)
    assert len(suite.items) == 2 and suite.skipped == 2
    assert suite.problems[0].startswith("agr.jsonl:2: not JSON") and "not text: sentence_bad" in suite.problems[1]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jsonl").write_text("{not json\n")
    with pytest.raises(SuiteError, match="no usable items .*1 lines skipped: x.jsonl:1: not JSON"):
        load_suite("blimp", tmp_path / "broken")
    with pytest.raises(SuiteError, match="nowhere.*does not exist.*expected BabyLM 2025 .jsonl"):
        load_blimp(tmp_path / "nowhere")
    (tmp_path / "ld.csv").write_text("lexeme,wug\ndog,blick\ncat,\n")
    lexical = load_lexical_decision(tmp_path / "ld.csv")
    assert [i.candidates for i in lexical.items] == [["dog", "blick"]] and lexical.skipped == 1
    with pytest.raises(SuiteError, match="unknown suite"):
        suite_paths({"blimpp": "x"})
    paths, notes = suite_paths({}, eval_data=tmp_path)  # a root without the full data: each suite left out, said
    assert not paths and any(note.startswith("blimp: left out") for note in notes)


def test_a_folder_that_is_no_model_is_one_clear_error(tiny_runs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="neither a llamalogue run directory .* nor a Hugging Face causal-LM folder"):
        ev.load_lm(tmp_path)
    with pytest.raises(SystemExit, match="--model .*missing: does not exist"):  # checked before any scoring
        evaluate.main(["--model", str(tiny_runs[0]), "--model", str(tmp_path / "missing"), "--out", str(tmp_path)])
    config = (tiny_runs[0] / "config.json").read_text()
    with pytest.raises(SystemExit, match="is a model's run directory"):  # never overwrite a run's config and log
        evaluate.main(["--model", str(tiny_runs[0]), "--out", str(tiny_runs[0])])
    assert (tiny_runs[0] / "config.json").read_text() == config


def test_metrics_agree_with_their_definitions():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)  # ties in x
    assert math.isclose(statistics.spearman(x, y), stats.spearmanr(x, y)[0], abs_tol=1e-12)
    right_a, right_b = rng.random(200) < 0.6, rng.random(200) < 0.7
    discordant = int(np.sum(right_a != right_b))
    expected = stats.binomtest(int(np.sum(right_a & ~right_b)), discordant, 0.5).pvalue
    assert math.isclose(statistics.mcnemar_p(right_a, right_b), expected, rel_tol=1e-9)
    covariate = rng.normal(size=300)
    y = covariate + rng.normal(size=300)
    assert statistics.relative_r2_gain(y, [covariate], y) == pytest.approx(100.0)  # the predictor explains all the rest
    assert abs(statistics.relative_r2_gain(y, [covariate], rng.normal(size=300))) < 2.0  # noise explains ~nothing


def test_reading_rebuilds_the_lost_context_and_skips_nothing():
    suite = load_reading()
    assert suite.skipped == 0 and len(suite.items) == 554
    assert all(item.context for item in suite.items)
    first_words = [item for item in suite.items if item.prev_context is None]
    assert first_words and all(item.measures["context_length"] == 1 for item in first_words)


def test_evaluate_writes_the_table_results_and_predictions(tiny_runs, corpus_small_build, tmp_path):
    for suite, files in (("blimp", ["adjunct_island.jsonl", "causative.jsonl", "passive_1.jsonl"]),
                         ("zorro", ["irregular-verb.txt", "binding-principle_a.txt"])):
        (tmp_path / suite).mkdir()
        for name in files:
            (tmp_path / suite / name).write_text((REPO / "data/eval" / suite / name).read_text())
    out, threads = tmp_path / "eval", torch.get_num_threads()
    try:
        evaluate.main(["--model", str(tiny_runs[0]), "--model", str(tiny_runs[1]), "--out", str(out), "--paper",
                       "--tasks", "blimp,zorro,wug_adj,reading,dialogue_words,ours_words", "--bootstrap", "50",
                       "--suite", f"blimp={tmp_path / 'blimp'}", "--suite", f"zorro={tmp_path / 'zorro'}",
                       "--suite", f"ours_words={corpus_small_build}", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    names = list(results["models"])
    assert len(names) == 2 and names[0] != names[1]
    blimp = results["results"][names[0]]["blimp"]
    assert blimp["n"] == 60 and blimp["ci_low"] <= blimp["value"] <= blimp["ci_high"]
    assert set(blimp["breakdown"]) == {"adjunct_island", "causative", "passive_1", "field", "linguistics_term"}
    assert set(results["results"][names[1]]) == {"blimp", "zorro", "wug_adj", "reading_et", "reading_spr",
                                                 "dialogue_words", "ours_words"}
    assert {c["task"] for c in results["comparisons"]} == set(results["results"][names[0]])
    assert all(0.0 <= c["p"] <= 1.0 for c in results["comparisons"])
    table = (out / "results.md").read_text()
    assert "| Zero-shot (BabyLM) | BLiMP | ours |" in table  # --paper scores the paper's own benchmarks its way
    assert "| Zorro | paper |" in table and "| Dia. MP (Words) | paper |" in table
    assert "| COMPS | ours | n/a (data not available: --suite comps=DIR) |" in table
    assert "paper: llamalogue" in table and "| 56.05 |" in table and results["settings"]["protocol"] == "paper"
    # each suite by paradigm: the first model's accuracy and the other's difference to it, per paradigm
    assert "## blimp by paradigm" in table and "## zorro by paradigm" in table and "dialogue_words by" not in table
    first, second = (results["results"][name]["zorro"]["breakdown"] for name in names)
    for paradigm in ("irregular-verb", "binding-principle_a"):
        assert f"| {paradigm} | {first[paradigm]:.1f} | {second[paradigm] - first[paradigm]:+.1f} |" in table
    assert table.count("| sd of the differences over paradigms |") == 2
    lines = (out / "predictions" / names[0] / "zorro.jsonl").read_text().splitlines()
    assert len(lines) == results["results"][names[0]]["zorro"]["n"] == 100
    assert (out / "results.png").stat().st_size > 0 and (out / "log.csv").is_file()


def test_one_bad_dialogue_record_is_skipped_and_counted_with_its_place(tmp_path):
    good = {"prompt": "*MOT: what is that ?", "chosen": "*CHI: a ball .", "rejected": "*CHI: no ."}
    records = [good, {**good, "chosen": None}, {"prompt": "*MOT: hi ."}, good]
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    suite = load_dialogue(tmp_path / "pairs.json", "dialogue_words")
    assert len(suite.items) == 2 and suite.skipped == 2
    assert suite.problems == ["pairs.json:2: chosen is missing", "pairs.json:3: chosen is missing"]
    (tmp_path / "pairs.jsonl").write_text("\n".join([json.dumps(good), "{broken", json.dumps({**good, "rejected": ""}),
                                                     json.dumps(good)]) + "\n")
    suite = load_dialogue(tmp_path / "pairs.jsonl", "ours_words")
    assert len(suite.items) == 2 and [p.split(":")[1] for p in suite.problems] == ["2", "3"]
    rows = ["pospair,negpair", '"*MOT: hi .\t*CHI: hi .","*MOT: hi .\t*CHI: no ."', '"*MOT: hi .","*MOT: hi .\tx"',
            '"*MOT: a .\t*CHI: b .","*MOT: c .\t*CHI: d ."', '"*MOT: yes .\t*CHI: yes .","*MOT: yes .\t*CHI: no ."']
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    suite = load_dialogue(tmp_path / "pairs.csv", "dialogue_tokens")
    assert [i.candidates[0] for i in suite.items] == ["*MOT: hi . *CHI: hi .", "*MOT: yes . *CHI: yes ."]
    assert [p.split(":")[1] for p in suite.problems] == ["3", "4"]  # CSV line numbers, header = line 1


def test_every_reader_skips_a_bad_line_with_its_place(tmp_path):
    from llamalogue.suites import load_comps, load_wug

    def folder(name, lines):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        return tmp_path / name

    blimp = load_blimp(folder("agr", [{"sentence_good": "a b .", "sentence_bad": "b a ."},
                                      {"sentence_good": 5, "sentence_bad": "b a ."}, [1, 2]]))
    wug = load_wug(folder("wug_past_tense", [{"sentences": "a\tb", "ratio": 0.5}, {"sentences": "a\tb", "ratio": None},
                                             {"sentences": "a", "ratio": 0.5}]), "wug_past")
    comps = load_comps(folder("comps_base", [{"prefix_acceptable": "a dog", "prefix_unacceptable": "a cup",
                                              "property_phrase": "barks ."}, {"prefix_acceptable": "a dog"}]))
    entity = load_entity_tracking(folder("regular", [{"input_prefix": "Box 0 contains", "options": [" a", " b"],
                                                      "numops": 0}, {"input_prefix": "x", "options": [1, 2],
                                                                     "numops": 0}]))
    for suite, places in ((blimp, ["agr.jsonl:2", "agr.jsonl:3"]), (wug, ["wug_past_tense.jsonl:2",
                          "wug_past_tense.jsonl:3"]), (comps, ["comps_base.jsonl:2"]), (entity, ["regular.jsonl:2"])):
        assert len(suite.items) == 1 and [p.split(": ")[0] for p in suite.problems] == places, suite.name
    rows = (REPO / "data/eval/reading/reading_data.csv").read_text().splitlines()
    (tmp_path / "reading.csv").write_text("\n".join(rows[:3] + [rows[3].rsplit(",", 3)[0]] + rows[4:6]) + "\n")
    reading = load_reading(tmp_path / "reading.csv")
    assert len(reading.items) == 4 and reading.problems[0].startswith("reading.csv:4: ")
    assert [item.row for item in reading.items] == [0, 1, 3, 4]  # the rows after it keep their place


def test_a_zorro_file_that_lost_a_line_is_realigned_not_shifted(tmp_path):
    original = (REPO / "data/eval/zorro/irregular-verb.txt").read_text().splitlines()
    pairs = {tuple(item.candidates) for item in load_zorro(REPO / "data/eval/zorro/irregular-verb.txt").items}
    for lost in (0, 41, 58, 98, 99):  # a bad line, a good line, in the middle, the last two
        (tmp_path / "irregular-verb.txt").write_text("\n".join(original[:lost] + original[lost + 1:]) + "\n")
        suite = load_zorro(tmp_path / "irregular-verb.txt")
        assert all(tuple(item.candidates) in pairs for item in suite.items), lost  # never a mispaired item
        assert len(suite.items) + suite.skipped == 50 and 47 <= len(suite.items) <= 48  # the orphan, its neighbours
        assert "no partner (the file has an odd number of lines)" in suite.problems[0]
        assert all("alignment uncertain" in problem for problem in suite.problems[1:])
    # The last line lost: its partner (line 99) is not where the orphan is found (line 97, "Michael saw ..." and
    # "Michael had saw ..." look alike); the pairs beside it are left out, so nothing is mispaired all the same.
    assert suite.problems[0].startswith("irregular-verb.txt:97:")


def test_a_suite_added_to_the_registry_appears_in_the_table_and_the_plot(tiny_runs, tmp_path, monkeypatch):
    import matplotlib.axes

    from llamalogue import suites

    pairs = [("the sky is blue .", "the sky are blue ."), ("the grass is green .", "the grass are green .")]
    (tmp_path / "colours").mkdir()
    (tmp_path / "colours" / "agreement.jsonl").write_text(
        "".join(json.dumps({"sentence_good": good, "sentence_bad": bad}) + "\n" for good, bad in pairs))
    monkeypatch.setitem(suites.SUITES, "colours", (lambda p: suites.load_blimp(p, name="colours"), None, None))
    labels, set_yticks = [], matplotlib.axes.Axes.set_yticks

    def recording_set_yticks(self, ticks, names=None, **kwargs):  # the plot's task labels
        labels.extend(names or [])
        return set_yticks(self, ticks, names, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks", recording_set_yticks)
    out = tmp_path / "eval"
    evaluate.main(["--model", str(tiny_runs[0]), "--out", str(out), "--tasks", "blimp,colours", "--bootstrap", "20",
                   "--suite", f"colours={tmp_path / 'colours'}", "--threads", "1"])
    table = (out / "results.md").read_text()
    assert "| Other | colours |" in table and table.index("| Other | colours |") > table.index("Dia. MP (Tokens)")
    assert labels == ["BLiMP", "colours"]
    assert json.loads((out / "results.json").read_text())["results"][tiny_runs[0].name]["colours"]["n"] == 2


def test_a_runs_scores_are_kept_and_a_changed_run_or_text_is_scored_afresh(tiny_runs, tmp_path, monkeypatch):
    """llamalogue.evaluation.score_cache: the same run and texts read the kept scores (the model is not run again);
    other texts, a retrained checkpoint, a model not loaded from a run, or LLAMALOGUE_CACHE="" are scored."""
    from llamalogue import checkpoint
    from llamalogue.evaluation import scoring

    monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path / "cache"))
    texts = real_texts()
    lm = ev.load_lm(tiny_runs[0], "cpu")
    scores, lengths = ev.score_texts(lm, texts)
    calls = []
    real_token_logprobs = scoring.token_logprobs

    def counted(*args, **kwargs):
        calls.append(1)
        return real_token_logprobs(*args, **kwargs)

    monkeypatch.setattr(scoring, "token_logprobs", counted)
    assert ev.score_texts(lm, texts) == (scores, lengths) and not calls  # kept: the model did not run
    fewer = ev.score_texts(lm, texts[:-1])[0]  # other texts: scored (equal up to the float sums' order)
    assert np.allclose(fewer, scores[:-1], rtol=0, atol=1e-4) and len(calls) == 1
    ev.score_texts(lm, texts, reduction="mean")
    assert len(calls) == 2
    retrained = tmp_path / "retrained"  # the same run with one weight changed: another checkpoint, another key
    model, tokenizer = load_model(tiny_runs[0])
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    checkpoint.save_checkpoint(retrained, model, tokenizer, {"stage": "pretraining", "scale": "tiny"})
    assert ev.score_texts(ev.load_lm(retrained, "cpu"), texts)[0] != scores and len(calls) == 3
    ev.score_texts(ev.as_lm(*load_model(tiny_runs[0])), texts)  # not loaded from a run: never kept
    assert len(calls) == 4
    for kept in (tmp_path / "cache" / "scores").iterdir():  # damaged files are scored again, never an error
        kept.write_bytes(b"not a zip")
    assert ev.score_texts(lm, texts) == (scores, lengths) and len(calls) == 5
    monkeypatch.setenv("LLAMALOGUE_CACHE", "")
    assert ev.score_texts(lm, texts) == (scores, lengths) and len(calls) == 6
