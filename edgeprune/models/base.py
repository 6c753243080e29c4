"""The adapter interface: everything pruning needs to know about an architecture.

Pruning code asks an adapter for blocks, the linears of a block in the order
calibration must visit them, the attention geometry and the rotary embedding.
Nothing outside ``edgeprune/models`` names a module path such as ``q_proj``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionParts:
    """What the attention-aware objective needs from one block.

    ``attn_input`` maps the block input to what q/k/v read (e.g. after the input
    RMSNorm); ``rope`` applies the model's positional rotation to (q, k) laid
    out as [batch, heads, seq, head_dim], or is ``None`` for absolute positions.
    """

    q: nn.Linear
    k: nn.Linear
    q_name: str
    k_name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    causal: bool
    scale: float
    attn_input: Callable[[torch.Tensor], torch.Tensor]
    rope: Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]] | None


@dataclass(frozen=True)
class ChannelPermutation:
    """Input channels of ``consumer`` whose order the block absorbs exactly by permuting ``producers``' rows.

    The consumer's input is ``consumer_segments`` equal segments (e.g. attention heads) and the
    producers' output ``producer_segments`` segments (e.g. KV heads); consumer segment h reads
    producer segment h // (consumer_segments // producer_segments). A permutation acts within
    each producer segment and is repeated on every consumer segment that reads it.
    """

    consumer: str
    producers: tuple[str, ...]
    consumer_segments: int = 1
    producer_segments: int = 1


class Adapter(ABC):
    """One architecture family. Subclasses are small and declarative."""

    family: str
    model_types: tuple[str, ...]
    #: "text-generation" (decoder with an LM head) or "feature-extraction" (encoder)
    task: str

    @abstractmethod
    def blocks(self, model: nn.Module) -> list[nn.Module]: ...

    @abstractmethod
    def block_prefix(self, model: nn.Module, index: int) -> str:
        """Fully qualified module name of block ``index`` (for reports and overrides)."""

    @abstractmethod
    def stages(self, block: nn.Module) -> list[dict[str, nn.Linear]]:
        """The prunable linears of a block, grouped by the order data flows through them.

        Linears in one stage read the same input; a later stage reads the output
        of an earlier one. Names are relative to the block.
        """

    @abstractmethod
    def embed(self, model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Hidden states entering block 0, and the per-sequence context every block needs."""

    @abstractmethod
    def run_block(self, block: nn.Module, hidden: torch.Tensor, context: Any) -> torch.Tensor: ...

    @abstractmethod
    def attention(self, block: nn.Module) -> AttentionParts: ...

    def permutations(self, block: nn.Module) -> list[ChannelPermutation]:
        """Channel reorders this architecture absorbs at zero run-time cost (used to raise N:M quality)."""
        return []

    def block_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {name: lin for stage in self.stages(block) for name, lin in stage.items()}

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """All linears pruning touches, by full module name. Embeddings and heads are excluded."""
        out: dict[str, nn.Linear] = {}
        for i, block in enumerate(self.blocks(model)):
            prefix = self.block_prefix(model, i)
            for name, lin in self.block_linears(block).items():
                out[f"{prefix}.{name}"] = lin
        return out
