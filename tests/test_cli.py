"""One command-line convention: every script ends a user's error with one line `error: ...` on stderr and exit code
2, whatever stage it runs; tested in process on a bad argument each."""

import pytest

import evaluate
import train_dpo
import train_lm
import train_ppo
import train_reward_model
from llamalogue.corpus.build import main as corpus_main
from llamalogue.teacher.__main__ import main as teacher_main


def exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("main, argv, says", [
    (train_lm.main, ["--data", "{tmp}/no-corpus", "--out", "{tmp}/lm"], "no-corpus"),
    (train_dpo.main, ["--init", "{tmp}/missing", "--out", "{tmp}/dpo"], "missing"),
    (train_ppo.main, ["--init", "{tmp}/missing", "--reward", "bleu", "--out", "{tmp}/ppo"], "missing"),
    (train_reward_model.main, ["--init", "{tmp}/missing", "--out", "{tmp}/rm"], "missing"),
    (evaluate.main, ["--model", "{tmp}/missing", "--out", "{tmp}/eval"], "missing"),
    (teacher_main, ["--prompts", "{tmp}/prompts.txt", "--n", "0", "--out", "{tmp}/t.jsonl"], "--n 0"),
    (corpus_main, ["--childes", "{tmp}/no-transcripts", "--out", "{tmp}/data"], "no-transcripts"),
], ids=["train_lm", "train_dpo", "train_ppo", "train_reward_model", "evaluate", "teacher", "corpus"])
def test_a_user_error_is_one_line_on_stderr_and_exit_code_2(main, argv, says, tmp_path, capsys):
    code = exit_code(main, [arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


@pytest.mark.parametrize("script, argv, finished", [
    (train_lm, ["--preset", "tiny"], {"interrupted": False}),
    (train_dpo, ["--preset", "tiny"], {"interrupted": False}),
    (train_ppo, ["--preset", "tiny", "--reward", "bleu"], {}),  # an RL run's summary of no steps
], ids=["train_lm", "train_dpo", "train_ppo"])
def test_a_run_stopped_by_ctrl_c_exits_130_and_a_finished_one_0(script, argv, finished, tmp_path, monkeypatch):
    """The stage's loop saves and says it was interrupted (tested with each stage); its script turns that into 130."""
    for summary, code in (({"interrupted": True}, 130), (finished, 0)):
        monkeypatch.setattr(script, "train", lambda *args, summary=summary, **kwargs: summary)
        assert script.main([*argv, "--out", str(tmp_path / "run")]) == code
