"""Llama-family decoders (Llama, Mistral, Qwen2, SmolLM, SmolLM3): pre-norm blocks, GQA, RoPE, SwiGLU MLP.

Subclasses override only what differs from Llama (e.g. SmolLM3: layers without RoPE)."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.base import Adapter, AttentionParts, ChannelPermutation, Units
from edgeprune.models.registry import ADAPTERS


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(q: torch.Tensor, k: torch.Tensor, context) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = context  # [1, seq, head_dim], broadcast over batch and heads
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _heads(attn: nn.Module) -> tuple[int, int]:
    """Query and key/value heads, read off the projections (the config keeps the dense counts)."""
    return attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim


@ADAPTERS.register("llama")
class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "smollm")
    task = "text-generation"
    #: config lists with one entry per block: keep_blocks keeps them in step with the blocks
    per_layer_config: tuple[str, ...] = ("layer_types",)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"model.layers.{index}"

    def stages(self, block: nn.Module) -> list[dict[str, nn.Linear]]:
        attn, mlp = block.self_attn, block.mlp
        return [
            {"self_attn.q_proj": attn.q_proj, "self_attn.k_proj": attn.k_proj, "self_attn.v_proj": attn.v_proj},
            {"self_attn.o_proj": attn.o_proj},
            {"mlp.gate_proj": mlp.gate_proj, "mlp.up_proj": mlp.up_proj},
            {"mlp.down_proj": mlp.down_proj},
        ]

    def permutations(self, block: nn.Module) -> list[ChannelPermutation]:
        return [
            ChannelPermutation("mlp.down_proj", ("mlp.gate_proj", "mlp.up_proj")),
            ChannelPermutation("self_attn.o_proj", ("self_attn.v_proj",), *_heads(block.self_attn)),
        ]

    def units(self, block: nn.Module) -> Units:
        attn, mlp = block.self_attn, block.mlp
        heads, kv_heads = _heads(attn)
        return Units(
            head_rows=("self_attn.q_proj",) if attn.num_key_value_groups > 1 else ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            head_cols="self_attn.o_proj",
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=attn.head_dim,
            channel_rows=("mlp.gate_proj", "mlp.up_proj"),
            channel_cols="mlp.down_proj",
            channels=mlp.down_proj.in_features,
        )

    def set_num_heads(self, block: nn.Module, num_heads: int) -> None:
        # transformers reshapes q/k/v with -1 heads; only the GQA repeat factor is stored per module.
        attn = block.self_attn
        attn.num_key_value_groups = num_heads // (attn.k_proj.out_features // attn.head_dim)

    def keep_blocks(self, model: nn.Module, keep: list[int]) -> None:
        layers = [model.model.layers[i] for i in keep]
        for idx, layer in enumerate(layers):  # the KV cache is indexed by layer_idx
            layer.self_attn.layer_idx = idx
        model.model.layers = nn.ModuleList(layers)
        model.config.num_hidden_layers = len(layers)
        for key in self.per_layer_config:
            if getattr(model.config, key, None) is not None:
                setattr(model.config, key, [getattr(model.config, key)[i] for i in keep])

    def embed(self, model: nn.Module, input_ids: torch.Tensor):
        hidden = model.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = model.model.rotary_emb(hidden, positions)
        return hidden, (cos, sin)

    def run_block(self, block: nn.Module, hidden: torch.Tensor, context) -> torch.Tensor:
        # attention_mask=None with SDPA means causal attention over the full sequence.
        out = block(hidden, attention_mask=None, position_embeddings=context)
        return out[0] if isinstance(out, tuple) else out

    def attention(self, block: nn.Module) -> AttentionParts:
        attn = block.self_attn
        heads, kv_heads = _heads(attn)
        return AttentionParts(
            q=attn.q_proj,
            k=attn.k_proj,
            q_name="self_attn.q_proj",
            k_name="self_attn.k_proj",
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=attn.head_dim,
            causal=True,
            scale=attn.scaling,
            attn_input=block.input_layernorm,
            rope=_apply_rope if self.uses_rope(block) else None,
        )

    def uses_rope(self, block: nn.Module) -> bool:
        return True


@ADAPTERS.register("smollm3")
class SmolLM3Adapter(LlamaAdapter):
    """SmolLM3: Llama blocks, but some layers (every 4th in the released model) attend without RoPE."""

    family = "smollm3"
    model_types = ("smollm3",)
    per_layer_config = ("layer_types", "no_rope_layers")

    def uses_rope(self, block: nn.Module) -> bool:
        return bool(block.self_attn.use_rope)  # set per layer from config.no_rope_layers
