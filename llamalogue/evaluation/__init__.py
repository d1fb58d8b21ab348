"""Evaluation: how probable a language model finds a text, and what the BabyLM tasks make of that.

Where each part lives, in the order a result is made:

- `lm`: the model as the scorer sees it (`load_lm`: our run directories, Hugging Face folders, GGUF files).
- `scoring`: the scorer, log p(text) with BOS prepended, every distinct prefix once; `judge` (ties count wrong).
- `score_cache`: a run's scores kept, so that the base of every comparison is scored once, not at every evaluation.
- `tree`: tree attention, our model run over the trie of all prefixes to score, each prefix once.
- `protocol`: ours (the official pipeline's rules) or the paper's (minicons' scoring of its own benchmarks).
- `tasks`: from items and scores to each task's metric, its bootstrap interval and paired comparisons.
- `aoa`: age of acquisition, from a run's milestone checkpoints (learning curves, sigmoid midpoints).
- `milestone_curve`: the tasks scored at each milestone checkpoint of a run (evaluate.py --milestones).
- `statistics`: correlations, regressions, the bootstrap, McNemar's test.
- `report`: the poster's table, results.json and results.png; `predictions`: the official predictions.json.

The suites (which files, which items) are `llamalogue.suites`; the command line is evaluate.py.
"""

from llamalogue.evaluation.lm import LM, as_lm, load_lm, model_kind
from llamalogue.evaluation.scoring import dialogue_mp, judge, score_texts, sentence_logprobs

__all__ = ["LM", "as_lm", "dialogue_mp", "judge", "load_lm", "model_kind", "score_texts", "sentence_logprobs"]
