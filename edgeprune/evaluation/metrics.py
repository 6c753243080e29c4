"""The quality measures, as pure functions of a model and text: perplexity for decoders, mean-pooled sentence
embeddings for encoders, and per-layer attention-approximation error against the dense model. A leaf that
evaluation, verification and ONNX Runtime evaluation all use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeprune.progress import status
from edgeprune.pruning.attention_math import attention_error, attention_probs


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
