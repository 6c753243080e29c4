"""ONNX Runtime GenAI folders: the ``genai_config.json`` that ORT GenAI needs next to an exported decoder, and
tokenizer files that its tokenizer (onnxruntime-extensions) reads the way transformers does.

    python -c "import onnxruntime_genai as og; og.Model('out/smol-onnx')"

Everything the config says about the graph (input and output names, layers, KV heads, head size, whether
attention is fused) is read from the ONNX file, so a changed graph contract needs no change here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

GENAI_CONFIG = "genai_config.json"
#: model types ORT GenAI knows as plain decoder-only LLMs; any other runs as its generic "decoder"
GENAI_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3")
_PLAIN_INPUTS = ("input_ids", "attention_mask", "position_ids")
_LAYER = re.compile(r"\d+")


@dataclass(frozen=True)
class DecoderGraph:
    """What a merged decoder graph says about itself."""

    inputs: dict[str, str]  # ORT GenAI role → graph name; KV names as templates with %d for the layer
    outputs: dict[str, str]
    layers: int
    kv_heads: int
    head_size: int
    query_heads: int | None  # from the fused attention nodes; None for an unfused graph
    vocab_size: int | None  # the logits' last dimension when it is static
    fused: bool  # attention is ORT's GroupQueryAttention, which writes the KV cache in place


class UnsupportedGraph(ValueError):
    """The graph cannot be described by a genai_config.json (the message says why)."""


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _kv_templates(names: list[str], side: str) -> tuple[dict[str, str], dict[int, str]]:
    """``{"<side>_key_names": "past_key_values.%d.key", ...}`` and layer → key name, for names with a layer number."""
    templates, keys = {}, {}
    for kind in ("key", "value"):
        found = {}
        for name in names:
            match = _LAYER.search(name)
            if match and name.endswith(kind):
                found.setdefault(name[:match.start()] + "%d" + name[match.end():], {})[int(match.group())] = name
        if len(found) != 1:
            raise UnsupportedGraph(f"expected one {side} {kind} name pattern, found {sorted(found) or 'none'}")
        (template, layers), = found.items()
        if sorted(layers) != list(range(len(layers))):
            raise UnsupportedGraph(f"{side} {kind} layers are not numbered 0..{len(layers) - 1}")
        templates[f"{side}_{kind}_names"] = template
        if kind == "key":
            keys = layers
    return templates, keys


def read_decoder_graph(onnx_path: str | Path) -> DecoderGraph:
    """Names, KV-cache shape and attention kind of a merged decoder graph (weights are not loaded)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    in_names = [i.name for i in graph.input]
    out_names = [o.name for o in graph.output]
    plain = [n for n in in_names if not _LAYER.search(n)]
    unknown = [n for n in plain if n not in _PLAIN_INPUTS]
    if unknown or "input_ids" not in plain:
        raise UnsupportedGraph(f"inputs {unknown or in_names} are not ones ORT GenAI feeds to a decoder")
    if "logits" not in out_names:
        raise UnsupportedGraph("the graph has no 'logits' output")
    past, past_keys = _kv_templates([n for n in in_names if n not in plain], "past")
    present, _ = _kv_templates([n for n in out_names if n != "logits"], "present")
    inputs = {n: n for n in plain} | past
    outputs = {"logits": "logits"} | present

    by_name = {i.name: i for i in graph.input}
    shapes = {tuple(_dims(by_name[name])[1::2]) for name in past_keys.values()}  # [batch, kv_heads, past, head_size]
    if len(shapes) != 1 or not all(isinstance(d, int) and d > 0 for d in next(iter(shapes))):
        raise UnsupportedGraph(f"ORT GenAI needs one static KV-cache shape in all layers, not (kv_heads, head_size) {sorted(shapes)}")
    kv_heads, head_size = next(iter(shapes))
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    heads = {a.i for n in attention for a in n.attribute if a.name == "num_heads"}
    vocab = _dims(next(o for o in graph.output if o.name == "logits"))[-1]
    return DecoderGraph(inputs=inputs, outputs=outputs, layers=len(past_keys), kv_heads=kv_heads, head_size=head_size,
                        query_heads=heads.pop() if len(heads) == 1 else None,
                        vocab_size=vocab if isinstance(vocab, int) else None, fused=bool(attention))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_ids(folder: Path) -> dict[str, int | list[int]]:
    """bos/eos/pad ids: generation config first (what generate() uses), then the model config, then the tokenizer."""
    config, generation = _read_json(folder / "config.json"), _read_json(folder / "generation_config.json")
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    ids = {key: next((src[key] for src in (generation, config) if src.get(key) is not None), None) for key in keys}
    missing = [key for key, value in ids.items() if value is None]
    if missing:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids |= {key: getattr(tokenizer, key) for key in missing}
    if ids["pad_token_id"] is None and ids["eos_token_id"] is not None:  # ORT GenAI pads batches with it
        eos = ids["eos_token_id"]
        ids["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    return {k: v for k, v in ids.items() if v is not None}


def genai_config(folder: str | Path, onnx_file: str = "model.onnx") -> dict:
    """The ``genai_config.json`` content for the decoder ``folder/onnx_file`` (its HF config.json is in ``folder``)."""
    folder = Path(folder)
    graph = read_decoder_graph(folder / onnx_file)
    config = _read_json(folder / "config.json")
    if not config:
        raise UnsupportedGraph(f"{folder} has no config.json")
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 0)
    if context <= 0:
        raise UnsupportedGraph("config.json gives no context length (max_position_embeddings)")
    model_type = config.get("model_type")
    decoder = {
        "filename": onnx_file,
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},  # CPU; apps add their providers
        "head_size": graph.head_size,
        "hidden_size": int(config["hidden_size"]),
        "num_attention_heads": graph.query_heads or int(config["num_attention_heads"]),
        "num_key_value_heads": graph.kv_heads,
        "num_hidden_layers": graph.layers,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
    }
    generation = _read_json(folder / "generation_config.json")
    search = {
        "max_length": context,
        "min_length": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "do_sample": bool(generation.get("do_sample", False)),
        # GroupQueryAttention appends to a cache allocated at max_length; optimum's graph concatenates past and new
        # keys into a fresh present tensor, which a shared buffer cannot hold (ORT GenAI fails on the Concat's shape)
        "past_present_share_buffer": graph.fused,
    }
    search |= {k: generation[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty") if generation.get(k) is not None}
    return {
        "model": {
            "type": model_type if model_type in GENAI_MODEL_TYPES else "decoder",
            "context_length": context,
            "vocab_size": graph.vocab_size or int(config["vocab_size"]),
            **_token_ids(folder),
            "decoder": decoder,
        },
        "search": search,
    }


#: tokenizer classes whose byte-level BPE onnxruntime-extensions splits with GPT-2's pattern, as transformers' ByteLevel
#: pre-tokenizer does; for a Llama class it uses Llama 3's pattern instead (newlines split from following spaces)
_GPT2_SPLIT_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast")


def _types(part: dict | None) -> list[str]:
    """The step types of a tokenizer.json normalizer / pre-tokenizer / decoder, sequences flattened."""
    if not part:
        return []
    steps = part.get("pretokenizers", part.get("decoders"))
    return [t for step in steps for t in _types(step)] if steps is not None else [part["type"]]


def gpt2_tokenizer(folder: str | Path) -> bool:
    """Re-save a GPT-2 style (byte-level) tokenizer in ``folder`` so ORT GenAI reads it as transformers does;
    True if it was re-saved. Token ids in transformers are unchanged, and so are the special tokens.

    transformers converts the GGUF "gpt2" vocabulary of a Llama model (SmolLM2) with its SentencePiece converter:
    GPT-2's byte-level pre-tokeniser, but a ByteFallback / "▁" decoder and the class LlamaTokenizerFast.
    onnxruntime-extensions ignores the pre-tokeniser: it picks SentencePiece mode from that decoder (each space
    becomes id -1, decoding keeps the "Ġ" marks) and, for a Llama class, Llama 3's split pattern (ids differ
    around newlines). Written as GPT2TokenizerFast with a byte-level decoder, both read it alike; the converter's
    clean-up of spaces before punctuation, which made decoding lossy in transformers only, is turned off.
    """
    from tokenizers import Tokenizer, decoders
    from transformers import AutoTokenizer, GPT2TokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        return False
    config, spec = _read_json(folder / "tokenizer_config.json"), _read_json(folder / "tokenizer.json")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or spec.get("model", {}).get("type") != "BPE":
        return False  # not GPT-2's split: leave it as it is
    if _types(spec.get("decoder")) == ["ByteLevel"] and config.get("tokenizer_class") in _GPT2_SPLIT_CLASSES:
        return False
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.decoder = decoders.ByteLevel()
    probe = tokenizer("a")["input_ids"]
    special = {name: getattr(tokenizer, name)
               for name in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")}
    fixed = GPT2TokenizerFast(
        tokenizer_object=backend, **{k: v for k, v in special.items() if v},
        add_bos_token=tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],  # as its post-processor does
        add_prefix_space=bool(pre.get("add_prefix_space")),
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,  # byte-level decoding is exact; the clean-up drops real spaces (" ," → ",")
        **({"chat_template": tokenizer.chat_template} if tokenizer.chat_template else {}),
    )
    fixed.save_pretrained(folder)
    return True


def write_genai_files(folder: str | Path, onnx_file: str = "model.onnx") -> list[str]:
    """Make the decoder export ``folder`` loadable by ``og.Model(folder)`` and ``og.Tokenizer``: writes genai_config.json,
    and re-saves a GPT-2 style tokenizer that ORT GenAI would misread. Returns the names of the files written (none
    when the graph is one ORT GenAI cannot run, e.g. KV caches of different shapes per layer)."""
    from edgeprune.progress import status

    folder = Path(folder)
    try:
        config = genai_config(folder, onnx_file)
    except UnsupportedGraph as exc:
        status(f"no {GENAI_CONFIG}: {exc}")
        return []
    (folder / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    written = [GENAI_CONFIG]
    if gpt2_tokenizer(folder):
        written.append("tokenizer.json")
    return written


__all__ = ["GENAI_CONFIG", "DecoderGraph", "UnsupportedGraph", "genai_config", "gpt2_tokenizer", "read_decoder_graph",
           "write_genai_files"]
