"""Weight reformation: after heads and channels are removed, re-fit each block's output projections so the
block reproduces the dense block's output on calibration data (ridge least squares, block by block, each
block fed the outputs of the already reformed blocks before it).

The omitted units' contribution is not lost: the dense target contains it, and the kept columns absorb
what they can of it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgeprune.models.base import Adapter
from edgeprune.pruning.engine import BlockContext, sequential


def ridge_refit(w_dense: torch.Tensor, h_pruned: torch.Tensor, cross: torch.Tensor, keep: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin_W ‖X_p[:, keep] Wᵀ − X_d W_denseᵀ‖² + λ‖W‖², from ``h_pruned`` = X_pᵀX_p/n and ``cross`` = X_dᵀX_p/n.

    Returns the full-width weight with zeros outside ``keep``; λ = damp · mean(diag(H[keep, keep])).
    """
    h = h_pruned[keep][:, keep].double()
    h = h + damp * h.diagonal().mean().clamp_min(1e-12) * torch.eye(len(keep), dtype=h.dtype, device=h.device)
    rhs = (w_dense.double() @ cross[:, keep].double())  # [out, kept]
    solved = torch.linalg.solve(h, rhs.T).T  # H symmetric: W = rhs · H⁻¹
    out = torch.zeros_like(w_dense)
    out[:, keep] = solved.to(w_dense.dtype)
    return out


@torch.no_grad()
def _relative_error(ctx: BlockContext) -> float:
    """‖block(x) − dense(x)‖² / ‖dense(x) − x‖²: how much of the block's update is lost."""
    err = ref = 0.0
    for x in ctx.batches():
        dense = ctx.adapter.run_block(ctx.dense_block, x, ctx.context)
        ours = ctx.adapter.run_block(ctx.block, x, ctx.context)
        err += float((ours - dense).double().pow(2).sum())
        ref += float((dense - x).double().pow(2).sum())
    return err / max(ref, 1e-30)


def _zero_cols(linear: nn.Linear, keep: torch.Tensor) -> None:
    drop = torch.ones(linear.in_features, dtype=torch.bool, device=linear.weight.device)
    drop[keep.to(drop.device)] = False
    linear.weight[:, drop] = 0


@torch.no_grad()
def reform_model(
    model: nn.Module, adapter: Adapter, kept: list[tuple[torch.Tensor, torch.Tensor]], calib_ids: torch.Tensor,
    reform: bool = True, damp: float = 0.01, batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
    hidden_policy=None,
) -> list[dict]:
    """Mask the removed units (zero their output-projection columns) and, with ``reform``, re-fit the kept columns.

    Returns per block the relative block-output error after removal alone and after reformation. ``hidden_policy``
    places the hidden states between blocks (:mod:`edgeprune.pruning.hidden`).
    """
    log = []
    for ctx, (heads, channels) in zip(sequential(adapter, model, calib_ids, batch_size, progress=progress, hidden_policy=hidden_policy), kept):
        block = ctx.block
        ctx.keep_dense_copy()
        units = adapter.units(block)
        head_cols = (heads[:, None] * units.head_dim + torch.arange(units.head_dim)[None, :]).reshape(-1)
        targets = ((units.head_cols, head_cols), (units.channel_cols, channels))
        for name, keep in targets:
            _zero_cols(block.get_submodule(name), keep)
        entry = {"block": ctx.index, "removal_error": _relative_error(ctx)}
        if heads.numel() == 0:
            entry["removed"] = True  # the whole block goes: nothing to re-fit; later blocks see its absence
        elif reform:
            for name, keep in targets:  # in data-flow order: the MLP sees the re-fitted attention output
                pair = ctx.collect_pairs([name])[name]
                linear = block.get_submodule(name)
                dense_w = ctx.dense_block.get_submodule(name).weight
                linear.weight.copy_(ridge_refit(dense_w.float(), pair.pp.value, pair.cross, keep.to(dense_w.device), damp).to(linear.weight.dtype))
            entry["reformed_error"] = _relative_error(ctx)
        log.append(entry)
    return log
