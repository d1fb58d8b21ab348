"""The teacher as the paper's LLM judge, beside the judge the paper used.

    python scripts/judge_check.py --paper-data ../shared/data/paper --n 96 --threads 2

The paper's LLM-score reward asked allenai/OLMo-2-1124-7B-Instruct to rate each baby reply from 0 to 5, and its PPO
log keeps those ratings (`ppo/responses_with_scores.csv`: caregiver turn, baby reply, OLMo's rating). On --n of those
rows, drawn with --seed, this asks our teacher (default SmolLM2-135M-Instruct) the same question two ways, each as
`train_ppo.py` does:

- the paper's (`--reward llm --preset paper`): the paper's judge prompt, a greedy answer of up to 10 tokens, its
  first number from 1 to 5 as the rating, 0 when there is none (llamalogue.rl.rewards.paper_rating);
- ours (`--reward llm`): the expected digit under the teacher's first-token probabilities of "0".."5".

It prints how many answers hold a rating, each judge's mean rating, the correlation of each with OLMo's ratings
(Pearson, over the rows; "—" where a judge gives every row the same rating), and a few of the teacher's answers.
"""

import argparse
import csv
import random
from pathlib import Path

import numpy as np

from llamalogue.cli import USER_ERRORS, fail, positive_int, set_threads
from llamalogue.rl.rewards import PAPER_RATING, make_reward, paper_rating

LOG = Path("ppo") / "responses_with_scores.csv"
COLUMNS = ("Mother Prompt", "Child Response", "Extracted Score")


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        fail(f"--paper-data: {path} not found (the paper's PPO log of OLMo-rated replies)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(column not in rows[0] for column in COLUMNS):
        fail(f"{path}: no rows with the columns {', '.join(COLUMNS)}")
    return rows


def correlation(ratings: np.ndarray, olmo: np.ndarray) -> str:
    """Pearson's r of a judge's ratings with OLMo's; "—" when either gives every reply the same rating."""
    return "—" if ratings.std() == 0 or olmo.std() == 0 else f"{np.corrcoef(ratings, olmo)[0, 1]:+.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-data", type=Path, required=True, help="the paper's data folder (ppo/ inside)")
    parser.add_argument("--n", type=positive_int, default=96, help="rows of the paper's log to judge")
    parser.add_argument("--teacher", default=None, help="HF folder, .gguf or hub id (default: SmolLM2-135M)")
    parser.add_argument("--seed", type=int, default=0, help="which rows")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--show", type=int, default=6, help="answers of the teacher to print")
    args = parser.parse_args(argv)
    set_threads(args)
    rows = read_rows(args.paper_data / LOG)
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.n]
    prompts, replies = [r["Mother Prompt"] for r in rows], [r["Child Response"] for r in rows]
    olmo = np.array([float(r["Extracted Score"]) for r in rows])

    try:
        paper_judge = make_reward("llm", teacher_name=args.teacher, style="paper")  # as the runs build them
        ours_judge = make_reward("llm", teacher_name=args.teacher)
    except USER_ERRORS as error:
        fail(f"--teacher {args.teacher}: {error}")
    answers = paper_judge.paper_answers(prompts, replies)  # not the ratings alone: what the judge says is the finding
    paper = np.array([paper_rating(answer) for answer in answers])
    ours = np.array(ours_judge.expected_scores(prompts, replies))

    rated = sum(PAPER_RATING.search(answer) is not None for answer in answers)
    print(f"{len(rows)} replies of {args.paper_data / LOG}, teacher {paper_judge.teacher.id}")
    print(f"OLMo-2-7B (the paper's judge): mean {olmo.mean():.2f}, {(olmo > 0).mean():.0%} of replies rated 1-5")
    print(f"the paper's judge prompt: {rated} of {len(rows)} answers hold a rating; mean {paper.mean():.2f}, "
          f"correlation with OLMo {correlation(paper, olmo)}")
    print(f"our expected digit: mean {ours.mean():.2f} (sd {ours.std():.2f}), correlation with OLMo "
          f"{correlation(ours, olmo)}")
    for prompt, reply, answer in list(zip(prompts, replies, answers))[: args.show]:
        print(f"  MOT: {prompt} | CHI: {reply} -> {answer!r}")


if __name__ == "__main__":
    main()
