"""The poster's table from one shared base: every experiment behind docs/replication.md in one command, each stage
resumable and skipped when complete (llamalogue.pipeline, as scripts/paper_pipeline.py).

    python scripts/replication.py --base ../shared/checkpoints/lm-small-full --paper-data ../shared/data/paper \\
        --childes ../shared/data/childes/xml --eval-data ../shared/data --out runs/replication --threads 1
    python scripts/replication.py ... --parts dpo                  # one part at a time
    python scripts/replication.py --preset tiny --base RUN ...     # the smoke run: seconds a stage

Every model starts from --base, the same start as the poster's rows, and every part ends with one evaluation of its
models beside the base: dialogue minimal pairs (words and tokens) and Zorro under the paper's protocol, BLiMP
filtered, with 95% intervals and paired tests (OUT/eval-PART/results.md). The parts:

    dpo        natural DPO as a 2 x 2: optimisation (ours `small` | the paper's `paper`: lr 5e-6, 10 epochs, 32
               pairs a step) x input layout (ours | the paper's TRL layout); --seeds for the two cells on the
               diagonal (ours, the paper's), the first seed for the other two   -> OUT/dpo/OPT-LAYOUT-sSEED
    synthetic  the paper's synthetic pairs as written (--raw-synthetic) and as we rewrite them, paper preset and
               layout, --seeds each                                           -> OUT/dpo-synthetic/FORM-sSEED
    ppo        PPO at the paper's preset with each of its four rewards for --ppo-episodes (the paper ran 80,000 to
               220,000), a copy of the weights kept --ppo-points times on the way: the curve of the benchmarks over
               the episodes; and with the zero reward, the controls: what the paper's settings do without a reward,
               with plain sampling, with on-policy log-probs (--warped-logprobs), and at the settings the paper's
               confidence script changed (lr, minibatch, the KL's estimate and beta)
                                                                              -> OUT/ppo/REWARD/steps/step_N
    interaction  the poster's Baseline column: the BabyLM interaction baseline's method (the student learns from
               the teacher's corrections of its replies, python -m llamalogue.interaction), `small` preset,
               --seeds                                                        -> OUT/interaction/sSEED
    base-gap   what moves the base towards the poster's, one factor at a time: the paper's caregivers (MOT, FAT,
               INV; `small` on corpora built from --childes with all caregivers and with the paper's, compared with
               each other), more epochs of `small` on the base's own corpus (milestones: a curve against training
               tokens), the larger `paper` model on it, less data (`small` on the first 250,000, 500,000 and
               1,000,000 words of the base's corpus: the data curve; and 10 epochs on the 250,000, the epochs factor
               at CPU scale, and the `paper` model with `small`'s optimisation on it, the model's; and `small` on the
               first 1,000,000 words of each caregivers' corpus, theirs)
               (each compared with the base)                                 -> OUT/base-gap/...

A Ctrl-C stops the running stage with its checkpoint saved; the same command goes on from there.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from llamalogue.cli import positive_int
from llamalogue.pipeline import (Stage, absolute, corpus_complete, corpus_part_complete, dpo_complete,
                                 evaluation_complete, interaction_complete, ppo_complete, pretraining_complete, run_in)
from llamalogue.evaluation.report import read_paper_results
from llamalogue.rl.config import PRESET_BY_REWARD, RLConfig
from llamalogue.rl.run import STEPS
from llamalogue.run_dir import write_text


def confidence_settings() -> list[str]:
    """The settings the paper's confidence script changed (PRESET_BY_REWARD) as train_ppo.py options, each field the
    flag of its name (kl_coef -> --kl-coef); not its length, which the ppo part sets for every run."""
    options = []
    for field, value in PRESET_BY_REWARD[("paper", "confidence")].items():
        if field != "total_prompts":
            options += [f"--{field.replace('_', '-')}", str(value)]
    return options


# The ppo part's runs, name -> (reward, options): the paper's four rewards (confidence first: its 10 replies a prompt
# serve bleu and semsim), then the controls without a reward (no poster column): at the paper's preset; with plain
# sampling; with the preset's top-k/top-p sampling but the ratio and KL on-policy (from the distribution sampled); at
# the confidence script's settings
PPO_RUNS = {"confidence": ("confidence", []), "bleu": ("bleu", []), "semsim": ("semsim", []), "llm": ("llm", []),
            "zero": ("zero", []), "zero-plain-sampling": ("zero", ["--top-k", "0", "--top-p", "1"]),
            "zero-warped": ("zero", ["--warped-logprobs"]), "zero-confidence-settings": ("zero", confidence_settings())}
# The base-gap part's data curve: `small` as the base was made (2 epochs), on the first N words of the base's corpus
DATA_CURVE_WORDS = (250_000, 500_000, 1_000_000)
# ... and the caregivers' factor where a CPU can run it: `small` for 2 epochs on the first N words of each of their
# corpora (the paper's caregivers keep 98% of the training triplets, so the whole corpora differ hardly more)
CAREGIVERS_WORDS = 1_000_000
EVAL_TASKS = "dialogue_words,dialogue_tokens,zorro,blimp"

# What the tiny preset changes so that each stage takes seconds on one thread: fewer pairs and episodes, one task.
TINY = {"dpo": ["--limit", "32", "--eval-limit", "32"], "ppo": ["--max-prompts", "4"],
        "evaluation": ["--tasks", "dialogue_words", "--bootstrap", "100"]}


def presets(args) -> dict[str, str]:
    """The preset each role runs at: the paper's settings, or tiny for the smoke run."""
    if args.preset == "tiny":
        return {"ours": "tiny", "paper": "tiny", "model": "tiny"}
    return {"ours": "small", "paper": "paper", "model": "small"}


def tiny_options(args, part: str) -> list[str]:
    """What the tiny preset adds to a part's commands (nothing at the paper preset)."""
    return TINY.get(part, []) if args.preset == "tiny" else []


def dpo_stage(name: str, run: Path, options: list[str], args) -> Stage:
    python, threads = sys.executable, ["--threads", str(args.threads)] if args.threads else []
    return Stage(name, run,
                 [python, "train_dpo.py", "--init", str(args.base), *options, *tiny_options(args, "dpo"),
                  "--out", str(run), *threads],
                 [python, "train_dpo.py", "--resume", "--out", str(run), *threads],
                 lambda: dpo_complete(run))


def dpo_runs(args) -> list[Stage]:
    """The 2 x 2 of natural DPO: (optimisation, layout) cells, --seeds on the diagonal, the first seed elsewhere."""
    preset, pairs = presets(args), ["--pairs", "natural", "--pairs-file", str(args.paper_data / "dpo" /
                                                                              "huggingface_dpo_format.json")]
    stages = []
    for optimisation in ("ours", "paper"):
        for layout in ("ours", "paper"):
            seeds = args.seeds if optimisation == layout else args.seeds[:1]
            for seed in seeds:
                run = args.out / "dpo" / f"{optimisation}-{layout}-s{seed}"
                stages.append(dpo_stage(f"dpo {optimisation} optimisation, {layout} layout, seed {seed}", run,
                                        ["--preset", preset[optimisation], "--pair-layout", layout, "--seed",
                                         str(seed), *pairs], args))
    return stages


def synthetic_runs(args) -> list[Stage]:
    pairs = ["--pairs", "synthetic", "--pairs-file", str(args.paper_data / "dpo" / "synthetic_dpo_format.json")]
    stages = []
    for form, flag in (("raw", ["--raw-synthetic"]), ("rewritten", [])):
        for seed in args.seeds:
            run = args.out / "dpo-synthetic" / f"{form}-s{seed}"
            stages.append(dpo_stage(f"dpo synthetic {form}, seed {seed}", run,
                                    ["--preset", presets(args)["paper"], "--pair-layout", "paper", "--seed",
                                     str(seed), *pairs, *flag], args))
    return stages


def ppo_steps(args) -> tuple[int, int]:
    """(steps of the run, steps between the copies kept): --ppo-episodes at the preset's replies a step."""
    batch = RLConfig.from_preset(presets(args)["paper"]).batch_size
    steps = math.ceil(args.ppo_episodes / batch)
    return steps, math.ceil(steps / args.ppo_points)


def ppo_runs(args) -> list[Stage]:
    python, threads = sys.executable, ["--threads", str(args.threads)] if args.threads else []
    teacher = ["--teacher", args.teacher] if args.teacher else []
    steps, keep = ppo_steps(args)
    length = ["--max-steps", str(steps), "--keep-every", str(keep)]  # the resumed run stops there too
    prompts = [] if args.preset == "tiny" else ["--max-prompts", str(args.ppo_prompts)]
    stages = []
    for name, (reward, options) in PPO_RUNS.items():
        run = args.out / "ppo" / name
        stages.append(Stage(f"ppo {name}", run,
                            [python, "train_ppo.py", "--preset", presets(args)["paper"], "--reward", reward, *options,
                             "--init", str(args.base), "--data", str(args.base_data), *teacher, *length, *prompts,
                             *tiny_options(args, "ppo"), "--out", str(run), *threads],
                            [python, "train_ppo.py", "--resume", *length, "--out", str(run), *threads],
                            lambda run=run: ppo_complete(run, steps)))
    return stages


def interaction_runs(args) -> list[Stage]:
    """The poster's Baseline column: the BabyLM interaction baseline's method (a student learning from its teacher's
    corrections, python -m llamalogue.interaction) from the base, at the `small` preset, --seeds."""
    python, threads = sys.executable, ["--threads", str(args.threads)] if args.threads else []
    teacher = ["--teacher", args.teacher] if args.teacher else []
    stages = []
    for seed in args.seeds:
        run = args.out / "interaction" / f"s{seed}"
        stages.append(Stage(f"interaction, seed {seed}", run,
                            [python, "-m", "llamalogue.interaction", "--preset", presets(args)["ours"], "--init",
                             str(args.base), "--data", str(args.base_data), *teacher, "--seed", str(seed),
                             "--out", str(run), *threads],
                            [python, "-m", "llamalogue.interaction", "--resume", "--out", str(run), *threads],
                            lambda run=run: interaction_complete(run)))
    return stages


def base_gap_runs(args) -> list[Stage]:
    """Corpora (all caregivers as ours, the paper's), then pretraining: `small` as the base was made on each of the
    two; `small` for --gap-epochs with milestones and the `paper` model for 1 epoch, both on the base's own corpus;
    `small` for the base's 2 epochs on the first DATA_CURVE_WORDS words of the base's corpus (the data curve), and
    for --gap-epochs on the smallest part (the epochs factor where a CPU can run it), and the `paper` model with
    `small`'s optimisation on it (the model's size where a CPU can run it); `small` for 2 epochs on the first
    CAREGIVERS_WORDS words of each caregivers' corpus (their factor where a CPU can run it).
    Why the caregivers' factor has a reference of its own: a corpus built now need not be the base's (the corpus
    code may have changed since: the shared base's corpus has 86,798 prompts, one built from the same transcripts
    by today's code 95,473), so only two corpora built by the same code differ in the caregivers alone."""
    python, threads = sys.executable, ["--threads", str(args.threads)] if args.threads else []
    workers = ["--workers", str(args.threads)] if args.threads else []
    folder, stages = args.out / "base-gap", []
    tiny = args.preset == "tiny"
    caregivers_sets = ("all", "paper")
    for caregivers in caregivers_sets:
        data = folder / f"data-{caregivers}"
        stages.append(Stage(f"corpus, {caregivers} caregivers", data,
                            [python, "-m", "llamalogue.corpus", "--childes", *map(str, args.childes),
                             "--caregivers", caregivers, "--out", str(data), *workers],
                            None, lambda data=data: corpus_complete(data)))
    # the parts, (source, words, label) into data-LABEL: the data curve on the base's corpus, and each caregivers'
    # corpus at the curve's end
    data_curve = [(args.base_data, words, f"{words // 1000}k") for words in DATA_CURVE_WORDS]
    caregivers_parts = [(folder / f"data-{caregivers}", CAREGIVERS_WORDS, f"{caregivers}-{CAREGIVERS_WORDS // 1000}k")
                        for caregivers in caregivers_sets]
    for source, words, label in data_curve + caregivers_parts:
        data = folder / f"data-{label}"
        stages.append(Stage(f"corpus, the first {words:,} words of {source.name}", data,
                            [python, "scripts/corpus_part.py", "--data", str(source), "--words", str(words),
                             "--out", str(data)],
                            None, lambda data=data: corpus_part_complete(data)))
    model = presets(args)["model"]
    base_epochs = ["--preset", model, "--epochs", "1" if tiny else "2"]
    # the larger model with `small`'s optimisation, as many tokens a step (windows twice as long, half as many)
    larger_model = ["--model", "tiny" if tiny else "paper", "--batch-size", "4" if tiny else "16"]
    # the pretraining runs, (name, corpus, options) into lm-NAME: the caregivers on their whole corpora and on their
    # parts, epochs and the larger model on the base's corpus, then the data curve and the two factors on its smallest
    runs = [(f"caregivers-{caregivers}", folder / f"data-{caregivers}", base_epochs) for caregivers in caregivers_sets]
    runs += [(f"caregivers-{label}", folder / f"data-{label}", base_epochs) for _, _, label in caregivers_parts]
    runs += [("epochs", args.base_data, ["--preset", model, "--epochs", str(args.gap_epochs), "--milestones"]),
             ("larger-model", args.base_data, ["--preset", "tiny" if tiny else "paper", "--epochs", "1"])]
    runs += [(f"words-{label}", folder / f"data-{label}", base_epochs) for _, _, label in data_curve]
    smallest = data_curve[0][2]
    runs += [(f"words-{smallest}-epochs", folder / f"data-{smallest}",
              ["--preset", model, "--epochs", str(args.gap_epochs)]),
             (f"words-{smallest}-larger-model", folder / f"data-{smallest}", [*base_epochs, *larger_model])]
    for name, data, options in runs:
        run = folder / f"lm-{name}"
        stages.append(Stage(f"pretraining, {name}", run,
                            [python, "train_lm.py", *options, "--data", str(data), "--out", str(run), *threads],
                            [python, "train_lm.py", "--resume", "--out", str(run), *threads],
                            lambda run=run: pretraining_complete(run)))
    return stages


def evaluation(args, part: str, models: list[Path], milestones: bool = False) -> Stage:
    """evaluate.py on the models (the first, the base, is what the paired tests compare with), into OUT/eval-PART;
    with milestones, the curve of each model's milestone checkpoints (OUT/eval-PART/milestones.csv)."""
    python, threads = sys.executable, ["--threads", str(args.threads)] if args.threads else []
    out = args.out / f"eval-{part}"
    eval_data = ["--eval-data", str(args.eval_data)] if args.eval_data else []
    tasks = tiny_options(args, "evaluation") or ["--tasks", EVAL_TASKS]
    return Stage(f"evaluation, {part}", out,
                 [python, "evaluate.py", *(part for model in models for part in ("--model", str(model))),
                  "--protocol", "paper", *(["--milestones"] if milestones else []), *eval_data, *tasks,
                  "--out", str(out), *threads],
                 None, lambda: evaluation_complete(out / ("milestones.csv" if milestones else "results.json"), models))


# Each part's runs: a new part is one entry here (and its evaluation in `plan`, when it is not the usual one).
PART_RUNS = {"dpo": dpo_runs, "synthetic": synthetic_runs, "ppo": ppo_runs, "interaction": interaction_runs,
             "base-gap": base_gap_runs}
PARTS = tuple(PART_RUNS)


def plan(args) -> list[Stage]:
    """Each part's runs, then its evaluation beside the base."""
    stages = []
    for part in args.parts:
        runs = PART_RUNS[part](args)
        stages += runs
        if part == "ppo":
            steps, keep = ppo_steps(args)
            kept = [run.folder / STEPS / f"step_{step}" for run in runs for step in range(keep, steps, keep)]
            stages.append(evaluation(args, part, [args.base, *kept, *(run.folder for run in runs)]))
        elif part == "base-gap":
            models = [run.folder for run in runs if run.name.startswith("pretraining")]
            stages.append(evaluation(args, part, [args.base, *models]))
            stages.append(evaluation(args, "base-gap-curve", [args.out / "base-gap" / "lm-epochs"], milestones=True))
        else:
            stages.append(evaluation(args, part, [args.base, *(run.folder for run in runs)]))
    return stages


# The tasks of the table, the poster's column for each part's runs (data/paper_results.csv), and the rows' order.
TABLE_TASKS = ("dialogue_words", "dialogue_tokens", "zorro", "blimp")
# (The poster's Baseline column is another model, a 124M GPT-2 on 100M words: no difference to its base to set beside
# the interaction runs'; docs/replication.md gives its values.)
POSTER_COLUMN = {"dpo": "dpo_natural", "synthetic": "dpo_synthetic", "ppo": "ppo_{run}"}
PAPER_RESULTS = Path(__file__).resolve().parent.parent / "data" / "paper_results.csv"


def cell_name(part: str, path: str) -> str:
    """The cell a scored model belongs to, from its path: a DPO run without its seed (dpo/ours-paper-s1 ->
    ours-paper), every interaction seed as one, a PPO copy as REWARD step N, any other run by its folder's name."""
    path = Path(path)
    if part in ("dpo", "synthetic"):
        return path.name.rsplit("-s", 1)[0]
    if part == "interaction":  # its seeds, s0 s1 s2, are one cell
        return "interaction"
    if part == "ppo":
        return f"{path.parent.parent.name} {path.name.replace('_', ' ')}" if path.parent.name == STEPS else \
            f"{path.name} end"
    return path.name


def table(out: Path) -> str:
    """OUT/table.md: every evaluated part, each cell's difference to the base (mean over seeds, with each seed's
    value and the widest McNemar p), beside the poster's difference for that row (data/paper_results.csv)."""
    poster = read_paper_results(PAPER_RESULTS)
    lines = ["# The poster's table from one base: ours beside the paper's", "",
             "Each cell: the difference to the base in accuracy points, mean over seeds (each seed's in brackets, "
             "the largest McNemar p of them after the bar); the paper's difference from its own base after `/`. "
             "Written by scripts/replication.py from OUT/eval-PART/results.json.", ""]
    for part in PARTS:
        results = out / f"eval-{part}" / "results.json"
        if not results.is_file():
            continue
        evaluation = json.loads(results.read_text())
        base = next(iter(evaluation["results"]))
        cells: dict[str, dict[str, list[dict]]] = {}
        for comparison in evaluation["comparisons"]:
            cell = cell_name(part, evaluation["models"][comparison["b"]]["path"])
            cells.setdefault(cell, {}).setdefault(comparison["task"], []).append(comparison)
        lines += [f"## {part} (base: {base})", "", "| run | " + " | ".join(TABLE_TASKS) + " |",
                  "|---|" + "---|" * len(TABLE_TASKS),
                  f"| base | " + " | ".join(base_cell(evaluation["results"][base], task, poster) for task in TABLE_TASKS)
                  + " |"]
        for cell, per_task in cells.items():
            lines.append(f"| {cell} | " + " | ".join(difference_cell(per_task.get(task, []), poster, part, cell, task)
                                                     for task in TABLE_TASKS) + " |")
        lines.append("")
    return "\n".join(lines)


def base_cell(results: dict, task: str, poster: dict) -> str:
    if task not in results:
        return "—"
    paper = poster.get(task, {}).get("llamalogue")
    return f"{results[task]['value']:.2f}" + (f" / {paper:.2f}" if paper is not None else "")


def difference_cell(comparisons: list[dict], poster: dict, part: str, cell: str, task: str) -> str:
    if not comparisons:
        return "—"
    differences = [c["difference"] for c in comparisons]
    seeds = f" ({', '.join(f'{d:+.2f}' for d in differences)})" if len(differences) > 1 else ""
    text = f"{statistics.mean(differences):+.2f}{seeds} \\| p ≤ {max(c.get('p', 1.0) for c in comparisons):.2g}"
    if part not in POSTER_COLUMN:
        return text
    column = POSTER_COLUMN[part].format(run=cell.split()[0].replace("llm", "llm_score"))
    paper, paper_base = poster.get(task, {}).get(column), poster.get(task, {}).get("llamalogue")
    if paper is not None and paper_base is not None:
        text += f" / {paper - paper_base:+.2f}"
    return text


def parts(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(PARTS)} (comma-separated)")
    return chosen


def seeds(text: str) -> list[int]:
    try:
        values = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are integers, comma-separated (e.g. 0,1,2)") from None
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=absolute, required=True,
                        help="the run every model starts from, e.g. ../shared/checkpoints/lm-small-full")
    parser.add_argument("--base-data", type=absolute,
                        help="its corpus folder, whose prompts.txt PPO answers (default: the --base's sibling "
                             "data-full, as in ../shared/checkpoints)")
    parser.add_argument("--paper-data", type=absolute, required=True,
                        help="the paper's files: the folder holding dpo/huggingface_dpo_format.json and "
                             "dpo/synthetic_dpo_format.json, e.g. ../shared/data/paper")
    parser.add_argument("--childes", nargs="+", type=absolute, default=[absolute("data/childes")],
                        help="base-gap: the transcripts its corpora are built from (the base: "
                             "../shared/data/childes/xml)")
    parser.add_argument("--eval-data", type=absolute,
                        help="the evaluation suites' root, e.g. ../shared/data (default: the embedded samples)")
    parser.add_argument("--out", type=absolute, default="runs/replication", help="default: runs/replication")
    parser.add_argument("--parts", type=parts, default=list(PARTS), help=f"default: {','.join(PARTS)}")
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper",
                        help="paper (default): the experiments as docs/replication.md ran them; tiny: the smoke run")
    parser.add_argument("--seeds", type=seeds, default=[0, 1, 2], help="default: 0,1,2")
    parser.add_argument("--ppo-episodes", type=positive_int, default=20_000, help="replies per PPO run (default: "
                        "20000)")
    parser.add_argument("--ppo-points", type=positive_int, default=4,
                        help="copies of the weights kept on the way, for the curve (default: 4)")
    parser.add_argument("--ppo-prompts", type=positive_int, default=2_000,
                        help="distinct prompts the episodes come from: the teacher answers each (default: 2000)")
    parser.add_argument("--gap-epochs", type=float, default=10,
                        help="base-gap: epochs of the longer `small` run (default: 10, the paper's)")
    parser.add_argument("--teacher", help="the rewards' teacher: HF folder, .gguf or hub id (default: SmolLM2)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads of each stage")
    args = parser.parse_args(argv)
    if args.base_data is None:
        args.base_data = args.base.parent / "data-full"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    code = run_in(lambda: plan(args), args.out / "logs",
                  lambda stages: f"replication from {args.base}, parts {', '.join(args.parts)}: {len(stages)} stages "
                                 f"into {args.out}")
    if code == 0:
        write_text(args.out / "table.md", table(args.out))
        print(f"the table beside the poster's: {args.out / 'table.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
