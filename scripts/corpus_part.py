"""A corpus folder holding a part of another's training split: its first N words, in whole triplets, with the
other's validation split, held-out splits and pairs, prompts and tokenizer unchanged -- so that a model pretrained on
the part is scored and prompted exactly as one pretrained on the whole, and a smaller word budget (BabyLM's
strict-small 10M, or a CPU's few hundred thousand) is one flag.

    python scripts/corpus_part.py --data ../shared/checkpoints/data-full --words 250000 --out runs/data-250k
    python scripts/corpus_part.py --data DIR --skip-words 250000 --words 60000 --out runs/data-next-60k
    python train_lm.py --data runs/data-250k --out runs/lm-250k

A part is the triplets that start within its words: --words N takes triplets until N words are reached (the last
one may end past N); --skip-words M starts at the first triplet that starts at or after word M, so the part after
`--words M` is `--skip-words M`, with no triplet in both. The training split is in transcript order (corpus, child,
age: llamalogue.corpus.build), so a part is the first transcripts, not a sample of all. The tokenizer is the whole
corpus's: it has seen more text than the part. OUT/part.json records the source, the words and triplets taken. Words
are counted as the word budget counts them (llamalogue.word_budget.count_words).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from llamalogue.cli import USER_ERRORS, fail, positive_int
from llamalogue.corpus.dialogue_files import read_documents
from llamalogue.word_budget import count_words

# Copied when present; stats.json and splits.json describe the whole corpus and are left out.
COPIED = ("val.txt", "val.bin", "dpo.txt", "eval.txt", "prompts.txt", "tokenizer.model", "tokenizer.vocab")


def first_words(triplets: list[str], skip: int, words: int) -> tuple[list[str], int]:
    """The triplets that start at or after word `skip`, up to the first that reaches `words` of them, and their
    words."""
    before, taken, part = 0, 0, []
    for triplet in triplets:
        n = count_words(triplet)
        starts_at, before = before, before + n
        if starts_at < skip:
            continue
        part.append(triplet)
        taken += n
        if taken >= words:
            break
    return part, taken


def write_part(data: Path, skip: int, words: int, out: Path) -> tuple[int, int]:
    """OUT, written beside itself and renamed when complete (a failure leaves no half folder); (triplets, words)."""
    source = data / "train.txt"
    for needed, what in ((source, "train.txt"), (data / "tokenizer.model", "tokenizer.model")):
        if not needed.is_file():
            raise ValueError(f"--data {data}: no {what} (a corpus folder of `python -m llamalogue.corpus`)")
    if not ((data / "val.txt").is_file() or (data / "val.bin").is_file()):
        raise ValueError(f"--data {data}: no val.txt or val.bin (the validation split)")
    if skip < 0:
        raise ValueError(f"--skip-words {skip}: must be 0 or more")
    if out.exists():
        raise ValueError(f"--out {out}: exists; choose a new folder")
    try:
        triplets = read_documents(source)
    except UnicodeDecodeError as error:
        raise ValueError(f"{source}: not UTF-8 text ({error})") from None
    part, taken = first_words(triplets, skip, words)
    if taken < words:
        raise ValueError(f"--words {words}: {source} holds only {taken:,} words after the first {skip:,}")
    building = out.with_name(out.name + ".part-in-progress")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        (building / "train.txt").write_text("".join(t.strip("\n") + "\n\n" for t in part), encoding="utf-8")
        for name in COPIED:
            if (data / name).is_file():
                shutil.copyfile(data / name, building / name)
        if (data / "pairs").is_dir():
            shutil.copytree(data / "pairs", building / "pairs")
        record = {"source": str(data.resolve()), "skip_words": skip, "words": taken, "triplets": len(part)}
        (building / "part.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        building.rename(out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return len(part), taken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/corpus_part.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the corpus folder to take a part of")
    parser.add_argument("--words", type=positive_int, required=True, help="words of training text in the part")
    parser.add_argument("--skip-words", type=int, default=0, help="start at word M (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="the new corpus folder (must not exist)")
    args = parser.parse_args(argv)
    try:
        triplets, words = write_part(args.data, args.skip_words, args.words, args.out)
    except USER_ERRORS as error:
        fail(error)
    print(f"wrote {args.out}: {triplets:,} triplets, {words:,} words of {args.data / 'train.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
