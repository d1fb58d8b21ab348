"""CHILDES corpus: llamalogue's data built from transcripts (llamalogue.corpus.transcripts reads them,
llamalogue.corpus.chat_cleaning cleans their utterances).

    python -m llamalogue.corpus --childes data/childes --out runs/data [--vocab-size 16000]

Pipeline, one function each, in the order the build runs them:

1. `find_transcripts`   every `.xml`, `.xml.gz` and `.cha` file under the given paths.
2. `read_transcript`    TalkBank XML (`read_xml`) or CHAT (`read_chat`) -> `Transcript`, with every utterance cleaned
                        by the same rules (`clean_chat` for CHAT text, `clean_xml_utterance` for XML elements);
                        run in worker processes.
3. `split_transcripts`  whole transcripts -> train / val / dpo / eval (seeded, disjoint, checked).
4. `triplets`           caregiver-child-caregiver windows, written one utterance per line with its speaker tag
                        (`*MOT: what're you making ?`), a blank line after each triplet.
5. `Tokenizer.train`    SentencePiece on train.txt (see llamalogue/tokenizer.py).
6. `natural_pairs`      (mother prompt, the child's real reply, a random child reply from another transcript of the
                        same held-out split), the random reply matched in words or in tokens.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from llamalogue.cli import fail
from llamalogue.corpus.dialogue_files import read_documents
from llamalogue.run_dir import write_json
from llamalogue.tokenizer import Tokenizer
from llamalogue.corpus.transcripts import (CAREGIVER_ROLES, CAREGIVER_SETS, CHILD_ROLE, SPEAKER_TAGS, CorpusError,
                                           Transcript, Utterance, caregiver_roles, find_transcripts, read_transcript,
                                           speaker_tag)

DEFAULT_CHILDES = Path(__file__).resolve().parents[2] / "data" / "childes"
SPLITS = ("train", "val", "dpo", "eval")
DEFAULT_FRACTIONS = {"val": 0.02, "dpo": 0.10, "eval": 0.05}  # train gets the rest
PAIR_SPLITS = ("dpo", "eval")
MIN_VOCAB_SIZE = 400
MIN_PAIR_TOKENS = 4  # the paper's prompts and replies have >= 4 whitespace tokens (terminator included)


def _read_for_build(job: tuple[Path, str]) -> tuple[str, Transcript | None, str | None]:
    """Worker: (id, transcript or None, error line)."""
    path, tid = job
    try:
        return tid, read_transcript(path, tid), None
    except CorpusError as error:
        return tid, None, str(error)


# ----------------------------------------------------------------------------------------------------------------
# Dialogue data: splits, triplets, prompts, natural pairs

def split_transcripts(ids: Iterable[str], seed: int = 0,
                      fractions: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Whole transcripts -> {"train", "val", "dpo", "eval"}: a seeded shuffle of the sorted ids, each held-out split
    gets round(fraction * n) transcripts, train the rest. At least 1 in val and 2 in dpo and eval (a pair's random
    reply comes from another transcript of its split). Checked disjoint."""
    fractions = {**DEFAULT_FRACTIONS, **(fractions or {})}
    ids = sorted(ids)
    held_out = {name: max(2 if name in PAIR_SPLITS else 1, round(fractions[name] * len(ids))) for name in SPLITS[1:]}
    if len(ids) < 1 + sum(held_out.values()):
        raise CorpusError(f"{len(ids)} transcripts cannot fill 4 disjoint splits (need at least "
                          f"{1 + sum(held_out.values())})")
    random.Random(seed).shuffle(ids)
    splits, start = {}, 0
    for name in SPLITS[1:]:
        splits[name] = sorted(ids[start:start + held_out[name]])
        start += held_out[name]
    splits = {"train": sorted(ids[start:]), **splits}
    check_disjoint(splits)
    return splits


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """Raise CorpusError if a transcript is in two splits."""
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for tid in ids:
            if tid in seen:
                raise CorpusError(f"transcript {tid} is in split {seen[tid]} and in split {name}")
            seen[tid] = name


def _adjacent(*utterances: Utterance) -> bool:
    return all(b.index == a.index + 1 for a, b in zip(utterances, utterances[1:]))


def triplets(transcript: Transcript, all_windows: bool = False,
             caregivers: frozenset[str] = CAREGIVER_ROLES) -> Iterator[tuple[Utterance, Utterance, Utterance]]:
    """Windows of three adjacent utterances: caregiver, target child, caregiver (or every window, all_windows); the
    caregivers are the CHAT roles in `caregivers` (every caregiver role, or the paper's MOT, FAT, INV: CAREGIVER_SETS).

    Windows overlap: in MOT CHI MOT CHI MOT the middle MOT closes one triplet and opens the next.
    """
    u = transcript.utterances
    for window in zip(u, u[1:], u[2:]):
        if not _adjacent(*window):
            continue
        first, child, last = window
        if all_windows or (first.role in caregivers and child.role == CHILD_ROLE and last.role in caregivers):
            yield window


def _mother_child_turns(transcript: Transcript) -> Iterator[tuple[Utterance, Utterance]]:
    """(mother utterance, the child's reply right after it), both at least MIN_PAIR_TOKENS long."""
    u = transcript.utterances
    for prompt, reply in zip(u, u[1:]):
        if (prompt.role == "Mother" and reply.role == CHILD_ROLE and _adjacent(prompt, reply)
                and len(prompt.text.split()) >= MIN_PAIR_TOKENS and len(reply.text.split()) >= MIN_PAIR_TOKENS):
            yield prompt, reply


def _lexical(text: str) -> set[str]:
    return {word.lower() for word in text.split() if any(ch.isalnum() for ch in word)}


def natural_pairs(transcripts: list[Transcript], length, overlap: bool, seed: int) -> tuple[list[dict], int]:
    """The paper's natural DPO pairs from one split: (mother prompt, the child's actual reply = chosen, a random
    child reply from ANOTHER transcript of the split with the same length = rejected).

    length(text) -> int is the matched length: whitespace tokens (`words`, terminator included, as the paper's
    len_pairs file) or tokenizer tokens (`tokens`). overlap=False keeps only pairs whose chosen reply shares no word
    with the prompt (so a model cannot win by preferring repetition): the paper's `*_no_overlap_*` files (their
    chosen replies overlap the prompt in 0.07 % of rows, case differences; their rejected in 14 %).
    Returns (pairs, number of prompts with no reply of matching length elsewhere).
    """
    rng = random.Random(seed)
    pool: dict[int, list[tuple[str, str]]] = {}
    for t in transcripts:
        for reply in t.utterances:
            if reply.role == CHILD_ROLE and len(reply.text.split()) >= MIN_PAIR_TOKENS:
                pool.setdefault(length(reply.text), []).append((reply.text, t.file))
    pairs, unmatched = [], 0
    for t in transcripts:
        for prompt, reply in _mother_child_turns(t):
            if not overlap and _lexical(prompt.text) & _lexical(reply.text):
                continue
            candidates = pool[length(reply.text)]  # never empty: the reply itself is in the pool
            for _ in range(50):  # random draws; a draw from the same transcript or with the same text is redrawn
                text, source = candidates[rng.randrange(len(candidates))]
                if source != t.file and text != reply.text:
                    pairs.append({"prompt": prompt.line, "chosen": reply.line,
                                  "rejected": f"{speaker_tag(CHILD_ROLE)} {text}", "transcript": t.file})
                    break
            else:
                unmatched += 1
    return pairs, unmatched


def _build_key(files: list[tuple[Path, str]], options: dict) -> str:
    """Hash of everything the output depends on: input files (path, size, mtime), options, and this code."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path, tid in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{tid}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for module in (Path(__file__), Path(__file__).parent.parent / "tokenizer.py"):
        digest.update(module.read_bytes())
    return digest.hexdigest()


OUTPUT_FILES = ("train.txt", "val.txt", "dpo.txt", "eval.txt", "prompts.txt", "splits.json", "tokenizer.model",
                "stats.json")


def _cached_stats(out_dir: Path, key: str) -> dict | None:
    try:
        stats = json.loads((out_dir / "stats.json").read_text())
    except (OSError, ValueError):
        return None
    if stats.get("build_key") != key or not all((out_dir / name).exists() for name in OUTPUT_FILES):
        return None
    return stats


def build_corpus(inputs: list[Path] | None = None, out_dir: Path = Path("runs/data"), vocab_size: int = 16000,
                 seed: int = 0, all_windows: bool = False, fractions: dict[str, float] | None = None,
                 workers: int = 2, force: bool = False, progress: bool = True,
                 max_tokenizer_sentences: int = 1_000_000, caregivers: frozenset[str] = CAREGIVER_ROLES) -> dict:
    """Build llamalogue's data directory from CHILDES transcripts; returns the statistics (also DIR/stats.json).

    Rebuilds only when the inputs, the options or this code changed (or force). Raises CorpusError for bad inputs or
    an empty result; unreadable files and lines are warned about (DIR/warnings.txt), skipped and counted.
    """
    start = time.time()
    if vocab_size < MIN_VOCAB_SIZE:
        raise CorpusError(f"--vocab-size {vocab_size}: too small (the 256 byte pieces, the special ids, newline and "
                          f"the {len(SPEAKER_TAGS)} speaker tags need {MIN_VOCAB_SIZE})")
    inputs = [Path(p) for p in (inputs or [DEFAULT_CHILDES])]
    out_dir = Path(out_dir)
    files = find_transcripts(inputs)
    options = {"vocab_size": vocab_size, "seed": seed, "all_windows": all_windows, "caregivers": sorted(caregivers),
               "fractions": {**DEFAULT_FRACTIONS, **(fractions or {})},
               "max_tokenizer_sentences": max_tokenizer_sentences}
    key = _build_key(files, options)
    if not force and (stats := _cached_stats(out_dir, key)):
        if progress:
            print(f"{out_dir}: up to date ({stats['transcripts']} transcripts, built from the same inputs/options)")
        return stats
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").unlink(missing_ok=True)  # a half-written directory is never taken as built
    dropped: Counter = Counter()
    warnings: list[str] = []
    readable: dict[str, Transcript] = {}  # the files that could be read: only they take places in the splits
    workers = max(1, min(workers, len(files)))
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_read_for_build, files, chunksize=4) if pool else map(_read_for_build, files)
        for tid, transcript, error in tqdm(results, total=len(files), unit="file", desc="reading transcripts",
                                           disable=not progress, file=sys.stdout):
            if transcript is None:
                warnings.append(error)
                dropped["unreadable_file"] += 1
            else:
                readable[tid] = transcript
    finally:
        if pool:
            pool.terminate()
    try:
        splits = split_transcripts(readable, seed, options["fractions"])
    except CorpusError as error:
        unreadable = f"; {len(files) - len(readable)} of {len(files)} files unreadable, first {warnings[0]}"
        raise CorpusError(f"{error}{unreadable if warnings else ''}") from None

    words_by_role: Counter = Counter()
    utterances_by_role: Counter = Counter()
    triplet_counts = Counter({name: 0 for name in SPLITS})
    # what each named caregiver set would give, whichever the build uses: ours and the paper's side by side
    triplets_by_caregivers = {name: Counter({split: 0 for split in SPLITS}) for name in CAREGIVER_SETS}
    for split, ids in splits.items():
        with (out_dir / f"{split}.txt").open("w", encoding="utf-8") as out:
            for tid in ids:
                transcript = readable[tid]
                warnings.extend(transcript.warnings)
                dropped.update(transcript.dropped)
                for u in transcript.utterances:
                    utterances_by_role[u.role or "undeclared"] += 1
                    words_by_role[u.role or "undeclared"] += sum(w != "," for w in u.text.split()) - 1
                for window in triplets(transcript, all_windows, caregivers):
                    out.write("\n".join(u.line for u in window) + "\n\n")
                    triplet_counts[split] += 1
                for name, roles in CAREGIVER_SETS.items():
                    triplets_by_caregivers[name][split] += sum(1 for _ in triplets(transcript, caregivers=roles))
    held_out = {split: [readable[tid] for tid in splits[split]] for split in PAIR_SPLITS}
    seconds_reading = time.time() - start
    if not triplet_counts["train"]:
        raise CorpusError(f"--childes {' '.join(map(str, inputs))}: no caregiver-child-caregiver triplet in the "
                          f"train split ({len(readable)} transcripts read)")

    if progress:
        print(f"training the tokenizer (SentencePiece, vocab {vocab_size}) on train.txt ...", flush=True)
    try:
        tokenizer = Tokenizer.train([out_dir / "train.txt"], out_dir / "tokenizer", vocab_size, SPEAKER_TAGS,
                                    max_sentences=max_tokenizer_sentences, seed=seed)
    except RuntimeError as error:  # SentencePiece's own message, e.g. a vocabulary too large for a tiny text
        raise CorpusError(f"{out_dir / 'train.txt'}: tokenizer training failed: {error}") from None
    seconds_tokenizer = time.time() - start - seconds_reading
    tokens = {}
    for name in SPLITS:
        documents = read_documents(out_dir / f"{name}.txt")
        tokens[name] = sum(len(ids) + 2 for ids in tokenizer.encode_batch(documents))  # + BOS and EOS

    # PPO/teacher prompts: the dpo split's mother utterances of >= 4 tokens, as the paper; repeated ones kept once
    prompts = list(dict.fromkeys(u.text for t in held_out["dpo"] for u in t.utterances
                                 if u.role == "Mother" and len(u.text.split()) >= MIN_PAIR_TOKENS))
    (out_dir / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    pair_counts, unmatched = {}, Counter()
    (out_dir / "pairs").mkdir(exist_ok=True)
    lengths = {"words": lambda text: len(text.split()), "tokens": functools.cache(lambda t: len(tokenizer.encode(t)))}
    for split in PAIR_SPLITS:
        for match, length in lengths.items():
            for overlap in (True, False):
                name = f"{split}_{match}_{'overlap' if overlap else 'nooverlap'}"
                pairs, unmatched[name] = natural_pairs(held_out[split], length, overlap, seed)
                with (out_dir / "pairs" / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                    f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
                pair_counts[name] = len(pairs)
                if not pairs:  # DPO and dialogue-MP would find nothing to read: said, not silently written
                    warnings.append(f"{out_dir / 'pairs' / (name + '.jsonl')}: 0 pairs (the {split} split's "
                                    f"{len(held_out[split])} transcripts hold no mother-child exchange of >= "
                                    f"{MIN_PAIR_TOKENS} words each)")
    if not prompts:
        warnings.append(f"{out_dir / 'prompts.txt'}: 0 caregiver prompts (PPO reads its prompts there)")

    write_json(out_dir / "splits.json", splits)
    (out_dir / "warnings.txt").write_text("".join(w + "\n" for w in warnings), encoding="utf-8")
    stats = {
        "transcripts": len(readable),
        "files": len(files),
        "utterances": sum(utterances_by_role.values()),
        "utterances_by_role": dict(utterances_by_role.most_common()),
        "words": sum(words_by_role.values()),
        "words_by_role": dict(words_by_role.most_common()),
        "transcripts_by_split": {name: len(ids) for name, ids in splits.items()},
        "triplets": dict(triplet_counts),
        "triplets_by_caregivers": {name: dict(counts) for name, counts in triplets_by_caregivers.items()},
        "tokens": tokens,
        "prompts": len(prompts),
        "pairs": pair_counts,
        "pairs_without_match": {k: v for k, v in unmatched.items() if v},
        "dropped": dict(dropped.most_common()),
        "warnings": len(warnings),
        "vocab_size": tokenizer.vocab_size,
        "seconds_reading": round(seconds_reading, 1),
        "seconds_tokenizer": round(seconds_tokenizer, 1),
        "seconds": round(time.time() - start, 1),
        "inputs": [str(p) for p in inputs],
        "options": options,
        "build_key": key,
    }
    write_json(out_dir / "stats.json", stats)
    if progress:
        _print_summary(stats, warnings, out_dir)
    return stats


def _print_summary(stats: dict, warnings: list[str], out_dir: Path) -> None:
    for line in warnings[:10]:
        print(f"warning: {line}")
    if len(warnings) > 10:
        print(f"... {len(warnings) - 10} more warnings in {out_dir / 'warnings.txt'}")
    words = stats["words_by_role"]
    caregiver_words = sum(n for role, n in words.items() if role in CAREGIVER_ROLES)
    print(f"{stats['transcripts']} transcripts ({stats['files']} files), {stats['utterances']:,} utterances, "
          f"{stats['words']:,} words (child {words.get(CHILD_ROLE, 0):,}, caregivers {caregiver_words:,})")
    print("triplets " + ", ".join(f"{k} {v:,}" for k, v in stats["triplets"].items())
          + " | tokens " + ", ".join(f"{k} {v:,}" for k, v in stats["tokens"].items()))
    print("train triplets by caregiver set: " + ", ".join(f"{name} {counts['train']:,}" for name, counts
                                                          in stats["triplets_by_caregivers"].items()))
    print(f"{stats['prompts']:,} prompts; pairs " + ", ".join(f"{k} {v:,}" for k, v in stats["pairs"].items()))
    print("dropped " + ", ".join(f"{k} {v:,}" for k, v in stats["dropped"].items()))
    if stats["vocab_size"] < stats["options"]["vocab_size"]:
        print(f"tokenizer: {stats['vocab_size']:,} pieces (asked for {stats['options']['vocab_size']:,}: the train "
              f"text is too small for more)")
    print(f"wrote {out_dir} in {stats['seconds']:.1f} s (reading {stats['seconds_reading']:.1f} s, tokenizer "
          f"{stats['seconds_tokenizer']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamalogue.corpus", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--childes", nargs="+", type=Path, metavar="PATH",
                        help="transcript files or folders (.xml, .xml.gz, .cha), searched recursively "
                             "(default: the embedded sample data/childes)")
    parser.add_argument("--out", type=Path, default=Path("runs/data"), help="output data directory")
    parser.add_argument("--vocab-size", type=int, default=16000, help="SentencePiece vocabulary size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and the random pair replies")
    parser.add_argument("--all-windows", action="store_true",
                        help="every window of three adjacent utterances, not only caregiver-child-caregiver")
    parser.add_argument("--caregivers", default="all", metavar="all|paper|CODES",
                        help="who opens and closes a triplet: all (every caregiver role), paper (MOT,FAT,INV, as the "
                             "paper's triplets), or speaker codes such as MOT,FAT")
    for name, value in DEFAULT_FRACTIONS.items():
        parser.add_argument(f"--{name}-fraction", type=float, default=value,
                            help=f"share of transcripts in split {name} (train gets the rest)")
    parser.add_argument("--workers", type=int, default=2, help="reader processes")
    parser.add_argument("--max-tokenizer-sentences", type=int, default=1_000_000,
                        help="lines of train.txt sampled to train the tokenizer")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR is up to date")
    args = parser.parse_args(argv)
    fractions = {name: getattr(args, f"{name}_fraction") for name in DEFAULT_FRACTIONS}
    try:
        if not all(0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
            raise CorpusError(f"split fractions {fractions}: each must be in [0, 1) and together < 1")
        build_corpus(args.childes, args.out, args.vocab_size, args.seed, args.all_windows, fractions, args.workers,
                     args.force, max_tokenizer_sentences=args.max_tokenizer_sentences,
                     caregivers=caregiver_roles(args.caregivers))
    except CorpusError as error:
        fail(error)
    return 0

