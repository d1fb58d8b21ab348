"""scripts/replication.py at the tiny preset: the 2 x 2 of natural DPO from one base with its evaluation beside the
base, run whole, then skipped whole; and the plan of every part, as the commands a user would type."""

import json
import shutil
import subprocess
import sys
import time

from conftest import REPO
from scripts.replication import parse_args, plan


def test_the_dpo_part_runs_from_the_base_then_is_skipped(tmp_path, tiny_runs):
    paper = tmp_path / "paper" / "dpo"
    paper.mkdir(parents=True)
    for name in ("huggingface_dpo_format.json", "huggingface_dpo_format_eval.json"):
        shutil.copy(REPO / "data" / "paper_dpo" / name, paper / name)
    out = tmp_path / "replication"
    command = [sys.executable, "scripts/replication.py", "--preset", "tiny", "--base", str(tiny_runs[0]),
               "--paper-data", str(paper.parent), "--parts", "dpo", "--seeds", "0", "--out", str(out),
               "--threads", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cells = ["ours-ours-s0", "ours-paper-s0", "paper-ours-s0", "paper-paper-s0"]
    assert sorted(path.name for path in (out / "dpo").iterdir()) == cells
    for cell in cells:  # each cell trained from the base with its own optimisation and layout
        record = json.loads((out / "dpo" / cell / "config.json").read_text())
        assert record["train"]["pair_layout"] == cell.split("-")[1] and record["train"]["seed"] == 0
        assert record["init"] == str(tiny_runs[0])
    results = json.loads((out / "eval-dpo" / "results.json").read_text())
    assert str(tiny_runs[0]) in json.dumps(results) and all(cell in json.dumps(results) for cell in cells)
    table = (out / "table.md").read_text()  # each cell's difference to the base beside the poster's (+4.10)
    for cell in ("ours-ours", "ours-paper", "paper-ours", "paper-paper"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {cell} |"))
        difference = next(c for c in results["comparisons"] if c["b"].startswith(cell))["difference"]
        assert f"{difference:+.2f}" in row and "/ +4.10" in row
    started = time.time()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 5, again.stdout
    assert time.time() - started < 30


def test_every_part_plans_runs_from_the_base_and_an_evaluation_beside_it(tmp_path):
    args = parse_args(["--base", str(tmp_path / "base"), "--paper-data", str(tmp_path / "paper"),
                       "--out", str(tmp_path / "out"), "--ppo-episodes", "1000", "--ppo-points", "4"])
    stages = plan(args)
    evaluations = [stage for stage in stages if stage.name.startswith("evaluation")]
    assert [stage.name for stage in evaluations] == ["evaluation, dpo", "evaluation, synthetic", "evaluation, ppo",
                                                     "evaluation, interaction", "evaluation, base-gap",
                                                     "evaluation, base-gap-curve"]
    dpo = [stage for stage in stages if stage.name.startswith("dpo ") and "synthetic" not in stage.name]
    assert len(dpo) == 3 + 1 + 1 + 3  # three seeds on the diagonal, one elsewhere
    ppo = [stage for stage in stages if stage.name.startswith("ppo ")]
    # four rewards and four zero-reward controls, 1,000 episodes at 16 a step: 63 steps, a copy every 16, evaluated
    # with the runs' ends beside the base
    assert all(stage.command[stage.command.index("--max-steps") + 1] == "63" for stage in ppo)
    assert all("--max-steps" in stage.resume for stage in ppo)  # a resumed run stops where the stage asks
    controls = {stage.folder.name: stage.command for stage in ppo if "zero" in stage.command}
    assert sorted(controls) == ["zero", "zero-confidence-settings", "zero-plain-sampling", "zero-warped"]
    plain = controls["zero-plain-sampling"]
    assert (plain[plain.index("--top-k") + 1], plain[plain.index("--top-p") + 1]) == ("0", "1")
    assert "--warped-logprobs" in controls["zero-warped"] and "--top-k" not in controls["zero-warped"]
    assert not {"--warped-logprobs", "--top-k"} & set(controls["zero"])  # the paper's preset as it is
    confidence_settings = controls["zero-confidence-settings"]  # the confidence script's settings, not its length
    assert confidence_settings[confidence_settings.index("--kl-estimator") + 1] == "abs"
    assert "--kl-coef" in confidence_settings and "--total-prompts" not in confidence_settings
    ppo_models = evaluations[2].command
    assert ppo_models.count("--model") == 1 + 8 * 3 + 8 and str(tmp_path / "out/ppo/bleu/steps/step_48") in ppo_models
    interaction = [stage for stage in stages if stage.name.startswith("interaction")]
    assert [stage.folder.name for stage in interaction] == ["s0", "s1", "s2"]  # the Baseline column, three seeds
    assert all("--resume" in stage.resume and "llamalogue.interaction" in stage.command for stage in interaction)
    assert evaluations[3].command.count("--model") == 1 + 3
    # base gap, one factor a comparison: the caregivers on two corpora built by the same code, epochs and model size
    # on the base's own corpus
    gap = {stage.folder.name: stage.command for stage in stages if stage.name.startswith("pretraining")}
    data_of = {name: command[command.index("--data") + 1] for name, command in gap.items()}
    assert data_of == {"lm-caregivers-all": str(tmp_path / "out/base-gap/data-all"),
                       "lm-caregivers-paper": str(tmp_path / "out/base-gap/data-paper"),
                       "lm-caregivers-all-1000k": str(tmp_path / "out/base-gap/data-all-1000k"),
                       "lm-caregivers-paper-1000k": str(tmp_path / "out/base-gap/data-paper-1000k"),
                       "lm-epochs": str(tmp_path / "data-full"), "lm-larger-model": str(tmp_path / "data-full"),
                       "lm-words-250k": str(tmp_path / "out/base-gap/data-250k"),
                       "lm-words-500k": str(tmp_path / "out/base-gap/data-500k"),
                       "lm-words-1000k": str(tmp_path / "out/base-gap/data-1000k"),
                       "lm-words-250k-epochs": str(tmp_path / "out/base-gap/data-250k"),
                       "lm-words-250k-larger-model": str(tmp_path / "out/base-gap/data-250k")}
    epochs_of = {name: command[command.index("--epochs") + 1] for name, command in gap.items()}
    assert epochs_of["lm-words-250k"] == "2" and epochs_of["lm-words-250k-epochs"] == epochs_of["lm-epochs"] == "10"
    larger = gap["lm-words-250k-larger-model"]  # the model's size alone: small's optimisation and tokens a step
    assert (larger[larger.index("--preset") + 1], larger[larger.index("--model") + 1]) == ("small", "paper")
    assert epochs_of["lm-words-250k-larger-model"] == "2" and larger[larger.index("--batch-size") + 1] == "16"
    parts = [stage.command for stage in stages if stage.folder.name in ("data-250k", "data-500k", "data-1000k")]
    assert [command[command.index("--words") + 1] for command in parts] == ["250000", "500000", "1000000"]
    assert all(command[command.index("--data") + 1] == str(tmp_path / "data-full") for command in parts)
    # and the caregivers at the curve's largest point, each part from its own caregivers' corpus
    caregivers = {stage.folder.name: stage.command for stage in stages
                  if stage.folder.name in ("data-all-1000k", "data-paper-1000k")}
    assert {name: (command[command.index("--data") + 1], command[command.index("--words") + 1])
            for name, command in caregivers.items()} == {
        "data-all-1000k": (str(tmp_path / "out/base-gap/data-all"), "1000000"),
        "data-paper-1000k": (str(tmp_path / "out/base-gap/data-paper"), "1000000")}
    assert evaluations[4].command.count("--model") == 1 + 11
    for stage in stages[:-1]:
        if stage.name.startswith(("dpo", "ppo", "interaction")):
            assert stage.command[stage.command.index("--init") + 1] == str(tmp_path / "base")
