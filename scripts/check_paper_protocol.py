"""Our `--protocol paper` against minicons itself, item by item: the paper's scoring of its own benchmarks.

    .venv/bin/pip install minicons       # a reference only: the package never imports it
    python scripts/check_paper_protocol.py --model ../shared/checkpoints/lm-small-full --eval-data ../shared/data \
        --items 1000

For each of dialogue words, dialogue tokens and Zorro, the first --items minimal pairs are scored twice: by our tree
scorer under the paper's protocol (llamalogue/evaluation/protocol.py), and by minicons on the run's Hugging Face
export exactly as the paper's scripts call it (IncrementalLMScorer.sequence_score(..., reduction=sum,
bow_correction=True); a dialogue text alone, a Zorro pair as one batch). Prints, per set: pairs, the largest
per-text |difference|, the pairs whose verdict differs, both accuracies and both times.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llamalogue.evaluation import load_lm, score_texts
from llamalogue.evaluation.protocol import apply_protocol
from llamalogue.hf import export
from llamalogue.suites import SUITES, load_suite

SETS = ("dialogue_words", "dialogue_tokens", "zorro")


def minicons_scores(reference, suite, items) -> list[list[float]]:
    def total(x):
        return x.sum(0).item()

    if suite.name == "zorro":  # evaluate_zorro.py: the pair in one call
        return [reference.sequence_score(item.candidates, reduction=total, bow_correction=True) for item in items]
    return [[reference.sequence_score(text, reduction=total, bow_correction=True)[0] for text in item.candidates]
            for item in items]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a llamalogue run directory")
    parser.add_argument("--eval-data", required=True, help="the shared data folder (paper/dpo, eval/zorro)")
    parser.add_argument("--items", type=int, default=1000, help="minimal pairs per set (0: all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from minicons import scorer
    except ImportError:
        sys.exit("error: minicons is not installed (`.venv/bin/pip install minicons`)")
    ours = load_lm(args.model, "cpu")
    with tempfile.TemporaryDirectory() as hf_dir:
        reference = scorer.IncrementalLMScorer(str(export(args.model, Path(hf_dir) / "hf")), device="cpu")
        print(f"{args.model}: minicons {'applies' if reference.is_bow_tokenizer else 'does NOT apply'} its "
              f"correction ({len(ours.word_start_ids)} word-start tokens ours)")
        for name in SETS:
            suite = apply_protocol(load_suite(name, Path(args.eval_data) / SUITES[name][2]), "paper")
            items = suite.items[: args.items or None]
            started = time.perf_counter()
            flat, _ = score_texts(ours, [t for item in items for t in item.candidates], word_end=suite.word_end)
            ours_seconds = time.perf_counter() - started
            started = time.perf_counter()
            theirs = np.array(minicons_scores(reference, suite, items))
            theirs_seconds = time.perf_counter() - started
            mine = np.array(flat).reshape(theirs.shape)
            right_ours, right_theirs = mine[:, 0] > mine[:, 1], theirs[:, 0] > theirs[:, 1]
            print(f"{name}: {len(items)} pairs, max |ours - minicons| {np.abs(mine - theirs).max():.2e} per text, "
                  f"{int((right_ours != right_theirs).sum())} verdicts differ; accuracy {100 * right_ours.mean():.2f} "
                  f"vs {100 * right_theirs.mean():.2f}; {ours_seconds:.1f} s vs {theirs_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
