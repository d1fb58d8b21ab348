"""Try the faults a new user makes (bad input, damaged files) on real commands, and print what each does now.

    python scripts/try_faults.py [--work DIR]      # a markdown table: fault, command, what it prints, exit code,
                                                   # whether the run folder changed

Everything happens in a scratch folder (a temporary one unless --work): a corpus built from 23 transcripts of the
embedded sample, a `tiny` run of 4 steps, and copies of both that each fault damages. Each command runs as a user
would run it (a subprocess, 1 thread); the tests (tests/test_run_dir.py, tests/test_transcripts.py) check the same
faults with assertions.
"""

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "childes"


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Table:
    def __init__(self, work: Path):
        self.work, self.rows = work, []

    def fault(self, name: str, args: list[str], watched: Path, expect_change: bool = False) -> None:
        before = snapshot(watched)
        result = run(*args)
        changed = snapshot(watched) != before
        said = last_line(result.stderr)  # the error, or the warning of a run that went on
        if result.returncode == 0:
            said = " / ".join(line for line in (said if "warning" in said else "", last_line(result.stdout)) if line)
        shown = " ".join(args).replace(str(self.work) + "/", "").replace(str(REPO) + "/", "")
        self.rows.append((name, f"`python {shown}`", said.replace(str(self.work) + "/", "").replace("|", "\\|"),
                          result.returncode, ("yes (expected)" if expect_change else "**yes**") if changed else "no"))
        print(f"{name}: exit {result.returncode}", file=sys.stderr)

    def print(self) -> None:
        print("| fault | command | prints now (last line) | exit | folder changed |")
        print("|---|---|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(str(cell) for cell in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, deleted at the end)")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="llamalogue-faults-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = (sorted(SAMPLE.glob("Eng-UK/Manchester/*/*.xml.gz"))[:14]
             + sorted(SAMPLE.glob("Eng-NA/Bates/*/*.xml.gz"))[:7]
             + [SAMPLE / "Eng-NA/Brown/Eve/eve01.xml.gz", SAMPLE / "Eng-NA/Bernstein/bernstein_children_alice1.cha"])
    childes, data, runs = work / "childes", work / "data", work / "runs"
    childes.mkdir(exist_ok=True)
    for path in files:
        shutil.copy(path, childes / path.name)
    built = run("-m", "llamalogue.corpus", "--childes", str(childes), "--out", str(data), "--vocab-size", "400")
    assert built.returncode == 0, built.stderr
    good = runs / "good"
    tiny = ["--preset", "tiny", "--threads", "1"]
    assert run("train_lm.py", *tiny, "--data", str(data), "--out", str(good), "--max-steps", "4").returncode == 0
    table = Table(work)

    def copy_of(name: str) -> Path:
        target = runs / name
        shutil.copytree(good, target)
        return target

    other = work / "data-copy"
    shutil.copytree(data, other)
    table.fault("1 resume with another --data", ["train_lm.py", "--resume", "--out", str(copy_of("r1")), "--data",
                                                 str(other), "--threads", "1"], runs / "r1")
    r1b = copy_of("r1b")
    table.fault("1 resume without --data (the run's own)", ["train_lm.py", "--resume", "--out", str(r1b),
                                                            "--max-steps", "6", "--threads", "1"], r1b,
                expect_change=True)
    empty = work / "typo"
    empty.mkdir()
    table.fault("2 --data without tokenizer.model", ["train_lm.py", *tiny, "--data", str(empty), "--out",
                                                     str(runs / "r2")], empty)
    table.fault("6 --data that is a file", ["train_lm.py", *tiny, "--data", str(data / "train.txt"), "--out",
                                            str(runs / "r2b")], data)

    damaged = work / "childes-damaged"
    shutil.copytree(childes, damaged)
    gz = (SAMPLE / "Eng-NA/Bates/Free20/amy20.xml.gz").read_bytes()
    (damaged / "corrupt.xml.gz").write_bytes(gz[:200] + bytes(b ^ 0x55 for b in gz[200:2000]) + gz[2000:])
    cha = (REPO / "data" / "cha" / "bates_free20_amy20.cha").read_text(encoding="utf-8")
    (damaged / "cp1252.cha").write_bytes(cha.replace("what", "caf\u00e9 what", 1).encode("cp1252"))
    (damaged / "utf16.cha").write_bytes(cha.encode("utf-16"))
    (damaged / "empty.cha").write_bytes(b"@UTF8\n@Begin\n@End\n")
    (damaged / "broken.xml").write_bytes(gzip.decompress(files[0].read_bytes())[:5000])
    table.fault("3, 4, 8 corpus with a corrupted .xml.gz, cp1252, UTF-16, empty and broken files",
                ["-m", "llamalogue.corpus", "--childes", str(damaged), "--out", str(work / "data-damaged"),
                 "--vocab-size", "400"], damaged)
    stats = json.loads((work / "data-damaged" / "stats.json").read_text())
    table.rows[-1] = (*table.rows[-1][:2], f"{stats['transcripts']} transcripts, dropped {stats['dropped']}; "
                      f"warnings.txt names each file", *table.rows[-1][3:])

    r5 = copy_of("r5")
    table.fault("5 hf export R R --overwrite", ["-m", "llamalogue.hf", "export", str(r5), str(r5), "--overwrite"], r5)
    table.fault("5 hf export into another run", ["-m", "llamalogue.hf", "export", str(r5), str(good), "--overwrite"],
                good)
    (work / "a-file").write_text("x")
    table.fault("6 hf export to a file path", ["-m", "llamalogue.hf", "export", str(r5), str(work / "a-file")], r5)
    hf_dir = work / "hf"
    assert run("-m", "llamalogue.hf", "export", str(good), str(hf_dir)).returncode == 0
    other_tokenizer = work / "other"
    assert run("-c", "import sys; from llamalogue.tokenizer import Tokenizer; from llamalogue.corpus.transcripts import "
                     "SPEAKER_TAGS; Tokenizer.train(sys.argv[1:3], sys.argv[3], 400, SPEAKER_TAGS)",
               str(data / "dpo.txt"), str(data / "eval.txt"), str(other_tokenizer)).returncode == 0
    table.fault("5 hf import with another tokenizer of the same size",
                ["-m", "llamalogue.hf", "import", str(hf_dir), str(runs / "imported"), "--tokenizer",
                 str(other_tokenizer) + ".model"], hf_dir)

    pairs = work / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": "*MOT: what is it ?", "chosen": "*CHI: a ball .",
                                           "rejected": "*CHI: go away ."}) for _ in range(40)) + "\n")
    for name, how in (("checkpoint.pt", "truncated"), ("config.json", "truncated"), ("config.json", "null model")):
        target = copy_of(f"damaged-{name}-{how.replace(' ', '-')}")
        path = target / name
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.write_text(json.dumps({**json.loads(path.read_text()), "model": None}))
        if how == "truncated":
            table.fault(f"6 {how} {name}: train_lm --resume", ["train_lm.py", "--resume", "--out", str(target),
                                                               "--threads", "1"], target)
        table.fault(f"6 {how} {name}: train_dpo --init", ["train_dpo.py", "--init", str(target), "--pairs-file",
                                                          str(pairs), "--out", str(runs / "dpo-x"), "--preset", "tiny"],
                    target)
        table.fault(f"6 {how} {name}: evaluate --model", ["evaluate.py", "--model", str(target), "--out",
                                                          str(work / "eval-x")], target)
    lines = pairs.read_text().splitlines()
    lines[6] = json.dumps({"prompt": "*MOT: what is it ?", "chosen": "*CHI: a ball .", "rejected": None})
    lines[29] = json.dumps({"prompt": "*MOT: what is it ?", "rejected": "*CHI: go away ."})
    bad_pairs = work / "bad-pairs.jsonl"
    bad_pairs.write_text("\n".join(lines) + "\n")
    table.fault("6, 8 DPO pairs file with 2 bad lines of 40",
                ["-c", "import sys; from llamalogue.corpus.dialogue_files import read_pairs; "
                       "print(len(read_pairs(sys.argv[1])), 'pairs')", str(bad_pairs)], work / "childes")
    cache = work / "cache.jsonl"
    record = {"key": "k", "prompt": "p", "seed": 0, "settings": {}, "replies": ["a ."] * 10, "logliks": [-1.0] * 3,
              "reasons": [None] * 10, "rejected": [[]] * 10}
    cache.write_text(json.dumps(record) + "\n" + json.dumps({"prompt": "no key"}) + "\n")
    table.fault("6, 8 teacher cache: 3 of 10 log-likelihoods, a record without key",
                ["-c", "import sys; from llamalogue.teacher.reply_cache import ReplyCache; "
                       "print(len(ReplyCache(sys.argv[1]).entries), 'cached prompts')", str(cache)], work / "childes")
    notes = work / "my-notes"
    notes.mkdir()
    (notes / "config.json").write_text('{"mine": true}\n')
    (notes / "log.csv").write_text("a,b\n1,2\n")
    table.fault("7 an existing non-run folder as --out", ["train_lm.py", *tiny, "--data", str(data), "--out",
                                                          str(notes), "--overwrite"], notes)
    table.fault("new: train_dpo --out is the --init run", ["train_dpo.py", "--init", str(good), "--pairs-file",
                                                           str(pairs), "--out", str(good), "--preset", "tiny"], good)
    table.fault("new: train_ppo --resume of a pretraining run", ["train_ppo.py", "--resume", "--out", str(good)], good)
    r_inside = copy_of("r-inside")
    shutil.copytree(data, r_inside / "data")
    table.fault("new: --overwrite of a run folder that holds the --data folder",
                ["train_lm.py", *tiny, "--data", str(r_inside / "data"), "--out", str(r_inside), "--overwrite"],
                r_inside)
    table.fault("new: --out inside a file", ["train_lm.py", *tiny, "--data", str(data), "--out",
                                             str(work / "a-file" / "run")], data)
    for script in ("train_lm.py", "train_dpo.py"):
        for steps in ("0", "-1"):
            table.fault(f"8 {script} --max-steps {steps}", [script, *tiny, "--max-steps", steps], runs / "good")
    table.print()
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
