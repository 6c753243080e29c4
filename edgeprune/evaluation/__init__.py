"""Quality of a (pruned) model: perplexity for decoders, embedding cosine for encoders,
and per-layer attention-approximation error against the dense model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.data import EMBEDDED, eval_windows, load_text, tokenize
from edgeprune.errors import EdgepruneError
from edgeprune.progress import status
from edgeprune.pruning.attention_math import attention_error, attention_probs

SCHEMA_VERSION = 1


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over all positions of all windows."""
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for i, batch in enumerate(windows.split(batch_size)):
        status("perplexity (windows)", i * batch_size, len(windows))
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    return float(torch.exp(torch.tensor(nll / count)))


def sentences(text: str, limit: int = 256, min_chars: int = 40) -> list[str]:
    """Paragraph-sized pieces of ``text`` to embed, in order."""
    pieces = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p[:1000] for p in pieces if len(p) >= min_chars][:limit]


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings (the sentence-transformers recipe of MiniLM)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def attention_errors(model, reference, adapter, ids: torch.Tensor) -> list[float]:
    """Per block: ½‖P̃ − P‖²_F with both models' W_Q/W_K applied to the *reference* model's hidden states."""
    hidden, context = adapter.embed(reference, ids)
    errors = []
    for block, ref_block in zip(adapter.blocks(model), adapter.blocks(reference)):
        parts, ref_parts = adapter.attention(block), adapter.attention(ref_block)
        x = ref_parts.attn_input(hidden)
        errors.append(float(attention_error(attention_probs(x, parts, context), attention_probs(x, ref_parts, context))))
        hidden = adapter.run_block(ref_block, hidden, context)
    return errors


def same_attention_shapes(model, reference, adapter) -> bool:
    """Whether every block of both models has the same heads, so their attention matrices compare block by block
    (structured pruning may have removed heads or whole blocks)."""

    def heads(block) -> tuple[int, int, int]:
        parts = adapter.attention(block)
        return parts.num_heads, parts.num_kv_heads, parts.head_dim

    blocks, ref_blocks = adapter.blocks(model), adapter.blocks(reference)
    return len(blocks) == len(ref_blocks) and all(heads(a) == heads(b) for a, b in zip(blocks, ref_blocks))


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


@dataclass
class EvalResult:
    model: str
    task: str
    text: str
    schema_version: int = SCHEMA_VERSION
    perplexity: float | None = None
    tokens: int | None = None
    embedding_cosine: float | None = None
    sentences: int | None = None
    reference: str | None = None
    attention_error: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _reference_for(model_spec: str) -> str | None:
    meta = Path(model_spec) / "edgeprune.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("source_model")
    return None


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
