"""Sparsity patterns, defined once: parsing specs, projecting scores onto masks, checking.

A mask is a bool tensor shaped like the weight, ``True`` = keep. The N:M pattern
is *at most N non-zeros in every M consecutive weights along the input dimension*
(the last dim of an ``nn.Linear`` weight), the layout sparse tensor cores use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class SparsitySpec:
    """Either unstructured per-row sparsity (``fraction``) or an N:M pattern."""

    fraction: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.fraction:g}"

    def check_width(self, in_features: int, name: str) -> None:
        if self.is_nm and in_features % self.m:
            raise EdgepruneError(
                f"layer {name} has {in_features} input features, not divisible by M={self.m} of {self}",
                "choose an M that divides the hidden sizes (2:4 and 4:8 fit all common models) or keep this layer dense",
            )


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_sparsity(text: str | float | SparsitySpec) -> SparsitySpec:
    """Parse ``0.5``, ``"50%"``, ``"2:4"`` into a :class:`SparsitySpec`; raise a one-line error otherwise."""
    if isinstance(text, SparsitySpec):
        return text
    raw = str(text).strip()
    match = _NM.match(raw)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if m < 1 or n < 1 or n >= m:
            raise EdgepruneError(
                f"invalid N:M sparsity '{raw}': need 0 < N < M",
                "use e.g. --sparsity 2:4 (keep 2 of every 4) or 4:8",
            )
        return SparsitySpec(fraction=1 - n / m, n=n, m=m)
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise EdgepruneError(
            f"cannot read sparsity '{raw}'", "use a fraction in (0, 1) such as 0.5, or an N:M pattern such as 2:4"
        ) from None
    if not 0 < value < 1:
        raise EdgepruneError(
            f"sparsity {raw} is outside (0, 1)",
            "give the fraction of weights to remove, e.g. --sparsity 0.5, or an N:M pattern such as 2:4",
        )
    return SparsitySpec(fraction=value)


def topk_mask(scores: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """Keep the highest-scoring weights: per output row (unstructured) or per N:M group.

    Ties break towards the lower index so results are deterministic.
    """
    if spec.is_nm:
        return to_nm(scores, spec.n, spec.m)
    rows, cols = scores.shape
    n_prune = int(cols * spec.fraction)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune == 0:
        return mask
    order = torch.argsort(scores, dim=1, stable=True)
    mask.scatter_(1, order[:, :n_prune], False)
    return mask


def to_nm(scores_or_mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Project scores (or an existing mask, read as 0/1 scores) onto N:M: the top-N of every M along the input dim."""
    scores = scores_or_mask.float()
    if scores.shape[-1] % m:
        raise EdgepruneError(
            f"width {scores.shape[-1]} is not divisible by M={m}", "choose an M that divides the layer's input features"
        )
    groups = scores.reshape(-1, m)
    # Stable descending sort: among equal scores the earlier position wins.
    order = torch.argsort(-groups, dim=1, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    if scores_or_mask.dtype == torch.bool:
        keep &= scores_or_mask.reshape(-1, m)
    return keep.reshape(scores_or_mask.shape)


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M consecutive input weights holds at most N non-zeros."""
    if weight.shape[-1] % m:
        return False
    return bool(((weight.reshape(-1, m) != 0).sum(dim=1) <= n).all())


@dataclass(frozen=True)
class NMReport:
    layer: str
    groups: int
    violations: int
    sparsity: float

    @property
    def ok(self) -> bool:
        return self.violations == 0


def check_nm(model: torch.nn.Module, n: int, m: int, layers: dict[str, torch.nn.Linear] | None = None) -> list[NMReport]:
    """Per-layer count of N:M groups and violations for the prunable linears of ``model``."""
    if layers is None:
        from edgeprune.models import get_adapter

        layers = get_adapter(model).prunable_linears(model)
    reports = []
    for name, linear in layers.items():
        w = linear.weight.detach()
        if w.shape[-1] % m:
            reports.append(NMReport(name, 0, w.numel(), float((w == 0).float().mean())))
            continue
        counts = (w.reshape(-1, m) != 0).sum(dim=1)
        reports.append(NMReport(name, counts.numel(), int((counts > n).sum()), float((w == 0).float().mean())))
    return reports
