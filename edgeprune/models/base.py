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


@dataclass(frozen=True)
class Units:
    """The removable units of one block, by linear name (relative to the block), for structured pruning.

    Attention heads: rows of ``head_rows`` (query heads; with MHA also key/value) and columns of
    ``head_cols`` (the output projection), ``head_dim`` each. With GQA (``num_kv_heads < num_heads``)
    key/value heads stay and every KV group loses the same number of query heads, so the cache keeps
    its shape. MLP channels: rows of ``channel_rows`` and columns of ``channel_cols``.
    """

    head_rows: tuple[str, ...]
    head_cols: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    channel_rows: tuple[str, ...]
    channel_cols: str
    channels: int

    @property
    def group_size(self) -> int:
        """Query heads per KV group (1 for multi-head attention, where key/value heads go with their query head)."""
        return self.num_heads // self.num_kv_heads


class _InputsRead(Exception):
    """Stops a block's forward once :meth:`Adapter.read_inputs` has what it needs."""


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
    def attention(self, block: nn.Module) -> AttentionParts:
        """The block's attention as it is now: head counts come from its weights (structured pruning may have
        removed heads), and ``rope`` is ``None`` where :meth:`uses_rope` says the block has no rotation."""

    def uses_rope(self, block: nn.Module) -> bool:
        """Whether this block rotates queries and keys by position (RoPE). Per block, because some architectures
        (SmolLM3) leave it out of some layers; export and attention fusion read it too."""
        return False

    def units(self, block: nn.Module) -> Units:
        """Heads and MLP channels that structured pruning may remove."""
        raise NotImplementedError(f"structured pruning is not supported for {self.family} models")

    def set_num_heads(self, block: nn.Module, num_heads: int) -> None:
        """Tell the block's attention module it now has ``num_heads`` query heads (after rows were removed)."""
        raise NotImplementedError(f"structured pruning is not supported for {self.family} models")

    def keep_blocks(self, model: nn.Module, keep: list[int]) -> None:
        """Remove every block not in ``keep`` (indices, in order); the model and its config stay consistent."""
        raise NotImplementedError(f"removing blocks is not supported for {self.family} models")

    def permutations(self, block: nn.Module) -> list[ChannelPermutation]:
        """Channel reorders this architecture absorbs at zero run-time cost (used to raise N:M quality)."""
        return []

    def block_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {name: lin for stage in self.stages(block) for name, lin in stage.items()}

    def read_inputs(self, block: nn.Module, hidden: torch.Tensor, context: Any, taps: dict[str, Callable[[torch.Tensor], None]]) -> None:
        """Run ``block`` only as far as the inputs of the named linears: each goes to its callback, and the forward
        stops at the input of the one in the latest stage, so what comes after it (for the attention output
        projection: the rest of attention and the whole MLP) is never computed."""
        order = {name: s for s, stage in enumerate(self.stages(block)) for name in stage}
        linears = self.block_linears(block)
        last = linears[max(taps, key=order.__getitem__)]
        seen: set[str] = set()

        def tap(name):
            def hook(module, inputs):
                taps[name](inputs[0].detach())
                seen.add(name)
                if module is last:
                    raise _InputsRead
            return hook

        handles = [linears[name].register_forward_pre_hook(tap(name)) for name in taps]
        try:
            self.run_block(block, hidden, context)
        except _InputsRead:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if seen != set(taps):  # a stage order that is not the forward order would skip a linear: never silently
            raise RuntimeError(f"{self.family}: {sorted(set(taps) - seen)} run after {sorted(seen)}; fix the adapter's stages()")

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """All linears pruning touches, by full module name. Embeddings and heads are excluded."""
        out: dict[str, nn.Linear] = {}
        for i, block in enumerate(self.blocks(model)):
            prefix = self.block_prefix(model, i)
            for name, lin in self.block_linears(block).items():
                out[f"{prefix}.{name}"] = lin
        return out
