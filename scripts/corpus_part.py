"""A corpus folder holding a part of another's training split: its first N words, in whole triplets, with the
other's validation split, held-out splits, prompts and tokenizer unchanged -- so that a model pretrained on the part
is scored and prompted exactly as one pretrained on the whole, and a word budget (BabyLM's strict-small 10M, or a
CPU's few hundred thousand) is one flag.

    python scripts/corpus_part.py --data ../shared/checkpoints/data-full --words 250000 --out runs/data-250k
    python scripts/corpus_part.py --data DIR --skip-words 250000 --words 60000 --out runs/data-next-60k
    python train_lm.py --data runs/data-250k --out runs/lm-250k

--skip-words starts the part after the first M words (the next part of the same text). The part ends with the
first triplet that reaches N words, so it holds at least N; OUT/part.json records the source, the words and triplets
taken. Words are counted as the word budget counts them (llamalogue.word_budget.count_words).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from llamalogue.cli import fail, positive_int
from llamalogue.corpus.dialogue_files import read_documents
from llamalogue.word_budget import count_words

COPIED = ("val.txt", "dpo.txt", "eval.txt", "prompts.txt", "tokenizer.model", "tokenizer.vocab")  # when present


def first_words(triplets: list[str], skip: int, words: int) -> tuple[list[str], int]:
    """The triplets after the first `skip` words, up to the first that reaches `words` more, and their words."""
    seen, taken, part = 0, 0, []
    for triplet in triplets:
        n = count_words(triplet)
        seen += n
        if seen <= skip:
            continue
        part.append(triplet)
        taken += n
        if taken >= words:
            break
    return part, taken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/corpus_part.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the corpus folder to take a part of")
    parser.add_argument("--words", type=positive_int, required=True, help="words of training text in the part")
    parser.add_argument("--skip-words", type=int, default=0, help="start after the first M words (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="the new corpus folder (must not exist)")
    args = parser.parse_args(argv)
    source = args.data / "train.txt"
    if not source.is_file():
        fail(f"--data {args.data}: no train.txt (a corpus folder of `python -m llamalogue.corpus`)")
    if not (args.data / "tokenizer.model").is_file():
        fail(f"--data {args.data}: no tokenizer.model")
    if args.skip_words < 0:
        fail(f"--skip-words {args.skip_words}: must be 0 or more")
    if args.out.exists():
        fail(f"--out {args.out}: exists; choose a new folder")
    part, words = first_words(read_documents(source), args.skip_words, args.words)
    if words < args.words:
        fail(f"--words {args.words}: {source} holds only {words:,} words after the first {args.skip_words:,}")
    args.out.mkdir(parents=True)
    (args.out / "train.txt").write_text("".join(t.strip("\n") + "\n\n" for t in part), encoding="utf-8")
    for name in COPIED:
        if (args.data / name).is_file():
            shutil.copyfile(args.data / name, args.out / name)
    record = {"source": str(args.data.resolve()), "skip_words": args.skip_words, "words": words,
              "triplets": len(part)}
    (args.out / "part.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(part):,} triplets, {words:,} words of {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
