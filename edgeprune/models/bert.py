"""BERT-family encoders (BERT, MiniLM sentence encoders): post-norm blocks, bidirectional attention."""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeprune.models.base import Adapter, AttentionParts, ChannelPermutation, Units
from edgeprune.models.registry import ADAPTERS


@ADAPTERS.register("bert")
class BertAdapter(Adapter):
    family = "bert"
    model_types = ("bert",)
    task = "feature-extraction"

    def _encoder(self, model: nn.Module) -> nn.Module:
        return model.encoder if hasattr(model, "encoder") else model.bert.encoder

    def _embeddings(self, model: nn.Module) -> nn.Module:
        return model.embeddings if hasattr(model, "embeddings") else model.bert.embeddings

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(self._encoder(model).layer)

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"encoder.layer.{index}" if hasattr(model, "encoder") else f"bert.encoder.layer.{index}"

    def stages(self, block: nn.Module) -> list[dict[str, nn.Linear]]:
        sa = block.attention.self
        return [
            {"attention.self.query": sa.query, "attention.self.key": sa.key, "attention.self.value": sa.value},
            {"attention.output.dense": block.attention.output.dense},
            {"intermediate.dense": block.intermediate.dense},
            {"output.dense": block.output.dense},
        ]

    def permutations(self, block: nn.Module) -> list[ChannelPermutation]:
        heads = block.attention.self.num_attention_heads
        return [
            ChannelPermutation("output.dense", ("intermediate.dense",)),
            ChannelPermutation("attention.output.dense", ("attention.self.value",), heads, heads),
        ]

    def units(self, block: nn.Module) -> Units:
        sa = block.attention.self
        return Units(
            head_rows=("attention.self.query", "attention.self.key", "attention.self.value"),
            head_cols="attention.output.dense",
            num_heads=sa.num_attention_heads,
            num_kv_heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            channel_rows=("intermediate.dense",),
            channel_cols="output.dense",
            channels=block.output.dense.in_features,
        )

    def set_num_heads(self, block: nn.Module, num_heads: int) -> None:
        sa = block.attention.self
        sa.num_attention_heads = num_heads
        sa.all_head_size = num_heads * sa.attention_head_size

    def keep_blocks(self, model: nn.Module, keep: list[int]) -> None:
        encoder = self._encoder(model)
        encoder.layer = nn.ModuleList([encoder.layer[i] for i in keep])
        model.config.num_hidden_layers = len(keep)

    def embed(self, model: nn.Module, input_ids: torch.Tensor):
        return self._embeddings(model)(input_ids=input_ids), None

    def run_block(self, block: nn.Module, hidden: torch.Tensor, context) -> torch.Tensor:
        out = block(hidden, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    def attention(self, block: nn.Module) -> AttentionParts:
        sa = block.attention.self
        return AttentionParts(
            q=sa.query,
            k=sa.key,
            q_name="attention.self.query",
            k_name="attention.self.key",
            num_heads=sa.num_attention_heads,
            num_kv_heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            causal=False,
            scale=1 / math.sqrt(sa.attention_head_size),
            attn_input=lambda hidden: hidden,
            rope=None,
        )
