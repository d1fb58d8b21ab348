"""Runs you can trust: each fault a new user can make (bad input, kills, damaged files) ends in one line on stderr,
a non-zero exit, and nothing in the run folder changed; the run directory's rules (llamalogue.run_dir) hold for every
stage."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
import train_dpo
import train_lm
from llamalogue.checkpoint import load_config, load_model, load_state
from llamalogue.corpus.dialogue_files import read_pairs
from llamalogue.hf import main as hf_main
from llamalogue.model import Llama
from llamalogue.pretraining.config import TrainConfig
from llamalogue.pretraining.data import PretrainingInputs
from llamalogue.pretraining.training import train
from llamalogue.run_dir import RunError, open_run, recorded_data
from llamalogue.run_shell import RunFolder
from llamalogue.runlog import RunLog, read_csv
from llamalogue.tokenizer import Tokenizer
from llamalogue.corpus.transcripts import SPEAKER_TAGS
from tests.test_pretraining import one_thread  # noqa: F401  (autouse: torch on one thread in this module too)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below folder -> its SHA-256: equal snapshots = nothing in the folder changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny(**overrides) -> dict:
    return {"preset": "tiny", "samples": 0, **overrides}


@pytest.fixture(scope="module")
def trained_run(corpus_small_build, tmp_path_factory) -> Path:
    """A tiny pretraining run of 4 steps (checkpoint at step 4), trained once for this module: read it, never change
    it (`run` is a copy to change)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(RunFolder(out), PretrainingInputs(data=corpus_small_build), tiny(max_steps=4))
    return out


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of `trained_run` of this test's own, to resume, damage or overwrite."""
    return shutil.copytree(trained_run, tmp_path / "run")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0, err
    return err


def refuses(capsys, main, argv, *touched: Path) -> str:
    """main(argv) exits with code 2 and one error line, and leaves every folder in `touched` as it was."""
    before = [snapshot(folder) if folder.is_dir() else None for folder in touched]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert [snapshot(folder) if folder.is_dir() else None for folder in touched] == before
    return one_error_line(capsys)


# --- 1, 2: the run's own data ---------------------------------------------------------------------------------------

def test_resume_refuses_another_data_folder_or_tokenizer(run, corpus_small_build, tmp_path, capsys):
    other = tmp_path / "other-data"
    shutil.copytree(corpus_small_build, other)
    error = refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--data", str(other), "--threads", "1"], run)
    assert f"the run was made from data {corpus_small_build}, not {other}" in error
    # a run made before inputs were recorded is still checked against its own tokenizer.model
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k != "inputs"}))
    Tokenizer.train([other / "val.txt"], other / "tokenizer", 400, SPEAKER_TAGS, seed=1)
    error = refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--data", str(other), "--threads", "1"], run)
    assert "tokenizer.model is not the tokenizer of the data given" in error


def test_resume_without_data_continues_on_the_runs_own(run, corpus_small_build, capsys):
    assert train_lm.main(["--resume", "--out", str(run), "--max-steps", "6", "--threads", "1"]) == 0
    assert load_state(run)["step"] == 6 and [r["step"] for r in read_csv(run / "log.csv")][-1] == "6"


def test_data_without_a_corpus_is_an_error_not_the_sample(tmp_path, capsys):
    empty = tmp_path / "typo"
    empty.mkdir()
    error = refuses(capsys, train_lm.main, ["--preset", "tiny", "--data", str(empty), "--out", str(tmp_path / "r")],
                    empty)
    assert f"--data {empty}: holds no corpus" in error and not any(empty.iterdir())
    assert not (tmp_path / "r").exists()
    a_file = tmp_path / "data.txt"
    a_file.write_text("hello\n")
    assert "is a file" in refuses(capsys, train_lm.main, ["--preset", "tiny", "--data", str(a_file), "--out",
                                                          str(tmp_path / "r")])


@pytest.mark.parametrize("main", [train_lm.main, train_dpo.main], ids=["train_lm", "train_dpo"])
@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_steps_below_one_is_refused(main, steps, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "tiny", "--max-steps", steps])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--max-steps: " in err and "must be at least 1" in err


# --- 6: damaged files ------------------------------------------------------------------------------------------------

def damage(run: Path, name: str, how: str) -> None:
    path = run / name
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a config.json whose model settings are null
        path.write_text(json.dumps({**json.loads(path.read_text()), "model": None}))


@pytest.mark.parametrize("name, how", [("checkpoint.pt", "truncated"), ("config.json", "truncated"),
                                       ("config.json", "null model")])
def test_a_damaged_run_is_one_error_line_in_every_stage(run, tmp_path, name, how, capsys):
    damage(run, name, how)
    message = "damaged or truncated" if name == "checkpoint.pt" else "config.json: "
    if how == "truncated":  # (a null "model" in the record of a run that resumes is simply written again)
        assert "damaged" in refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--threads", "1"], run)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "*MOT: what is it ?", "chosen": "*CHI: a ball .",
                                 "rejected": "*CHI: go away ."}) + "\n")
    dpo_out = tmp_path / "dpo"
    assert message in refuses(capsys, train_dpo.main, ["--init", str(run), "--pairs-file", str(pairs), "--out",
                                                       str(dpo_out), "--preset", "tiny"], run)
    assert not dpo_out.exists()
    eval_out = tmp_path / "eval"
    assert message in refuses(capsys, evaluate.main, ["--model", str(run), "--out", str(eval_out)], run)
    assert not eval_out.exists()  # nothing written before the model was found damaged


# --- 7: logs and folders ---------------------------------------------------------------------------------------------

def test_a_killed_and_resumed_run_logs_each_step_once(corpus_small_build, tmp_path, monkeypatch, no_speed_probe):
    out, forward, calls = tmp_path / "run", Llama.forward, []

    def killed_in_step_7(self, *args, **kwargs):  # after the step-4 checkpoint and the log rows of steps 5 and 6
        calls.extend([1] if self.training else [])
        if len(calls) == 7:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    config = tiny(max_steps=8, eval_every=4, log_every=1)
    monkeypatch.setattr(Llama, "forward", killed_in_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(RunFolder(out), PretrainingInputs(data=corpus_small_build), config)
    monkeypatch.setattr(Llama, "forward", forward)
    assert load_state(out)["step"] == 4 and [r["step"] for r in read_csv(out / "log.csv")][-1] == "6"
    train(RunFolder(out, resume=True), PretrainingInputs(), config)
    steps = [r["step"] for r in read_csv(out / "log.csv") if r["train_loss"]]
    assert steps == [str(s) for s in range(1, 9)]


def test_overwrite_killed_before_its_first_save_leaves_no_old_checkpoint(run, corpus_small_build, monkeypatch,
                                                                        no_speed_probe):
    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Llama, "forward", killed)
    with pytest.raises(KeyboardInterrupt):
        train(RunFolder(run, overwrite=True), PretrainingInputs(data=corpus_small_build), tiny(max_steps=4, seed=7))
    assert not (run / "checkpoint.pt").exists() and not (run / "log.csv").exists()
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7  # the new run's record, nothing else
    monkeypatch.undo()
    train(RunFolder(run), PretrainingInputs(data=corpus_small_build), tiny(max_steps=2))  # killed before saving:
    # started again
    assert load_state(run)["step"] == 2


def test_a_folder_that_is_not_a_run_is_never_taken(corpus_small_build, tmp_path, capsys):
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}\n')
    (folder / "log.csv").write_text("a,b\n1,2\n")
    for flags in ([], ["--overwrite"]):
        error = refuses(capsys, train_lm.main, ["--preset", "tiny", "--data", str(corpus_small_build), "--out",
                                                str(folder), "--max-steps", "1", *flags], folder)
        assert "holds files that are not a llamalogue run (config.json, log.csv)" in error
    with pytest.raises(RunError, match="is the --data folder"):
        open_run(corpus_small_build, "pretrain", resume=False, overwrite=True, protected={"--data": corpus_small_build})


def test_overwrite_never_deletes_what_a_run_did_not_write(run, corpus_small_build, tmp_path, capsys):
    inside = run / "data"  # the corpus kept inside the run folder: --overwrite would have deleted it
    shutil.copytree(corpus_small_build, inside)
    error = refuses(capsys, train_lm.main, ["--preset", "tiny", "--data", str(inside), "--out", str(run),
                                            "--overwrite", "--threads", "1"], run)
    assert f"holds the --data folder {inside}" in error
    shutil.rmtree(inside)
    (run / "hf").mkdir()  # an export kept inside the run
    (run / "hf" / "config.json").write_text("{}")
    error = refuses(capsys, train_lm.main, ["--preset", "tiny", "--data", str(corpus_small_build), "--out", str(run),
                                            "--overwrite", "--threads", "1"], run)
    assert f"holds the folder {run / 'hf'}, which is not part of the run" in error


def test_null_settings_in_a_record_are_one_error_line(run, capsys):
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "train": {**record["train"], "batch_size": None}}))
    assert "holds bad settings" in refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--threads", "1"],
                                           run)
    (run / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k != "train"}))
    assert 'no "train" settings' in refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--threads", "1"],
                                            run)


def test_an_evaluation_replaces_an_earlier_one_but_never_other_files(trained_run, tmp_path, capsys):
    run = trained_run
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text('{"mine": true}\n')
    error = refuses(capsys, evaluate.main, ["--model", str(run), "--out", str(notes), "--tasks", "zorro"], notes)
    assert "holds files that are not a llamalogue run (config.json)" in error
    out = tmp_path / "eval"
    for _ in range(2):  # the second evaluation replaces the first
        evaluate.main(["--model", str(run), "--out", str(out), "--tasks", "zorro", "--bootstrap", "20"])
    assert json.loads((out / "config.json").read_text())["stage"] == "evaluate"
    assert (out / "results.md").is_file() and (out / "predictions").is_dir()


def test_the_log_keeps_rows_up_to_the_checkpoint_and_drops_a_torn_one(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log({"step": step, "loss": 1.0 / step})
    with log.csv_path.open("a") as f:
        f.write("4")  # killed mid-row
    RunLog(tmp_path, resume_step=5)
    assert [r["step"] for r in read_csv(tmp_path / "log.csv")] == ["1", "2", "3"]
    RunLog(tmp_path, resume_step=2)  # resumed from the step-2 checkpoint: step 3 will be done again
    assert [r["step"] for r in read_csv(tmp_path / "log.csv")] == ["1", "2"]
    RunLog(tmp_path)  # a new run: a new log
    assert not (tmp_path / "log.csv").exists()


def test_the_first_row_fixes_the_logs_columns(tmp_path):
    """A run resumed by a version that logs more columns (or in another order) keeps its log readable."""
    log = RunLog(tmp_path)
    log.log({"step": 1, "loss": 0.5})
    log.log({"loss": 0.25, "step": 2, "judge_mean": 3.0})  # another order, a column the header lacks
    log.log({"step": 3})
    assert read_csv(tmp_path / "log.csv") == [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "0.25"},
                                              {"step": "3", "loss": ""}]


# --- 5: export and import --------------------------------------------------------------------------------------------

def test_export_never_replaces_a_run_and_import_checks_the_tokenizer(run, corpus_small_build, tmp_path, capsys):
    for target in (run, tmp_path / "run2"):
        if target != run:
            shutil.copytree(run, target)
        error = refuses(capsys, hf_main, ["export", str(run), str(target), "--overwrite"], run, target)
        assert "holds a llamalogue run" in error
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in refuses(capsys, hf_main, ["export", str(run), str(a_file)], run)
    hf_dir = tmp_path / "hf"
    assert hf_main(["export", str(run), str(hf_dir)]) == 0
    other = Tokenizer.train([corpus_small_build / "dpo.txt", corpus_small_build / "eval.txt"], tmp_path / "other", 400,
                            SPEAKER_TAGS)
    assert other.vocab_size == Tokenizer(run / "tokenizer.model").vocab_size  # same size, other pieces
    capsys.readouterr()
    error = refuses(capsys, hf_main, ["import", str(hf_dir), str(tmp_path / "imported"), "--tokenizer",
                                      str(other.model_path)], hf_dir)
    assert "not the tokenizer of" in error and not (tmp_path / "imported").exists()
    shutil.move(hf_dir / "tokenizer.model", tmp_path / "exported.model")  # then only tokenizer.json can tell
    error = refuses(capsys, hf_main, ["import", str(hf_dir), str(tmp_path / "imported"), "--tokenizer",
                                      str(other.model_path)], hf_dir)
    assert "its pieces are not those of" in error and not (tmp_path / "imported").exists()
    shutil.move(tmp_path / "exported.model", hf_dir / "tokenizer.model")
    assert hf_main(["import", str(hf_dir), str(tmp_path / "imported")]) == 0


# --- 6, 8: pair files ------------------------------------------------------------------------------------------------

def test_a_pair_file_with_bad_lines_keeps_the_good_ones_and_names_the_bad(tmp_path, capsys):
    good = {"prompt": "*MOT: what is it ?", "chosen": "*CHI: a ball .", "rejected": "*CHI: go away ."}
    lines = [json.dumps(good)] * 40
    lines[6] = json.dumps({**good, "rejected": None})
    lines[29] = json.dumps({k: v for k, v in good.items() if k != "chosen"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert len(read_pairs(path)) == 38
    warning = capsys.readouterr().err
    assert "2 bad line(s) skipped, 38 pairs kept" in warning
    assert f"{path}:7: rejected is missing" in warning and f"{path}:30: chosen is missing" in warning


def test_resumed_config_may_change_only_where_it_stops(trained_run):
    record = json.loads((trained_run / "config.json").read_text())
    assert TrainConfig.from_saved(record["train"], max_steps=8).max_steps == 8
    with pytest.raises(RunError, match="lr=0.003, not 0.1"):
        TrainConfig.from_saved(record["train"], lr=0.1)
    before = snapshot(trained_run)
    with pytest.raises(RunError, match="other settings"):
        train(RunFolder(trained_run, resume=True), PretrainingInputs(), tiny(max_steps=8, batch_size=4))
    assert snapshot(trained_run) == before


def test_a_run_resumed_on_another_number_of_processes_keeps_its_windows_a_step(trained_run, capsys):
    """The step count, schedule and data order are in the run's windows a step (processes x grad_accum x batch):
    resumed under torchrun with other processes, grad_accum makes up the difference, or one error line says why
    it cannot. A record written before windows_per_step existed reads it from its scale line."""
    from llamalogue.old_runs import upgrade_record
    from llamalogue.pretraining.processes import same_windows_per_step

    record = json.loads((trained_run / "config.json").read_text())
    config = TrainConfig.from_saved(record["train"])
    assert record["windows_per_step"] == config.grad_accum * config.batch_size  # one process
    four = {**record, "windows_per_step": 4 * config.batch_size}
    assert same_windows_per_step(config, four, world=2).grad_accum == 2
    assert same_windows_per_step(config, four, world=4).grad_accum == 1
    with pytest.raises(ValueError, match="divides 4"):
        same_windows_per_step(config, four, world=3)
    old = {key: value for key, value in record.items() if key != "windows_per_step"}
    old["scale"] = old["scale"].replace("(1 process(es) x", "(2 process(es) x")
    assert upgrade_record(old, trained_run)["windows_per_step"] == 2 * record["windows_per_step"]


def test_a_weights_only_checkpoint_is_refused_by_resume_in_one_line(run, capsys):
    torch.save({"model": load_state(run)["model"]}, run / "checkpoint.pt")  # as a packed copy for evaluation holds
    error = refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--threads", "1"], run)
    assert "holds the weights only, not the training state" in error


def test_a_run_recorded_by_an_earlier_version_loads_and_resumes(run, corpus_small_build, tmp_path, capsys):
    """Earlier records kept the corpus folder in a top-level "data" (no "inputs"), and earlier checkpoints the
    LambdaLR's state under "scheduler": such a run still loads, finds its own data, and resumes."""
    record = json.loads((run / "config.json").read_text())
    del record["inputs"]
    (run / "config.json").write_text(json.dumps({**record, "data": str(corpus_small_build)}))
    state = load_state(run)
    state["scheduler"] = {"base_lrs": [0.003, 0.003], "last_epoch": state["step"], "_step_count": state["step"] + 1}
    for group in state["optimizer"]["param_groups"]:
        group["initial_lr"] = 0.003  # as LambdaLR left it
    torch.save(state, run / "checkpoint.pt")
    assert recorded_data(load_config(run)) == corpus_small_build  # what the AoA evaluation reads
    assert load_model(run)[0].config.max_seq_len == 64  # what evaluate.py loads
    other = tmp_path / "other-data"
    shutil.copytree(corpus_small_build, other)
    error = refuses(capsys, train_lm.main, ["--resume", "--out", str(run), "--data", str(other), "--threads", "1"], run)
    assert f"the run was made from data {corpus_small_build}, not {other}" in error
    assert train_lm.main(["--resume", "--out", str(run), "--max-steps", "6", "--threads", "1"]) == 0
    assert load_state(run)["step"] == 6 and "scheduler" not in load_state(run)
    assert json.loads((run / "config.json").read_text())["inputs"]["data"] == str(corpus_small_build)


def test_a_write_that_fails_midway_leaves_the_file_as_it_was(tmp_path):
    """Reports, plots and logs are written beside their file and swapped in whole (run_dir.atomic_write): a kill
    or an error while writing leaves the last complete version, and no temporary file."""
    from llamalogue.run_dir import atomic_write, save_figure, write_text
    from llamalogue.runlog import plt

    path = tmp_path / "results.md"
    write_text(path, "the complete table\n")

    def torn(tmp):
        tmp.write_text("half a ta")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, torn)
    assert path.read_text() == "the complete table\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]
    fig, _ = plt.subplots()
    save_figure(fig, tmp_path / "results.png")
    plt.close(fig)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
