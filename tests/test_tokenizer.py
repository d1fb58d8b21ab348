"""The SentencePiece tokenizer trained by the corpus build (400 pieces on real CHILDES triplets)."""
import shutil

import pytest

from llamalogue.corpus.dialogue_files import read_pairs, read_prompts
from llamalogue.corpus.transcripts import SPEAKER_TAGS
from llamalogue.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(corpus_small_build) -> Tokenizer:
    return Tokenizer(corpus_small_build / "tokenizer.model")


def test_special_ids_are_fixed(tokenizer):
    sp = tokenizer.sp
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == len(tokenizer) <= 400


def test_speaker_tags_and_newline_are_single_pieces(tokenizer):
    assert set(tokenizer.speaker_ids) == set(SPEAKER_TAGS)
    for tag, tag_id in tokenizer.speaker_ids.items():
        assert tokenizer.encode(tag) == [tag_id]
    assert tokenizer.encode("\n") == [tokenizer.newline_id]
    ids = tokenizer.encode("*MOT: what is that ?\n*CHI:")
    assert ids[0] == tokenizer.speaker_ids["*MOT:"]
    assert ids[-2:] == [tokenizer.newline_id, tokenizer.speaker_ids["*CHI:"]]
    assert ids.count(tokenizer.newline_id) == 1


def test_every_built_text_round_trips_exactly(tokenizer, corpus_small_build):
    texts = []
    for split in ("train", "val", "dpo", "eval"):
        texts += [b for b in (corpus_small_build / f"{split}.txt").read_text().split("\n\n") if b.strip()]
    texts += read_prompts(corpus_small_build / "prompts.txt")
    for pair in read_pairs(corpus_small_build / "pairs" / "eval_words_overlap.jsonl"):
        texts.append(f"{pair.prompt}\n{pair.chosen}")
    assert len(texts) > 2000
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(texts[:50])] == texts[:50]


def test_unseen_characters_fall_back_to_bytes(tokenizer):
    text = "*CHI: ещё ☃  two  spaces \t and 123 ."
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == text


def test_bos_eos_wrap_a_training_sequence(tokenizer):
    triplet = "*MOT: a .\n*CHI: b .\n*MOT: c ."
    ids = tokenizer.encode(triplet, bos=True, eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert ids[1:-1] == tokenizer.encode(triplet)
    assert tokenizer.decode(ids) == triplet
    assert tokenizer.decode([tokenizer.pad_id, *ids, tokenizer.pad_id]) == triplet


def test_saved_model_reloads_identically(tokenizer, tmp_path):
    copy = shutil.copy(tokenizer.model_path, tmp_path / "copy.model")
    reloaded = Tokenizer(copy)
    text = "*MOT: what're you making ?\n*CHI: a house .\n*MOT: oh very nice ."
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.speaker_ids == tokenizer.speaker_ids and reloaded.newline_id == tokenizer.newline_id


def test_train_is_deterministic(corpus_small_build, tmp_path):
    text = corpus_small_build / "val.txt"
    Tokenizer.train([text], tmp_path / "a", 400, SPEAKER_TAGS)
    Tokenizer.train([text], tmp_path / "b", 400, SPEAKER_TAGS)
    assert (tmp_path / "a.vocab").read_text() == (tmp_path / "b.vocab").read_text()  # pieces and scores


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer model"):
        Tokenizer(tmp_path / "nothing.model")
