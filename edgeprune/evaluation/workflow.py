"""``edgeprune eval``: evaluate a model folder or alias on held-out text, in PyTorch or (for an exported folder)
through ONNX Runtime, with the dense model it descends from as the reference.

    edgeprune eval out/smol-2of4
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.data import EMBEDDED, eval_windows, load_text, tokenize
from edgeprune.errors import EdgepruneError
from edgeprune.evaluation.metrics import attention_errors, perplexity, same_attention_shapes, sentence_embeddings, sentences
from edgeprune.evaluation.results import EvalResult
from edgeprune.metadata import read_metadata


@dataclass(frozen=True)
class EvalConfig:
    """What ``edgeprune eval`` takes besides the model (as keywords of :func:`evaluate`), as recipes take it."""

    text: str = EMBEDDED  # held-out text: "pydoc" (its held-out split) or a .txt/.jsonl file
    seqlen: int = 512  # tokens per perplexity window
    max_windows: int | None = None
    attention: bool = True  # PyTorch models: attention error per layer against the dense reference
    device: str = "cpu"

    def __post_init__(self):
        if self.seqlen < 2:
            raise EdgepruneError(f"seqlen {self.seqlen} is too short for perplexity", "use e.g. seqlen = 512")
        if self.max_windows is not None and self.max_windows < 1:
            raise EdgepruneError(f"max_windows {self.max_windows} must be 1 or more", "leave it out to use all windows")


def _reference_for(model_spec: str) -> str | None:
    meta = read_metadata(model_spec, fix="re-run edgeprune prune or remove the file")
    return meta.get("source_model") if meta is not None else None


def evaluate(
    model: str,
    text: str = EMBEDDED,
    reference: str | None = None,
    seqlen: int = 512,
    max_windows: int | None = None,
    attention: bool = True,
    device: str = "cpu",
    onnx_file: str | None = None,
) -> EvalResult:
    """Evaluate a model folder/alias on held-out text (``pydoc`` = the held-out pydoc split, or a file).

    An exported folder (model.onnx, no PyTorch weights), or any folder with ``onnx_file`` given, is
    evaluated through ONNX Runtime instead: see :mod:`edgeprune.onnx.evaluate`.
    """
    from edgeprune.data import check_text
    from edgeprune.onnx.evaluate import is_onnx_dir
    from edgeprune.specs import resolve_spec

    if not (onnx_file is not None or is_onnx_dir(model)):
        resolve_spec(model)
    check_text(text, "eval", 1, "--text")  # the window count needs the tokenizer: checked after loading
    if reference:
        resolve_spec(reference)
    if onnx_file is not None or is_onnx_dir(model):
        from edgeprune.onnx.evaluate import evaluate_onnx

        return evaluate_onnx(model, text, reference, seqlen, max_windows, onnx_file or "model.onnx")

    from edgeprune.models.loading import load_model
    from edgeprune.runtime import resolve_device

    device = resolve_device(device)
    loaded = load_model(model, device=device)
    body = load_text(text, "eval")
    result = EvalResult(model=str(model), task=loaded.adapter.task, text=text)
    reference = reference or _reference_for(str(model))
    ref = load_model(reference, device=device) if reference else None
    result.reference = reference
    if loaded.is_decoder:
        windows = eval_windows(loaded.tokenizer, body, seqlen, max_windows)
        result.perplexity = perplexity(loaded.model, windows)
        result.tokens = int(windows.numel())
        probe = windows[:2]
    else:
        texts = sentences(body)
        emb = sentence_embeddings(loaded.model, loaded.tokenizer, texts)
        result.sentences = len(texts)
        if ref is not None:
            ref_emb = sentence_embeddings(ref.model, ref.tokenizer, texts)
            result.embedding_cosine = float((emb * ref_emb).sum(-1).mean())
        probe = tokenize(loaded.tokenizer, body)[: min(seqlen, 256)].unsqueeze(0)
    # heads removed by structured pruning have no attention matrix to compare: only same-shape models get the error
    if ref is not None and attention and ref.adapter.family == loaded.adapter.family \
            and same_attention_shapes(loaded.model, ref.model, loaded.adapter):
        result.attention_error = attention_errors(loaded.model, ref.model, loaded.adapter, probe.to(device))
    return result
