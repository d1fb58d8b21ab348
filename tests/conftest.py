"""Shared test fixtures. Keep each fixture small, real and clearly named after what it gives."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_CHILDES = REPO / "data" / "childes"


def small_childes_files() -> list[Path]:
    """23 real transcripts of the embedded sample: Manchester (Eng-UK), Bates, Brown Eve (Eng-NA, XML) and a
    Bernstein CHAT file."""
    return (sorted(EMBEDDED_CHILDES.glob("Eng-UK/Manchester/*/*.xml.gz"))[:14]
            + sorted(EMBEDDED_CHILDES.glob("Eng-NA/Bates/*/*.xml.gz"))[:7]
            + [EMBEDDED_CHILDES / "Eng-NA/Brown/Eve/eve01.xml.gz",
               EMBEDDED_CHILDES / "Eng-NA/Bernstein/bernstein_children_alice1.cha"])


def sequence_logprobs(model, tokens, attention_mask=None):
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1, as [B, T-1] (positions after padding are meaningless): a
    plain reference the faster scorers are checked against."""
    import torch.nn.functional as F

    logits = model(tokens, attention_mask)
    targets = tokens[:, 1:]
    return -F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


@pytest.fixture(autouse=True, scope="session")
def own_user_cache(tmp_path_factory):
    """llamalogue's per-user cache (llamalogue.run_dir.user_cache: speed measurements, the teacher converted from
    GGUF) is the suite's own, made once per session, never the user's: the tests and their subprocesses measure and
    convert on this machine as it is."""
    saved = os.environ.get("LLAMALOGUE_CACHE")
    os.environ["LLAMALOGUE_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if saved is None:
        del os.environ["LLAMALOGUE_CACHE"]
    else:
        os.environ["LLAMALOGUE_CACHE"] = saved


@pytest.fixture
def no_speed_probe(monkeypatch):
    """Pretraining without its timing steps (llamalogue.pretraining.speed): float32, eager. For the tests that count
    the model's forward passes to fail one on purpose."""
    from llamalogue.pretraining import speed

    fixed = {"dtype": "float32", "compile": False, "step_seconds": {}, "why": "fixed by the test"}
    monkeypatch.setattr(speed, "choose_speed", lambda *args, **kwargs: dict(fixed))


SMALL_BUILD_OPTIONS = dict(vocab_size=400, seed=0, fractions={"val": 0.1, "dpo": 0.25, "eval": 0.2})


@pytest.fixture(scope="session")
def corpus_small_build(tmp_path_factory) -> Path:
    """A data directory (train/val/dpo/eval.txt, pairs, tokenizer.model with 400 pieces, stats.json) built by
    llamalogue.corpus.build from `small_childes_files()`, once per test session."""
    from llamalogue.corpus.build import build_corpus

    out_dir = tmp_path_factory.mktemp("corpus_small_build")
    build_corpus(small_childes_files(), out_dir, workers=2, progress=False, **SMALL_BUILD_OPTIONS)
    return out_dir


@pytest.fixture(scope="session")
def tiny_runs(corpus_small_build, tmp_path_factory) -> list[Path]:
    """Two untrained `tiny` models (seeds 0 and 1) with the real 400-piece tokenizer, as run directories."""
    import torch

    from llamalogue.checkpoint import save_checkpoint
    from llamalogue.model import Llama, ModelConfig
    from llamalogue.tokenizer import Tokenizer

    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
        run = tmp_path_factory.mktemp(f"tiny{seed}")
        save_checkpoint(run, model, tokenizer, {"stage": "untrained", "scale": "tiny"})
        runs.append(run)
    return runs
