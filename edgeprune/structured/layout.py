"""Physically smaller blocks: remove heads and MLP channels from the linears, and rebuild those shapes at load time.

A structured model is a normal Hugging Face folder whose ``config.json`` keeps the dense sizes and adds
``edgeprune_layout``: one ``{"num_heads", "num_kv_heads", "channels"}`` entry per block. Its ``auto_map``
points transformers at ``modeling_edgeprune.py`` (copied into the folder), whose classes build the dense
model, resize every block to the layout with :func:`apply_layout`, then load the smaller weights:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)   # edgeprune must be installed
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models.base import Adapter, Units

LAYOUT_KEY = "edgeprune_layout"
MODELING_FILE = Path(__file__).with_name("modeling_edgeprune.py")  # copied into every structured folder
#: config.json's model_type → (auto class, class name in modeling_edgeprune.py) written into its auto_map; kept here,
#: not in that file, because that file imports this module (and transformers' model classes)
AUTO_MAP = {
    "llama": ("AutoModelForCausalLM", "EdgepruneLlamaForCausalLM"),
    "mistral": ("AutoModelForCausalLM", "EdgepruneMistralForCausalLM"),
    "qwen2": ("AutoModelForCausalLM", "EdgepruneQwen2ForCausalLM"),
    "smollm3": ("AutoModelForCausalLM", "EdgepruneSmolLM3ForCausalLM"),
    "bert": ("AutoModel", "EdgepruneBertModel"),
}


@dataclass(frozen=True)
class BlockShape:
    """What is left of one block: query heads, key/value heads and MLP channels."""

    num_heads: int
    num_kv_heads: int
    channels: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UnitCost:
    """Parameters one query head (with MHA: its key/value head too) and one MLP channel take in a block."""

    head: int
    channel: int
    fixed: int  # everything else in the block's linears (GQA key/value projections)


def _linear(block: nn.Module, name: str) -> nn.Linear:
    return block.get_submodule(name)


def _replace(block: nn.Module, name: str, new: nn.Linear) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, new)


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def block_shape(units: Units) -> BlockShape:
    return BlockShape(units.num_heads, units.num_kv_heads, units.channels)


def unit_cost(block: nn.Module, adapter: Adapter) -> UnitCost:
    """Parameter cost of the removable units, read off the linears (biases included)."""
    units = adapter.units(block)

    def row_cost(name: str) -> int:
        lin = _linear(block, name)
        return lin.in_features + (lin.bias is not None)

    head = units.head_dim * (sum(row_cost(n) for n in units.head_rows) + _linear(block, units.head_cols).out_features)
    channel = sum(row_cost(n) for n in units.channel_rows) + _linear(block, units.channel_cols).out_features
    fixed = block_params(block, adapter) - head * units.num_heads - channel * units.channels
    return UnitCost(head, channel, fixed)


def block_params(block: nn.Module, adapter: Adapter) -> int:
    """Parameters in a block's linears: what ``--target-params`` counts (norms and embeddings are not)."""
    return sum(p.numel() for lin in adapter.block_linears(block).values() for p in lin.parameters())


def shape_params(cost: UnitCost, shape: BlockShape) -> int:
    return cost.fixed + cost.head * shape.num_heads + cost.channel * shape.channels


def _row_index(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def check_heads(units: Units, heads: torch.Tensor) -> None:
    """Kept query heads must leave every KV group the same, non-zero number of heads."""
    if heads.numel() == 0:
        raise EdgepruneError("the layout removes every attention head of a block", "keep at least one head per block")
    if units.group_size > 1:
        counts = torch.bincount(heads // units.group_size, minlength=units.num_kv_heads)
        if counts.min() != counts.max() or counts.min() == 0:
            raise EdgepruneError(
                f"kept heads {heads.tolist()} leave KV groups with {counts.tolist()} query heads",
                f"keep the same number (1..{units.group_size}) of query heads in each of the {units.num_kv_heads} groups",
            )


@torch.no_grad()
def remove_units(block: nn.Module, adapter: Adapter, heads: torch.Tensor, channels: torch.Tensor) -> BlockShape:
    """Keep only query heads ``heads`` and MLP channels ``channels`` (sorted indices); the linears shrink in place."""
    units = adapter.units(block)
    heads, channels = heads.sort().values.cpu(), channels.sort().values.cpu()
    check_heads(units, heads)
    if channels.numel() == 0:
        raise EdgepruneError("the layout removes every MLP channel of a block", "keep at least one channel per block")
    head_rows = _row_index(heads, units.head_dim)
    for name in units.head_rows:
        _keep_rows(block, name, head_rows)
    _keep_cols(block, units.head_cols, head_rows)
    for name in units.channel_rows:
        _keep_rows(block, name, channels)
    _keep_cols(block, units.channel_cols, channels)
    adapter.set_num_heads(block, heads.numel())
    return BlockShape(heads.numel(), units.num_kv_heads if units.group_size > 1 else heads.numel(), channels.numel())


def _keep_rows(block: nn.Module, name: str, rows: torch.Tensor) -> None:
    old = _linear(block, name)
    rows = rows.to(old.weight.device)
    new = _linear_like(old, old.in_features, rows.numel())
    new.weight.copy_(old.weight[rows])
    if old.bias is not None:
        new.bias.copy_(old.bias[rows])
    _replace(block, name, new)


def _keep_cols(block: nn.Module, name: str, cols: torch.Tensor) -> None:
    old = _linear(block, name)
    cols = cols.to(old.weight.device)
    new = _linear_like(old, cols.numel(), old.out_features)
    new.weight.copy_(old.weight[:, cols])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    _replace(block, name, new)


def apply_layout(model: nn.Module, adapter: Adapter, layout: list[dict]) -> None:
    """Give every block the linear shapes of ``layout`` (uninitialised weights: loading fills them)."""
    blocks = adapter.blocks(model)
    if len(layout) != len(blocks):
        raise EdgepruneError(f"{LAYOUT_KEY} has {len(layout)} entries for {len(blocks)} blocks", "re-run edgeprune structured")
    for block, entry in zip(blocks, layout):
        shape = BlockShape(**entry)
        units = adapter.units(block)
        for name in units.head_rows:
            old = _linear(block, name)
            _replace(block, name, _linear_like(old, old.in_features, shape.num_heads * units.head_dim))
        old = _linear(block, units.head_cols)
        _replace(block, units.head_cols, _linear_like(old, shape.num_heads * units.head_dim, old.out_features))
        for name in units.channel_rows:
            old = _linear(block, name)
            _replace(block, name, _linear_like(old, old.in_features, shape.channels))
        old = _linear(block, units.channel_cols)
        _replace(block, units.channel_cols, _linear_like(old, shape.channels, old.out_features))
        adapter.set_num_heads(block, shape.num_heads)


def model_layout(model: nn.Module, adapter: Adapter) -> list[dict]:
    return [block_shape(adapter.units(b)).to_dict() for b in adapter.blocks(model)]


def auto_map_entry(model_type: str) -> tuple[str, str]:
    """The auto class and the ``modeling_edgeprune.py`` class a structured folder of ``model_type`` reloads with."""
    if model_type not in AUTO_MAP:
        raise EdgepruneError(f"structured pruning cannot write '{model_type}' models",
                             f"structured pruning supports: {', '.join(AUTO_MAP)}")
    return AUTO_MAP[model_type]


def save_layout_folder(model: nn.Module, adapter: Adapter, tokenizer, folder: Path) -> None:
    """Save a (possibly resized) model as a folder transformers reloads: layout + auto_map in config.json, weights,
    tokenizer and the copied ``modeling_edgeprune.py``."""
    import shutil

    auto_class, class_name = auto_map_entry(model.config.model_type)
    setattr(model.config, LAYOUT_KEY, model_layout(model, adapter))
    model.config.auto_map = {auto_class: f"modeling_edgeprune.{class_name}"}
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    shutil.copy2(MODELING_FILE, Path(folder) / MODELING_FILE.name)
