"""SentencePiece tokenizer for llamalogue's dialogue text.

Text is utterances with speaker tags, one per line: "*MOT: what is that ?\\n*CHI: a ball .". The model is trained
so that this text comes back exactly (decode(encode(t)) == t):
- fixed special ids: pad 0, unk 1, bos 2, eos 3 (BOS/EOS are added around a sequence, never written in text);
- "\\n" and every speaker tag ("*MOT:", "*CHI:", ...) are user-defined pieces: always ONE token each, so generation
  can stop at the newline or at the next speaker's tag;
- no normalisation (identity rule), whitespace kept as is, no dummy space added at the start of the text (each line
  starts with a tag; the space after the tag belongs to the next word: "*CHI:", "▁a", "▁ball", "▁.");
- byte fallback: a character never seen in training is encoded as its UTF-8 bytes instead of <unk>.
"""
from __future__ import annotations

from pathlib import Path

import sentencepiece as spm


class Tokenizer:
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    NEWLINE = "\n"

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no such tokenizer model")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        specials = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if specials != (self.pad_id, self.unk_id, self.bos_id, self.eos_id):
            raise ValueError(f"{self.model_path}: special ids pad/unk/bos/eos are {specials}, expected (0, 1, 2, 3)")
        self.vocab_size = self.sp.get_piece_size()
        self.newline_id = self.sp.piece_to_id(self.NEWLINE)
        if self.newline_id == self.unk_id:
            raise ValueError(f"{self.model_path}: no newline piece (not a llamalogue tokenizer)")
        pieces = (self.sp.id_to_piece(i) for i in range(self.vocab_size))
        self.speaker_ids = {piece: i for i, piece in enumerate(pieces)
                            if piece.startswith("*") and piece.endswith(":") and len(piece) > 2}

    @classmethod
    def train(cls, text_files: list[str | Path], out_prefix: str | Path, vocab_size: int,
              speaker_tags: tuple[str, ...] | list[str], max_sentences: int = 1_000_000, seed: int = 0,
              threads: int = 2) -> "Tokenizer":
        """Train a unigram SentencePiece model on text files (one utterance per line); writes out_prefix.model and
        out_prefix.vocab. max_sentences lines are sampled (shuffled) from the input, which bounds time and memory.
        vocab_size is an upper bound: on a very small text the model may come out smaller."""
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in text_files), model_prefix=str(out_prefix), vocab_size=vocab_size,
            model_type="unigram", user_defined_symbols=[cls.NEWLINE, *speaker_tags],
            pad_id=cls.pad_id, unk_id=cls.unk_id, bos_id=cls.bos_id, eos_id=cls.eos_id,
            byte_fallback=True, character_coverage=0.9999, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, split_digits=True,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, hard_vocab_limit=False,
            num_threads=threads, minloglevel=2)
        return cls(f"{out_prefix}.model")

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of many texts at once (faster), without BOS/EOS."""
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        """The text of the ids; pad, BOS and EOS are skipped."""
        return self.sp.decode([int(i) for i in ids])

    def __len__(self) -> int:
        return self.vocab_size


def format_prompt(tokenizer: "Tokenizer", prompt: str) -> list[int]:
    """[BOS] + `*MOT: <prompt>\\n*CHI:`: the layout of pretraining, so that the model goes on as the child."""
    return [tokenizer.bos_id] + tokenizer.encode(f"*MOT: {prompt}\n*CHI:")


def reply_stop_ids(tokenizer: "Tokenizer") -> set[int]:
    """A reply is one utterance: it ends at EOS, at a newline or at any speaker tag."""
    return {tokenizer.eos_id, tokenizer.newline_id, *tokenizer.speaker_ids.values()}
