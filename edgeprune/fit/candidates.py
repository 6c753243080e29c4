"""The models ``edgeprune fit`` chooses between: how much of the model is kept (dense, or structured pruning at a
keep ratio, with or without whole-block removal; N:M only where the device has N:M kernels) and how it is quantised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from edgeprune.errors import EdgepruneError

SCHEMES = ("int4", "int8")


@dataclass(frozen=True)
class Candidate:
    """One model to consider. ``keep`` < 1: structured pruning to that fraction of the block parameters."""

    keep: float = 1.0
    drop_blocks: bool = False  # the structured search may also remove whole blocks
    sparsity: str | None = None  # N:M pattern (e.g. "2:4"), pruned with ``nm_method``
    nm_method: str = "wanda"
    scheme: str = "int4"
    head_bits: int = 4  # int4: bits of the token embedding / LM head table

    def __post_init__(self):
        if not 0 < self.keep <= 1:
            raise EdgepruneError(f"keep ratio {self.keep} is not in (0, 1]", "pass fractions such as --keep 0.8,0.65,0.5")
        if self.scheme not in SCHEMES:
            raise EdgepruneError(f"unknown quantisation '{self.scheme}'", f"use one of: {', '.join(SCHEMES)}")
        if self.sparsity is not None and self.keep < 1:
            raise EdgepruneError("a candidate is either N:M or structured, not both", "this is a bug in the candidate list")

    @property
    def structure(self) -> str:
        """What is kept, independent of the quantisation: the key of the PyTorch model the candidate starts from."""
        if self.sparsity:
            return f"{self.sparsity.replace(':', 'of')}-{self.nm_method}"
        if self.keep >= 1:
            return "dense"
        return f"keep{round(self.keep * 100)}" + ("-drop" if self.drop_blocks else "")

    @property
    def key(self) -> str:
        """A short, stable name for the cache and the report's tables."""
        quant = self.scheme + (f"-h{self.head_bits}" if self.scheme == "int4" else "")
        return f"{self.structure}-{quant}"

    @property
    def label(self) -> str:
        if self.sparsity:
            what = f"{self.sparsity} {self.nm_method}"
        elif self.keep >= 1:
            what = "dense"
        else:
            what = f"structured {self.keep:.0%}" + (" (blocks may go)" if self.drop_blocks else "")
        quant = f"int4, {self.head_bits}-bit head" if self.scheme == "int4" else "int8"
        return f"{what} + {quant}"


def generate_candidates(keeps: Sequence[float] = (0.75, 0.55), schemes: Sequence[str] = SCHEMES,
                        drop_blocks: Sequence[bool] = (False, True), nm_kernels: bool = False,
                        nm_patterns: Sequence[str] = ("2:4",)) -> list[Candidate]:
    """Every candidate: dense at each scheme (int4 with a 4- and an 8-bit head), each keep ratio × block removal × scheme
    (int4 with a 4-bit head), and N:M × scheme only when the device has N:M kernels (no CPU runtime does: on a CPU an
    N:M model is exactly as large and as slow as the dense one)."""
    for scheme in schemes:
        if scheme not in SCHEMES:
            raise EdgepruneError(f"unknown quantisation '{scheme}'", f"use one of: {', '.join(SCHEMES)}")
    if not schemes:
        raise EdgepruneError("no quantisation scheme given", f"pass one or more of: {', '.join(SCHEMES)}")
    if len(set(keeps)) != len(keeps):
        raise EdgepruneError(f"keep ratios {list(keeps)} repeat", "list each ratio once")
    out: list[Candidate] = []
    for scheme in schemes:
        out += [Candidate(scheme=scheme, head_bits=bits) for bits in ((4, 8) if scheme == "int4" else (8,))]
    for keep in sorted(keeps, reverse=True):
        if not 0 < keep < 1:
            raise EdgepruneError(f"keep ratio {keep} is not in (0, 1)", "pass fractions of the block parameters, e.g. --keep 0.8,0.65")
        for drop in drop_blocks:
            out += [Candidate(keep=keep, drop_blocks=drop, scheme=scheme) for scheme in schemes]
    if nm_kernels:
        from edgeprune.sparsity import parse_sparsity

        for pattern in nm_patterns:
            parse_sparsity(pattern)
            out += [Candidate(sparsity=pattern, scheme=scheme) for scheme in schemes]
    return out
