"""The model as the scorer sees it: our checkpoints and Hugging Face causal LMs behind one small interface (`LM`).

`load_lm(path)` takes a llamalogue run directory, a Hugging Face causal-LM folder, a .gguf file (or a folder holding
one) or "teacher" (the default SmolLM2 GGUF), and loads it in fp32 for scoring; nothing is downloaded.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from llamalogue import checkpoint
from llamalogue.evaluation import score_cache
from llamalogue.model import Llama, default_device


WORD_START = "▁"  # how SentencePiece writes the space before a word: a piece starting with it begins a word


class HFLogits(nn.Module):
    """A transformers causal LM called like ours: forward(tokens, attention_mask) -> fp32 logits."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, tokens, attention_mask=None):
        return self.hf_model(input_ids=tokens, attention_mask=attention_mask).logits.float()


@dataclass
class LM:
    """What scoring needs from a causal language model, ours or a Hugging Face one."""

    model: nn.Module  # forward(tokens [B, T], attention_mask [B, T]) -> logits [B, T, vocab]
    encode: Callable[[list[str]], list[list[int]]]  # texts -> token ids, without special tokens
    bos_id: int
    pad_id: int
    context: int | None = None  # the length it was trained for: longer items are scored anyway, and counted
    name: str = "model"
    kind: str = "llamalogue"
    headless: bool = False  # ours: the scorer runs its layers over the trie of prefixes and applies the output layer
    decode_token: Callable[[int], str] = str  # one token id -> its text (to tell a token that is only a space)
    word_start_ids: list[int] = field(default_factory=list)  # the tokens that begin a word (the paper's protocol)
    # a run's checkpoint, tokenizer and model settings, hashed: its scores are kept (score_cache); it names the
    # weights as loaded, so a model changed in place must set it to None
    weights_id: str | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def as_lm(model, tokenizer, name: str = "model") -> LM:
    """Our (Llama, Tokenizer) or a transformers (model, tokenizer) pair, as an LM."""
    model = checkpoint.unwrap(model)
    if isinstance(model, Llama):
        word_start = [i for i in range(tokenizer.vocab_size) if tokenizer.sp.id_to_piece(i).startswith(WORD_START)]
        return LM(model, tokenizer.encode_batch, tokenizer.bos_id, tokenizer.pad_id, model.config.max_seq_len, name,
                  headless=True, decode_token=lambda i: tokenizer.decode([i]), word_start_ids=word_start)
    # A Hugging Face tokenizer: BOS if it has one, else its end-of-text token, which GPT-2-style models use to start
    # a document.
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError(f"{name}: the tokenizer has neither a BOS nor an EOS token to start a sentence with")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos  # padding is masked out anyway
    context = getattr(model.config, "max_position_embeddings", None)
    return LM(HFLogits(model), lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"], bos, pad,
              context, name, kind="transformers", decode_token=lambda i: tokenizer.decode([i]),
              word_start_ids=hf_word_start_ids(tokenizer))


def hf_word_start_ids(tokenizer) -> list[int]:
    """The tokens of a Hugging Face tokenizer that begin a word, as minicons finds them: the vocabulary entries that
    start with the symbol a lone space is written as ("▁" in SentencePiece, "Ġ" in GPT-2's byte-level BPE), and the
    added tokens that swallow the space before them. None when a space is not written so (no correction then)."""
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    symbol = tokenizer.convert_ids_to_tokens(ids[0])[0] if ids else None
    if symbol is None or symbol in (tokenizer.bos_token, tokenizer.eos_token):
        return []
    added = [i for i, token in tokenizer.added_tokens_decoder.items() if token.lstrip]
    return sorted({i for token, i in tokenizer.get_vocab().items() if token[:1] == symbol} | set(added))


def model_kind(path) -> str:
    """"llamalogue" (a run directory), "transformers" (a Hugging Face causal-LM folder), "gguf" (a .gguf file, a
    folder holding one, or "teacher": the default SmolLM2 GGUF); anything else is one clear error."""
    path = Path(path)
    if str(path) == "teacher":
        return "gguf"
    if not path.exists():
        raise ValueError(f"--model {path}: does not exist")
    if checkpoint.is_run_dir(path):
        checkpoint.check_run(path)  # a damaged run: one line now, before anything is scored or written
        return "llamalogue"
    if path.is_dir() and (path / "config.json").is_file():
        return "transformers"
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return "gguf"
    raise ValueError(f"--model {path}: neither a llamalogue run directory (config.json, checkpoint.pt, "
                     "tokenizer.model) nor a Hugging Face causal-LM folder (config.json + weights) nor a .gguf file")


def load_lm(path, device: str | None = None) -> LM:
    """A llamalogue run directory, a Hugging Face causal-LM folder, a .gguf file (or a folder holding one), or
    "teacher" (the default SmolLM2 GGUF), loaded in fp32 for scoring. Nothing is downloaded."""
    kind, device = model_kind(path), device or default_device()
    if kind == "llamalogue":
        def weights_id():
            return score_cache.weights_id(path, checkpoint.load_config(path)["model"])

        before = weights_id() if score_cache.enabled() else None
        model, tokenizer = checkpoint.load_model(path, device)
        lm = as_lm(model, tokenizer, Path(path).name)
        if before is not None and weights_id() == before:  # the run was not rewritten while it loaded
            lm.weights_id = before
        return lm
    from transformers import AutoTokenizer  # only Hugging Face models need transformers

    from llamalogue.hf import load_hf_model

    if str(path) == "teacher":
        from llamalogue.hf import default_teacher_path

        source = Path(default_teacher_path())
    else:
        source = Path(path)
        if source.is_dir() and not (source / "config.json").is_file():
            source = sorted(source.glob("*.gguf"))[0]
    gguf = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    try:
        model = load_hf_model(source).to(device)
        tokenizer = AutoTokenizer.from_pretrained(source.parent if gguf else source, **gguf)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"--model {path}: cannot load a causal LM ({first_line})") from None
    lm = as_lm(model, tokenizer, source.stem)
    lm.kind = kind
    return lm

