"""``edgeprune eval``: evaluate a model folder or alias on held-out text, in PyTorch or (for an exported folder)
through ONNX Runtime, with the dense model it descends from as the reference; on several texts (``--text suite``),
per domain and as a geometric mean.

    edgeprune eval out/smol-2of4 --text suite
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeprune.data import EMBEDDED, SELF, eval_windows, load_text, split_texts, tokenize
from edgeprune.errors import EdgepruneError
from edgeprune.evaluation.metrics import attention_errors, perplexity, same_attention_shapes, sentence_embeddings, sentences
from edgeprune.evaluation.results import EvalResult
from edgeprune.metadata import read_metadata


@dataclass(frozen=True)
class EvalConfig:
    """What ``edgeprune eval`` takes besides the model (as keywords of :func:`evaluate`), as recipes take it."""

    text: str = EMBEDDED  # held-out text(s), comma-separated: pydoc, licences, docstrings, self, files, or "suite"
    seqlen: int = 512  # tokens per perplexity window
    max_windows: int | None = None
    attention: bool = True  # PyTorch models: attention error per layer against the dense reference
    device: str = "cpu"

    def __post_init__(self):
        if self.seqlen < 2:
            raise EdgepruneError(f"seqlen {self.seqlen} is too short for perplexity", "use e.g. seqlen = 512")
        if self.max_windows is not None and self.max_windows < 1:
            raise EdgepruneError(f"max_windows {self.max_windows} must be 1 or more", "leave it out to use all windows")
        split_texts(self.text)


def _reference_for(model_spec: str) -> str | None:
    meta = read_metadata(model_spec, fix="re-run edgeprune prune or remove the file")
    return meta.get("source_model") if meta is not None else None


def _self_text(dense, device: str) -> str:
    """The ``self`` domain: samples of the dense model (its "eval" seed stream; an encoder's come from the bundled decoder)."""
    from edgeprune.data.domains import SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN
    from edgeprune.data.generated import ENCODER_GENERATOR, generator_text, self_generated_text

    if dense.is_decoder:
        return self_generated_text(dense.model, dense.tokenizer, SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN, 0, purpose="eval")
    return generator_text(ENCODER_GENERATOR, SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN, 0, purpose="eval", device=device)


def _domain(text: str, result: EvalResult) -> dict:
    from edgeprune.data.domains import DOMAINS

    entry = {"text": text, "about": DOMAINS[text].description if text in DOMAINS else "file"}
    keys = ("perplexity", "tokens") if result.perplexity is not None else ("embedding_cosine", "sentences")
    return entry | {k: getattr(result, k) for k in keys}


def combine(results: list[EvalResult], texts: list[str]) -> EvalResult:
    """One result for several texts: per-domain figures in ``domains``, the geometric mean of perplexity on top."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    out = EvalResult(model=first.model, task=first.task, text=",".join(texts), reference=first.reference,
                     attention_error=first.attention_error, domains=[_domain(t, r) for t, r in zip(texts, results)])
    if all(r.perplexity is not None for r in results):
        out.perplexity = out.geomean_perplexity = math.exp(sum(math.log(r.perplexity) for r in results) / len(results))
        out.tokens = sum(r.tokens for r in results)
    else:
        out.sentences = sum(r.sentences or 0 for r in results)
        if all(r.embedding_cosine is not None for r in results):
            out.embedding_cosine = sum(r.embedding_cosine for r in results) / len(results)
    return out


def evaluate(
    model: str,
    text: str | list[str] = EMBEDDED,
    reference: str | None = None,
    seqlen: int = 512,
    max_windows: int | None = None,
    attention: bool = True,
    device: str = "cpu",
    onnx_file: str | None = None,
) -> EvalResult:
    """Evaluate a model folder/alias on held-out text: ``pydoc`` (the held-out pydoc split), ``licences``,
    ``docstrings``, ``self`` (the dense model's own samples), a file, several of them comma-separated or as a list,
    or ``suite`` (all four named domains, :mod:`edgeprune.data.domains`). Several texts give per-domain figures
    in ``domains`` and their geometric-mean perplexity (see :class:`EvalResult`).

    An exported folder (model.onnx, no PyTorch weights), or any folder with ``onnx_file`` given, is
    evaluated through ONNX Runtime instead: see :mod:`edgeprune.onnx.evaluate`.
    """
    from edgeprune.data import check_text
    from edgeprune.onnx.evaluate import is_onnx_dir
    from edgeprune.specs import resolve_spec

    texts = split_texts(text)
    onnx = onnx_file is not None or is_onnx_dir(model)
    if not onnx:
        resolve_spec(model)
    for t in texts:
        if t != SELF:
            check_text(t, "eval", 1, "--text")  # the window count needs the tokenizer: checked after loading
    if reference:
        resolve_spec(reference)
    if onnx:
        return combine([_evaluate_onnx(model, t, reference, seqlen, max_windows, onnx_file, device) for t in texts], texts)

    from edgeprune.models.loading import load_model
    from edgeprune.runtime import resolve_device

    device = resolve_device(device)
    loaded = load_model(model, device=device)
    reference = reference or _reference_for(str(model))
    ref = load_model(reference, device=device) if reference else None
    results = []
    for i, t in enumerate(texts):
        body = _self_text(ref or loaded, device) if t == SELF else load_text(t, "eval")
        results.append(_evaluate_body(loaded, ref, reference, str(model), t, body, seqlen, max_windows,
                                      attention and i == 0, device))
    return combine(results, texts)


def _evaluate_onnx(model: str, text: str, reference: str | None, seqlen: int, max_windows: int | None,
                   onnx_file: str | None, device: str) -> EvalResult:
    from edgeprune.onnx.evaluate import dense_reference, evaluate_onnx

    body = None
    if text == SELF:
        dense = reference or dense_reference(read_metadata(model, fix="re-run edgeprune export") or {})
        if not dense:
            raise EdgepruneError(f"the 'self' text is sampled from the dense PyTorch model, and '{model}' does not name one",
                                 "pass --reference with the dense model (folder or alias)")
        from edgeprune.models.loading import load_model

        body = _self_text(load_model(dense, device="cpu"), "cpu")
    return evaluate_onnx(model, text, reference, seqlen, max_windows, onnx_file or "model.onnx", body=body)


def _evaluate_body(loaded, ref, reference: str | None, model: str, text: str, body: str, seqlen: int,
                   max_windows: int | None, attention: bool, device: str) -> EvalResult:
    """One text: perplexity (decoders) or embedding cosine to the reference (encoders), and attention error if asked."""
    result = EvalResult(model=model, task=loaded.adapter.task, text=text)
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
