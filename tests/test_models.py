"""Architecture adapters: the attention an adapter rebuilds for pruning and evaluation equals the model's own,
layer by layer (layers with and without RoPE, q/k/v biases, blocks with heads removed)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_attention_is_the_models, make_tiny_llama, make_tiny_qwen2, make_tiny_smollm3

from edgeprune.models import get_adapter
from edgeprune.structured.layout import remove_units

MAKERS = {"llama": make_tiny_llama, "qwen2": make_tiny_qwen2, "smollm3": make_tiny_smollm3}


@pytest.mark.parametrize("arch", sorted(MAKERS))
def test_adapter_attention_equals_the_models_eager_attention(arch, tiny_tokenizer):
    model = MAKERS[arch](len(tiny_tokenizer), initializer_range=0.2, attn_implementation="eager")
    assert_attention_is_the_models(model, torch.randint(4, len(tiny_tokenizer), (2, 24), generator=torch.Generator().manual_seed(0)))


def test_smollm3_layers_without_rope_are_an_adapter_attribute(tiny_tokenizer):
    model = make_tiny_smollm3(len(tiny_tokenizer), initializer_range=0.2)
    adapter = get_adapter(model)
    assert [adapter.uses_rope(b) for b in adapter.blocks(model)] == [True, False, True, False]
    assert [adapter.attention(b).rope is not None for b in adapter.blocks(model)] == [True, False, True, False]
    llama = make_tiny_llama(len(tiny_tokenizer))
    assert all(get_adapter(llama).uses_rope(b) for b in get_adapter(llama).blocks(llama))

    # removing blocks keeps each remaining block's RoPE setting, in the module and in the config a reload builds from
    adapter.keep_blocks(model, [0, 1, 3])
    assert [adapter.uses_rope(b) for b in adapter.blocks(model)] == [True, False, False]
    assert model.config.no_rope_layers == [1, 0, 0]


def test_adapter_attention_of_blocks_with_heads_removed(tiny_tokenizer):
    """Structured pruning leaves blocks with fewer query heads than the config says: the adapter reads them off the weights."""
    model = make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                            hidden_size=96, initializer_range=0.2, attn_implementation="eager")
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    all_channels = torch.arange(adapter.units(blocks[0]).channels)
    remove_units(blocks[1], adapter, torch.tensor([0, 2, 3, 5]), all_channels)  # 2 of 3 query heads in each KV group
    remove_units(blocks[2], adapter, torch.tensor([1, 4]), all_channels)
    assert [adapter.attention(b).num_heads for b in blocks] == [6, 4, 2]
    assert [adapter.attention(b).num_kv_heads for b in blocks] == [2, 2, 2]
    assert_attention_is_the_models(model, torch.randint(4, len(tiny_tokenizer), (2, 24), generator=torch.Generator().manual_seed(0)))
