"""The attention-approximation objective of Liang et al. (ICLR 2025), on a real model's attention.

``attention_probs`` rebuilds softmax(QKᵀ·scale) per head from a block's
attention input and (possibly masked) W_Q / W_K, with the model's rotary
embedding, grouped KV heads and causal mask. ``attention_error`` is the paper's
loss ½‖P̃ − P‖²_F, averaged over sequences and heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeprune.models.base import AttentionParts


def attention_probs(
    x: torch.Tensor,
    parts: AttentionParts,
    context,
    wq: torch.Tensor | None = None,
    wk: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[batch, heads, seq, seq]`` attention probabilities. ``x`` is the attention input (after any norm)."""
    wq = parts.q.weight if wq is None else wq
    wk = parts.k.weight if wk is None else wk
    batch, seq, _ = x.shape
    q = F.linear(x, wq, parts.q.bias).view(batch, seq, parts.num_heads, parts.head_dim).transpose(1, 2)
    k = F.linear(x, wk, parts.k.bias).view(batch, seq, parts.num_kv_heads, parts.head_dim).transpose(1, 2)
    if parts.rope is not None:
        q, k = parts.rope(q, k, context)
    # Query heads grouped under their KV head ([batch·kv, group·seq, dim]) meet K without repeating it; the scale and
    # the causal mask go into the one batched product (baddbmm), so no [.., seq, seq] temporaries besides the logits.
    kv, group = parts.num_kv_heads, parts.num_heads // parts.num_kv_heads
    q = q.reshape(batch * kv, group * seq, parts.head_dim)
    k = k.reshape(batch * kv, seq, parts.head_dim).transpose(1, 2)
    if parts.causal:
        bias = torch.zeros(seq, seq, dtype=q.dtype, device=x.device).masked_fill_(
            torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        logits = torch.baddbmm(bias.repeat(group, 1).expand(batch * kv, -1, -1), q, k, alpha=parts.scale)
    else:
        logits = torch.bmm(q, k) * parts.scale
    return torch.softmax(logits.float(), dim=-1).view(batch, parts.num_heads, seq, seq)


def attention_error(pruned: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """½‖P̃ − P‖²_F per (sequence, head), averaged: the paper's L(M) without the λ term."""
    batch, heads = dense.shape[:2]
    return 0.5 * F.mse_loss(pruned, dense, reduction="sum") / (batch * heads)
