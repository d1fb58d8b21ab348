"""`python -m llamalogue.teacher --prompts FILE --n K --out FILE.jsonl [--teacher ID_OR_PATH]`: precompute a reply
cache, K replies per prompt and their log-likelihoods (one utterance per line in FILE; a leading `*MOT: ` is dropped).
What a reply is and how it is made: llamalogue/teacher/llm.py.
"""

import argparse
import sys
import time

from llamalogue.cli import fail
from llamalogue.corpus.dialogue_files import read_prompts
from llamalogue.corpus.transcripts import CorpusError
from llamalogue.hf import DEFAULT_GGUF
from llamalogue.teacher import llm
from llamalogue.teacher.config import DTYPES, TeacherConfig
from llamalogue.teacher.few_shot import read_examples
from llamalogue.teacher.llm import BACKENDS, Teacher
from llamalogue.teacher.reply_cache import ReplyCache, teacher_replies
from llamalogue.teacher.reply_text import without_speaker_tag


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llamalogue.teacher", description=llm.__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", required=True,
                        help="text file, one caregiver utterance per line (e.g. DIR/prompts.txt)")
    parser.add_argument("--n", type=int, default=1, help="replies per prompt (1: BLEU/SemSim/LLM/DPO, 10: confidence)")
    parser.add_argument("--out", required=True, help="JSONL cache to write; an existing one is resumed")
    parser.add_argument("--teacher", default=None, help=f"HF folder, .gguf file or hub id (default: {DEFAULT_GGUF})")
    parser.add_argument("--examples", default=None, help="few-shot pool: data dir (its train.txt) or *MOT:/*CHI: file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=TeacherConfig.batch_size)
    parser.add_argument("--shots", type=int, default=TeacherConfig.shots)
    parser.add_argument("--dtype", default=TeacherConfig.dtype, choices=DTYPES,
                        help="the sampling weights (log-likelihoods are fp32); auto: bfloat16 where native")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="llamalogue: our Llama + KV cache (Llama teachers); transformers: its generate; auto: ours "
                             "when the teacher converts")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n {args.n}: must be at least 1")
        examples = read_examples(args.examples) if args.examples else None
        prompts = [p for p in map(without_speaker_tag, read_prompts(args.prompts)) if p]
        if not prompts:
            raise ValueError(f"--prompts {args.prompts}: no prompt lines")
        config = TeacherConfig(batch_size=args.batch_size, shots=args.shots, dtype=args.dtype)
        teacher = Teacher(args.teacher, examples=examples, config=config, device=args.device, backend=args.backend)
    except (ValueError, FileNotFoundError, CorpusError) as error:
        fail(error)
    started = time.time()
    cache = ReplyCache(args.out)
    before = len(cache.entries)
    records = teacher_replies(teacher, prompts, args.n, args.seed, cache, progress=True)
    made = len(cache.entries) - before
    print(f"{len(records)} prompts x {args.n} replies from {teacher.id} ({teacher.backend}) on {teacher.device} "
          f"({made} computed, {len(records) - made} from cache) in {time.time() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
