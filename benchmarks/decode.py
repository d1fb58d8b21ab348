"""Decoding speed: our batched KV-cache `generate` against transformers' `generate`, same model weights and prompts.

    python -m benchmarks decode [--preset small] [--prompts 16] [--new-tokens 20] [--rounds 5] [--run RUN_DIR]

Real caregiver prompts (`*MOT: ... *CHI:`, left-padded into one batch) from the embedded sample's data directory
(runs/data, built when missing); greedy decoding of exactly --new-tokens tokens on
both sides (no stop token), so both do the same work: one prefill over the prompts, then one step per token. The model
is runs/lm-small when trained, else a freshly initialised `small` (speed does not depend on the weights); the
number of identical continuations is printed.

Last line: `decode ratio=X.XX` = our new tokens/s / transformers' new tokens/s.
"""

import argparse
import os
from pathlib import Path

import torch

from benchmarks.common import machine
from llamalogue.measured_speed import median_seconds
from llamalogue.checkpoint import load_model
from llamalogue.corpus.build import build_corpus
from llamalogue.corpus.dialogue_files import read_prompts
from llamalogue.generation import generate
from llamalogue.hf import to_hf
from llamalogue.model import Llama, ModelConfig, default_device
from llamalogue.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks decode", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="model preset (without --run)")
    trained = Path("runs/lm-small")
    parser.add_argument("--run", type=Path, default=trained if (trained / "checkpoint.pt").exists() else None,
                        help="a trained run directory (default: runs/lm-small if trained, else a fresh model)")
    parser.add_argument("--data", type=Path, default=Path("runs/data"), help="data directory with prompts.txt")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args(argv)
    print(machine())

    if not (args.data / "prompts.txt").exists():
        build_corpus(None, args.data)
    if args.run:
        model, tokenizer = load_model(args.run, args.device)
    else:
        tokenizer = Tokenizer(args.data / "tokenizer.model")
        torch.manual_seed(0)
        model = Llama(ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)).to(args.device).eval()
    theirs = to_hf(model, {"pad": tokenizer.pad_id}).to(args.device)
    texts = read_prompts(args.data / "prompts.txt")[: args.prompts]
    prompts = [[tokenizer.bos_id, *tokenizer.encode(f"*MOT: {text}\n*CHI:")] for text in texts]

    width = max(map(len, prompts))
    input_ids = torch.tensor([[tokenizer.pad_id] * (width - len(p)) + p for p in prompts], device=args.device)
    attention_mask = (torch.arange(width, device=args.device)[None, :] >= width - torch.tensor(
        [len(p) for p in prompts], device=args.device)[:, None]).long()

    outputs = {}

    def ours():
        outputs["ours"] = generate(model, prompts, args.new_tokens, temperature=0).tokens

    @torch.no_grad()
    def transformers():
        out = theirs.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, eos_token_id=None,
                              pad_token_id=tokenizer.pad_id)
        outputs["transformers"] = out[:, width:].tolist()

    times = median_seconds({"transformers": transformers, "ours": ours}, args.rounds, args.device)
    new_tokens = len(prompts) * args.new_tokens
    print(f"{model.config.n_layers} layers, dim {model.config.dim}, vocab {model.config.vocab_size} "
          f"({model.num_parameters() / 1e6:.2f}M parameters) on {args.device}; {len(prompts)} real caregiver prompts "
          f"({min(map(len, prompts))}-{width} tokens, left-padded) x {args.new_tokens} new tokens, greedy; "
          f"median of {args.rounds} rounds in turns")
    for name, t in times.items():
        print(f"  {name:12s} {t * 1000:8.1f} ms  {new_tokens / t:9,.0f} new tokens/s")
    same = sum(a == b for a, b in zip(outputs["ours"], outputs["transformers"]))
    print(f"identical greedy continuations: {same}/{len(prompts)} (an untrained model's near-ties may differ)")
    print(f"decode ratio={times['transformers'] / times['ours']:.2f}")
    return 0
