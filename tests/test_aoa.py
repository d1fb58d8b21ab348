"""AoA: milestone checkpoints kept during pretraining, the contexts of CDI words in held-out utterances, the sigmoid
fit and its midpoint, and evaluate.py --tasks aoa on a run with and without milestones."""

import csv
import json

import numpy as np
import pytest

import evaluate
import train_lm
from llamalogue.checkpoint import load_model
from llamalogue.evaluation.aoa import AoAConfig, NoCurve, evaluate_aoa, fit_sigmoid, model_aoa, word_contexts
from llamalogue.pretraining.milestones import find_milestones, milestone_name, parse_milestones
from llamalogue.pretraining.data import PretrainingInputs
from llamalogue.pretraining.training import train
from llamalogue.run_shell import RunFolder
from llamalogue.suites import AoAWord, load_aoa_words
from tests.test_pretraining import one_thread  # noqa: F401  (autouse: torch on one thread in this module too)

MILESTONES = [1_000, 2_000, 4_000, 8_000, 12_000, 16_000]


@pytest.fixture(scope="module")
def milestone_run(corpus_small_build, tmp_path_factory):
    """A `tiny` model trained for 32 steps of 512 tokens (16,384 tokens), keeping six milestones."""
    out = tmp_path_factory.mktemp("milestone_run")
    options = {"preset": "tiny", "max_steps": 32, "samples": 0, "milestones": tuple(MILESTONES)}
    train(RunFolder(out), PretrainingInputs(data=corpus_small_build), options)
    return out


def test_milestones_in_words_and_the_words_seen_of_a_run(corpus_small_build, milestone_run, tmp_path):
    """A milestone given in words is kept where the training text's words say; every record counts its words."""
    record = json.loads((milestone_run / "config.json").read_text())
    rate = record["train_words"] / record["train_tokens"]
    assert record["tokens"] == 32 * 512 and record["words_seen"] == round(record["train_words"] * 32 * 512 /
                                                                          record["train_tokens"])
    out = tmp_path / "words"
    train(RunFolder(out), PretrainingInputs(data=corpus_small_build),
          {"preset": "tiny", "max_steps": 8, "samples": 0, "milestone_words": (300, 700)})
    found = find_milestones(out)
    assert [tokens for tokens, _ in found] == [-(-round(w / rate) // 512) * 512 for w in (300, 700)]
    words = [json.loads((path / "config.json").read_text())["words_seen"] for _, path in found]
    assert words[0] >= 300 and words[1] >= 700 and words[0] - 300 < 512 * rate + 1


def test_milestones_are_saved_once_each_where_training_reached_them(milestone_run):
    found = find_milestones(milestone_run)
    assert [path.name for _, path in found] == ["chck_1K", "chck_2K", "chck_4K", "chck_8K", "chck_12K", "chck_16K"]
    tokens_per_step = 8 * 64
    assert [tokens for tokens, _ in found] == [-(-m // tokens_per_step) * tokens_per_step for m in MILESTONES]
    first, last = (load_model(path)[0] for path in (found[0][1], found[-1][1]))
    final = load_model(milestone_run)[0]
    assert not np.allclose(first.embed.weight.detach(), last.embed.weight.detach())  # weights of their own time
    assert np.array_equal(last.embed.weight.detach(), final.embed.weight.detach())  # the end is the last milestone


def test_milestone_names_and_the_cli_values():
    assert [milestone_name(n) for n in (1_000_000, 100_000, 2_500_000, 1234, 999)] == [
        "chck_1M", "chck_100K", "chck_2.5M", "chck_1.234K", "chck_999"]
    assert parse_milestones("1M, 500K,2.5m,1M", "small") == ([500_000, 1_000_000, 2_500_000], [])
    assert parse_milestones("2Mw,100K,10Mw", "small") == ([100_000], [2_000_000, 10_000_000])  # words, as BabyLM
    tokens, words = parse_milestones("preset", "paper")
    assert tokens[:2] == [1_000_000, 2_000_000] and tokens[-1] == 100_000_000 and words == []
    with pytest.raises(ValueError, match="'ten' is not a token count"):
        parse_milestones("1M,ten", "small")
    with pytest.raises(ValueError, match=r"^--milestones: the preset 'custom' has no default milestones; give the "):
        parse_milestones("preset", "custom")


def test_a_bad_milestone_is_one_line_and_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train_lm.main(["--preset", "tiny", "--milestones", "1M,x", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "error: --milestones: 'x' is not a token count" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_contexts_are_held_out_utterances_cut_before_the_word():
    words = [AoAWord("1", "ice cream", "nouns", 24.0), AoAWord("2", "ball", "nouns", 16.0),
             AoAWord("3", "the", "function_words", 30.0)]
    utterances = ["*MOT: do you want Ice Cream ?", "*CHI: ball .", "*MOT: where is the ball ?", "*MOT: balloon ."]
    contexts = word_contexts(words, utterances, AoAConfig())
    assert contexts["ice cream"] == [("*MOT: do you want", "Ice Cream")]
    assert contexts["ball"] == [("*CHI:", "ball"), ("*MOT: where is the", "ball")]  # never "balloon"
    assert contexts["the"] == [("*MOT: where is", "the")]
    assert len(word_contexts(words, utterances * 30, AoAConfig(max_contexts=5))["ball"]) == 5


def test_the_sigmoid_fit_finds_a_known_midpoint():
    x = np.log10([1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7])
    y = 3.0 + 6.0 / (1.0 + np.exp(2.5 * (x - 6.2))) + np.random.default_rng(0).normal(0, 0.02, len(x))
    low, span, k, c, _ = fit_sigmoid(x, y)
    assert c == pytest.approx(6.2, abs=0.03) and span == pytest.approx(6.0, rel=0.05)
    assert low == pytest.approx(3, abs=0.1)
    assert model_aoa(x, y)[0] == pytest.approx(6.2, abs=0.03)
    assert model_aoa(x, y[::-1]) == (None, "surprisal does not fall")
    assert model_aoa(x, 3.0 + 6.0 / (1.0 + np.exp(2.5 * (x - 4.0))))[1] == "midpoint outside the milestones"


def test_aoa_of_a_run_with_milestones(milestone_run):
    suite = load_aoa_words()
    assert len(suite.items) == 577 and suite.skipped == 0  # 591 rows, 14 word forms listed twice (can: noun, verb)
    config = AoAConfig(min_contexts=2)
    result, surprisal = evaluate_aoa(milestone_run, suite, None, config, replicates=50)  # the run's held-out splits
    words = result.breakdown["words"]
    assert words["listed"] == 577 and words["with an AoA"] == result.n
    no_curve = words.get("no AoA: surprisal does not fall", 0) + words.get("no AoA: midpoint outside the milestones", 0)
    assert words["with contexts"] == result.n + no_curve
    assert words["listed"] == words["with contexts"] + words["no AoA: fewer than 2 contexts"]
    assert result.n >= 3 and result.metric == "pearson" and -100 <= result.value <= 100
    assert result.ci_low <= result.value <= result.ci_high
    assert set(result.breakdown["all"]) == {"n", "pearson", "spearman"}
    fitted = [p for p in result.predictions if p["model_aoa_log10_tokens"] is not None]
    assert all(np.log10(1024) < p["model_aoa_log10_tokens"] < np.log10(16384) for p in fitted)
    steps = {r["step"] for r in surprisal["results"]}
    assert steps == {f"chck_{n // 1000}K" for n in MILESTONES}
    assert all(r["surprisal"] > 0 and r["context"].endswith(" ") for r in surprisal["results"])


def test_a_run_without_milestones_or_utterances_has_no_curve(tiny_runs, milestone_run, tmp_path):
    with pytest.raises(NoCurve, match=r"^n/a \(no training checkpoints\)$"):
        evaluate_aoa(tiny_runs[0], load_aoa_words())
    with pytest.raises(NoCurve, match=r"^n/a \(no held-out utterances at .*nowhere.txt\)$"):
        evaluate_aoa(milestone_run, load_aoa_words(), [tmp_path / "nowhere.txt"])


def test_evaluate_tasks_aoa_writes_the_result_and_the_official_surprisal_file(milestone_run, tiny_runs, tmp_path):
    out = tmp_path / "eval"
    evaluate.main(["--model", str(milestone_run), "--model", str(tiny_runs[0]), "--tasks", "aoa", "--out", str(out),
                   "--bootstrap", "20", "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    run, untrained = list(results["models"])
    aoa = results["results"][run]["aoa"]
    assert aoa["metric"] == "pearson" and aoa["n"] >= 10 and np.isfinite(aoa["value"])
    assert results["results"][untrained] == {}
    assert results["notes"][untrained]["aoa"] == "n/a (no training checkpoints)"
    markdown = (out / "results.md").read_text()
    assert "## AoA: model vs children" in markdown and f"| {run} | nouns |" in markdown
    row = next(line for line in markdown.splitlines() if "| AoA |" in line)
    assert row.endswith("| n/a (no training checkpoints) |") and "[" in row.split("|")[4]  # after the Protocol column
    official = json.loads((out / "predictions" / run / "aoa" / "surprisal.json").read_text())
    assert {"step", "target_word", "context_id", "context", "surprisal"} <= set(official["results"][0])


def test_evaluate_milestones_writes_the_learning_curve(milestone_run, tmp_path):
    out = tmp_path / "curve"
    evaluate.main(["--model", str(milestone_run), "--milestones", "--tasks", "zorro,dialogue_words", "--protocol",
                   "paper", "--bootstrap", "20", "--out", str(out)])
    rows = list(csv.DictReader((out / "milestones.csv").open()))
    found = find_milestones(milestone_run)
    for task in ("zorro", "dialogue_words"):
        curve = [row for row in rows if row["task"] == task]
        assert [(int(r["tokens"]), r["checkpoint"]) for r in curve] == [(t, p.name) for t, p in found]
        assert all(r["protocol"] == "paper" and float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
                   for r in curve)
    # the words each checkpoint had seen, from its own record
    assert [int(r["words"]) for r in rows if r["task"] == "zorro"] == [
        json.loads((path / "config.json").read_text())["words_seen"] for _, path in found]
    assert 0.2 < int(rows[-1]["words"]) / int(rows[-1]["tokens"]) < 1
    assert (out / "milestones.png").stat().st_size > 0
    assert not (out / "results.md").exists()  # a curve, not the one-model table
