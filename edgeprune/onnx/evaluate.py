"""Quality measured through ONNX Runtime on an exported folder, so what quantisation did shows up in
the same :class:`~edgeprune.evaluation.EvalResult` as a PyTorch evaluation: perplexity for decoders
(merged KV-cache graph, each window one prefill from an empty cache), embedding cosine for encoders
(to the dense PyTorch reference that edgeprune.json names, or ``--reference``).

    edgeprune eval out/smol-onnx --onnx-file model_int4.onnx
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.errors import EdgepruneError
from edgeprune.progress import status
from edgeprune.metadata import read_metadata
from edgeprune.onnx.configs import ONNX_FILE
from edgeprune.onnx.session import OrtDecoder, load_session

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def is_onnx_dir(path: str | Path) -> bool:
    """An exported folder: it has a model.onnx and no PyTorch weights (optimum also writes a config.json there)."""
    path = Path(path)
    if not path.is_dir() or not (path / ONNX_FILE).is_file():
        return False
    return not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir())


def dense_reference(meta: dict) -> str | None:
    """The dense PyTorch model an export descends from: the pruning source, else what was exported."""
    return (meta.get("pruning") or {}).get("source_model") or (meta.get("export") or {}).get("source")


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError / ValueError / others for a folder without a tokenizer
        raise EdgepruneError(f"no usable tokenizer in '{folder}' ({type(exc).__name__})", "evaluate the folder edgeprune export wrote") from None


def _max_positions(folder: Path) -> int | None:
    """The longest sequence the exported decoder takes (``max_position_embeddings`` of its config.json), if it says."""
    import json

    try:
        value = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def onnx_perplexity(sess, windows: torch.Tensor) -> float:
    """exp(mean next-token NLL) over all positions of all windows, each window one prefill from an empty cache."""
    decoder = OrtDecoder(sess)
    nll, count = 0.0, 0
    for i, window in enumerate(windows):
        status("perplexity through ONNX Runtime (windows)", i, len(windows))
        ids = window.numpy()[None].astype(np.int64)
        logits, _, _ = decoder.step(ids, np.ones_like(ids), decoder.empty_past(1))
        logits = torch.from_numpy(logits[0, :-1]).float()
        nll += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        count += window.numel() - 1
    return float(torch.exp(torch.tensor(nll / count)))


def onnx_sentence_embeddings(sess, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Sentence embeddings through the graph: its pooled output when it has one, else mean pooling + L2 here
    (the recipe of :func:`edgeprune.evaluation.sentence_embeddings`)."""
    from edgeprune.onnx.graph import POOLED_OUTPUT

    names = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        if "token_type_ids" in names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        got = dict(zip(outputs, sess.run(None, feeds)))
        if POOLED_OUTPUT in got:
            out.append(torch.from_numpy(got[POOLED_OUTPUT]))
            continue
        hidden = torch.from_numpy(got["last_hidden_state"])
        mask = torch.from_numpy(enc["attention_mask"]).unsqueeze(-1).to(hidden.dtype)
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(out)


def evaluate_onnx(folder: str | Path, text: str, reference: str | None = None, seqlen: int = 512, max_windows: int | None = None,
                  onnx_file: str = ONNX_FILE, body: str | None = None):
    """Evaluate ``folder/onnx_file`` with ONNX Runtime on one text (``body``, else ``load_text(text)``); returns an
    :class:`~edgeprune.evaluation.EvalResult`."""
    from edgeprune.data import eval_windows, load_text
    from edgeprune.evaluation.metrics import sentence_embeddings, sentences
    from edgeprune.evaluation.results import EvalResult

    folder = Path(folder)
    if not folder.is_dir():
        raise EdgepruneError(f"'{folder}' is not an exported folder", "pass the --out folder of edgeprune export")
    path = folder / onnx_file
    sess = load_session(path)
    meta = read_metadata(folder, fix="re-run edgeprune export") or {}
    tokenizer = _tokenizer(folder)
    body = load_text(text, "eval") if body is None else body
    is_decoder = any(i.name.startswith("past_key_values.") for i in sess.get_inputs())
    task = "text-generation" if is_decoder else "feature-extraction"
    result = EvalResult(model=str(path), task=task, text=text)
    if is_decoder:
        limit = _max_positions(folder)
        if limit is not None and seqlen > limit:  # the fused graph's rotary table ends there: ORT would fail mid-run
            raise EdgepruneError(f"--seqlen {seqlen} is longer than the model's {limit} positions", f"use --seqlen {limit} or less")
        windows = eval_windows(tokenizer, body, seqlen, max_windows)
        result.perplexity = onnx_perplexity(sess, windows)
        result.tokens = int(windows.numel())
        return result
    texts = sentences(body)
    emb = onnx_sentence_embeddings(sess, tokenizer, texts)
    result.sentences = len(texts)
    reference = reference or dense_reference(meta)
    if reference:
        from edgeprune.models.loading import load_model

        ref = load_model(reference, device="cpu", dtype=torch.float32)
        ref_emb = sentence_embeddings(ref.model, ref.tokenizer, texts)
        result.embedding_cosine = float((emb * ref_emb).sum(-1).mean())
        result.reference = reference
    return result
