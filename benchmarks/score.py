"""Scoring speed: our minimal-pair scorer against minicons' `IncrementalLMScorer.sequence_score`, same model weights
(exported to transformers) and the same pairs.

    python -m benchmarks score [--preset small] [--run RUN_DIR] [--pairs 600] [--rounds 3] [--threads N]

Real BLiMP pairs from the embedded sample (data/eval/blimp, every paradigm in turn); both sides compute the summed
log-probability of every sentence with BOS prepended, in batches of 64 sentences, fp32. The model is runs/lm-small
when trained, else a freshly initialised `small` with the embedded corpus's tokenizer (speed does not depend on the
weights). Both sides' accuracies (good > bad strictly) and the largest per-sentence difference are printed.
minicons belongs to this benchmark only (`pip install minicons`), never to the package.

Last line: `score ratio=X.XX` = our pairs/s / minicons' pairs/s.
"""

import argparse
import json
import os
from pathlib import Path

import torch

from benchmarks.common import machine
from llamalogue.measured_speed import median_seconds
from llamalogue.checkpoint import load_model
from llamalogue.corpus.build import build_corpus
from llamalogue.evaluation import as_lm, judge, score_texts
from llamalogue.hf import hf_tokenizer, to_hf
from llamalogue.model import Llama, ModelConfig, default_device
from llamalogue.suites import load_blimp
from llamalogue.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCH = 64


def interleaved_pairs(count: int) -> list[list[str]]:
    """`count` BLiMP pairs taken round-robin over the 67 paradigms, so every sentence shape is in the sample."""
    by_group: dict[str, list] = {}
    for item in load_blimp().items:
        by_group.setdefault(item.group, []).append(item.candidates)
    columns = [pair for row in zip(*by_group.values()) for pair in row]
    return columns[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks score", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="model preset (without --run)")
    parser.add_argument("--run", type=Path, default=Path("runs/lm-small") if Path("runs/lm-small/checkpoint.pt").exists()
                        else None, help="a trained run directory (default: runs/lm-small if trained, else a fresh model)")
    parser.add_argument("--data", type=Path, default=Path("runs/data"), help="data directory with tokenizer.model")
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args(argv)
    try:
        from minicons import scorer
    except ImportError:
        print("minicons is not installed: this benchmark compares against it; `pip install minicons` into this "
              "environment (a benchmark-only dependency) and run it again")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())

    if args.run:
        model, tokenizer = load_model(args.run, args.device)
    else:
        if not (args.data / "tokenizer.model").exists():
            build_corpus(None, args.data)
        tokenizer = Tokenizer(args.data / "tokenizer.model")
        torch.manual_seed(0)
        model = Llama(ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)).to(args.device).eval()
    pairs = interleaved_pairs(args.pairs)
    texts = [sentence for pair in pairs for sentence in pair]
    lm = as_lm(model, tokenizer)
    # The exported tokenizer puts BOS in front by itself, so minicons is asked for no second one.
    theirs = scorer.IncrementalLMScorer(to_hf(model).to(args.device), tokenizer=hf_tokenizer(tokenizer),
                                        device=args.device)

    scores = {}

    def ours():
        scores["ours"] = score_texts(lm, texts, batch_size=BATCH)[0]

    def minicons():
        scores["minicons"] = [s for i in range(0, len(texts), BATCH)
                              for s in theirs.sequence_score(texts[i : i + BATCH], reduction=lambda x: x.sum(0).item())]

    times = median_seconds({"minicons": minicons, "ours": ours}, args.rounds, args.device)
    print(f"{model.config.n_layers} layers, dim {model.config.dim}, vocab {model.config.vocab_size} "
          f"({model.num_parameters() / 1e6:.2f}M parameters) on {args.device}, {torch.get_num_threads()} threads; "
          f"{len(pairs)} real BLiMP pairs (embedded sample, all 67 paradigms), batches of {BATCH} sentences, fp32; "
          f"median of {args.rounds} rounds in turns")
    for name, t in times.items():
        right = sum(judge(scores[name][i : i + 2])[0] for i in range(0, len(texts), 2))
        print(f"  {name:10s} {t:8.2f} s  {len(pairs) / t:8.1f} pairs/s  accuracy {100 * right / len(pairs):.2f}%")
    difference = max(abs(a - b) for a, b in zip(scores["ours"], scores["minicons"]))
    verdicts = [judge(scores[n][i : i + 2])[0] for n in ("ours", "minicons") for i in range(0, len(texts), 2)]
    agree = sum(a == b for a, b in zip(verdicts[: len(pairs)], verdicts[len(pairs) :]))
    print(f"largest per-sentence difference {difference:.2e}; same verdict on {agree}/{len(pairs)} pairs")
    print(json.dumps({"pairs": len(pairs), "seconds": times}))
    print(f"score ratio={times['minicons'] / times['ours']:.2f}")
    return 0
