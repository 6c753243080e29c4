"""How much each attention head and MLP channel matters: per-unit importance scores, and the one calibration
pass (on the dense model, block by block) that gathers their statistics.

Scores are pure functions of a block's weights and :class:`BlockStats`; higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgeprune.models.base import Adapter, Units
from edgeprune.pruning.engine import BlockContext, sequential
from edgeprune.pruning.kernels import ColumnSquareNorms, Hessian
from edgeprune.registry import Registry


@dataclass
class BlockStats:
    """Calibration statistics of one dense block's inputs, per linear group."""

    head_in_sq: torch.Tensor  # E[x_j²] of what the head rows read  [hidden]
    head_out_cov: torch.Tensor  # E[a aᵀ] of the attention output (input of the head columns)  [H·d, H·d]
    channel_in_sq: torch.Tensor  # E[x_j²] of the MLP input  [hidden]
    channel_out_sq: torch.Tensor  # E[a_j²] of the MLP activation (input of the channel columns)  [C]


@dataclass(frozen=True)
class UnitScores:
    heads: torch.Tensor  # [num_heads]
    channels: torch.Tensor  # [channels]
    block: float = 1.0  # how much the whole block changes its input: 1 − mean cos(x, block(x)) (ShortGPT's block influence)


ScoreFn = Callable[[dict[str, torch.Tensor], Units, BlockStats], UnitScores]
SCORES: Registry[ScoreFn] = Registry("structured score")


def _per_head(values: torch.Tensor, units: Units) -> torch.Tensor:
    """Sum a per-row (or per-column) vector of length H·d into one value per head."""
    return values.reshape(units.num_heads, units.head_dim).sum(1)


@SCORES.register("magnitude")
def magnitude_scores(w: dict[str, torch.Tensor], units: Units, stats: BlockStats) -> UnitScores:
    """‖W‖² over every weight a unit owns: rows it produces, columns it feeds (data-free baseline)."""
    rows = sum(w[n].pow(2).sum(1) for n in units.head_rows)
    heads = _per_head(rows + w[units.head_cols].pow(2).sum(0), units)
    channels = sum(w[n].pow(2).sum(1) for n in units.channel_rows) + w[units.channel_cols].pow(2).sum(0)
    return UnitScores(heads, channels)


@SCORES.register("wanda-sp")
def wanda_sp_scores(w: dict[str, torch.Tensor], units: Units, stats: BlockStats) -> UnitScores:
    """Σ |W_ij|·‖X_j‖ over a unit's weights (Wanda's score summed over the structure, as in Wanda-sp / FLAP)."""
    head_in, head_out = stats.head_in_sq.sqrt(), stats.head_out_cov.diagonal().clamp_min(0).sqrt()
    rows = sum((w[n].abs() * head_in).sum(1) for n in units.head_rows)
    heads = _per_head(rows + (w[units.head_cols].abs() * head_out).sum(0), units)
    ch_in, ch_out = stats.channel_in_sq.sqrt(), stats.channel_out_sq.sqrt()
    channels = sum((w[n].abs() * ch_in).sum(1) for n in units.channel_rows) + (w[units.channel_cols].abs() * ch_out).sum(0)
    return UnitScores(heads, channels)


@SCORES.register("output")
def output_scores(w: dict[str, torch.Tensor], units: Units, stats: BlockStats) -> UnitScores:
    """E‖what the unit adds to the block output‖²: tr(W_h Σ_h W_hᵀ) per head, ‖W_:,j‖²·E[a_j²] per channel.

    Exactly the squared error that removing the unit alone puts on the residual stream, so scores of
    different blocks are comparable (the search ranks units across blocks with them).
    """
    wo, d = w[units.head_cols], units.head_dim
    heads = torch.stack([
        torch.einsum("oi,ij,oj->", wo[:, h * d:(h + 1) * d], stats.head_out_cov[h * d:(h + 1) * d, h * d:(h + 1) * d], wo[:, h * d:(h + 1) * d])
        for h in range(units.num_heads)
    ])
    channels = w[units.channel_cols].pow(2).sum(0) * stats.channel_out_sq
    return UnitScores(heads.clamp_min(0), channels)


@torch.no_grad()
def block_stats(ctx: BlockContext, units: Units) -> BlockStats:
    """Two passes over one block's calibration inputs: column norms of three inputs, and the attention-output covariance."""
    norms = ctx.collect([units.head_rows[0], units.channel_rows[0], units.channel_cols], lambda f: ColumnSquareNorms(f, ctx.inputs.device))
    cov = ctx.collect([units.head_cols], lambda f: Hessian(f, ctx.inputs.device))[units.head_cols]
    return BlockStats(norms[units.head_rows[0]].value, cov.value, norms[units.channel_rows[0]].value, norms[units.channel_cols].value)


def block_weights(block: nn.Module, units: Units) -> dict[str, torch.Tensor]:
    names = (*units.head_rows, units.head_cols, *units.channel_rows, units.channel_cols)
    return {n: block.get_submodule(n).weight.detach().float() for n in names}


@torch.no_grad()
def score_model(model: nn.Module, adapter: Adapter, calib_ids: torch.Tensor, score: str, batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None, hidden_policy=None) -> list[UnitScores]:
    """Scores of every block's units, from one layer-by-layer pass of the dense model over the calibration ids
    (hidden states between blocks placed by ``hidden_policy``, :mod:`edgeprune.pruning.hidden`)."""
    fn = SCORES.get(score)
    out = []
    for ctx in sequential(adapter, model, calib_ids, batch_size, progress=progress, hidden_policy=hidden_policy):
        units = adapter.units(ctx.block)
        unit_scores = fn(block_weights(ctx.block, units), units, block_stats(ctx, units))
        influence = 1 - float(torch.nn.functional.cosine_similarity(ctx.inputs.float(), ctx.outputs().float(), dim=-1).mean())
        out.append(UnitScores(unit_scores.heads, unit_scores.channels, influence))
    return out
