"""Architecture adapters: the attention an adapter rebuilds for pruning and evaluation equals the model's own,
layer by layer (layers with and without RoPE, q/k/v biases, blocks with heads removed)."""

from __future__ import annotations

import os

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


# --- GGUF files: converted once to a cached folder ----------------------------------------------------


def write_tiny_llama_gguf(path, tokenizer) -> None:
    """A tiny Llama as a GGUF file (f32 tensors, the tokenizer's BPE vocabulary as a "gpt2" model), as llama.cpp writes one."""
    import json

    import gguf
    import numpy as np

    model = make_tiny_llama(len(tokenizer))
    cfg = model.config
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(vocab["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", model.model.embed_tokens.weight.detach().numpy().astype(np.float32))
    w.add_tensor("output_norm.weight", model.model.norm.weight.detach().numpy().astype(np.float32))
    for i, layer in enumerate(model.model.layers):
        for name, short in names.items():
            w.add_tensor(f"blk.{i}.{short}.weight", layer.get_submodule(name).weight.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_loads_from_a_cached_conversion_with_the_same_weights_and_tokenizer(tiny_tokenizer, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeprune.data import pydoc_text
    from edgeprune.models.loading import GGUF_CACHE, load_model

    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny_tokenizer)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")

    first = load_model(tmp_path / "tiny.gguf")
    folders = list((tmp_path / "cache" / GGUF_CACHE).iterdir())
    assert len(folders) == 1 and (folders[0] / "config.json").is_file()  # converted once, no temporary folder left
    stamp = (folders[0] / "model.safetensors.index.json").stat().st_mtime_ns
    second = load_model(tmp_path / "tiny.gguf")
    assert (folders[0] / "model.safetensors.index.json").stat().st_mtime_ns == stamp  # read, not converted again

    for loaded in (first, second):
        assert (loaded.path, loaded.gguf_file) == (tmp_path, "tiny.gguf")  # provenance is the GGUF, not the cache
        state = loaded.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in direct.state_dict().items())
        text = pydoc_text("eval")[:20_000]
        assert loaded.tokenizer(text)["input_ids"] == direct_tok(text)["input_ids"]
        assert loaded.tokenizer.special_tokens_map == direct_tok.special_tokens_map
    ids = torch.tensor([direct_tok(text[:400])["input_ids"]])
    torch.testing.assert_close(second.model(ids).logits, direct(ids).logits, rtol=0, atol=0)

    # A changed file is a different cache entry; a cache that cannot be written falls back to reading the GGUF itself.
    write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny_tokenizer)
    os.utime(tmp_path / "tiny.gguf", ns=(stamp + 10**9, stamp + 10**9))
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "not-a-folder" / "cache"))
    third = load_model(tmp_path / "tiny.gguf")
    assert all(torch.equal(third.model.state_dict()[k], v) for k, v in direct.state_dict().items())
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    load_model(tmp_path / "tiny.gguf")
    assert len(list((tmp_path / "cache" / GGUF_CACHE).iterdir())) == 2


def test_read_inputs_stops_at_the_last_input_it_needs(tiny_tokenizer):
    """The calibration passes read linears' inputs without running the rest of the block (for o_proj: no MLP)."""
    model = make_tiny_llama(len(tiny_tokenizer))
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    hidden, context = adapter.embed(model, torch.randint(0, len(tiny_tokenizer), (2, 16)))
    ran: list[str] = []
    for name, linear in adapter.block_linears(block).items():
        linear.register_forward_hook(lambda *_a, name=name: ran.append(name))
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        adapter.read_inputs(block, hidden, context, {"self_attn.o_proj": lambda x: got.setdefault("o", x)})
    assert ran == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]  # o_proj and the MLP never ran
    with torch.no_grad():
        reference = {}
        hook = block.self_attn.o_proj.register_forward_pre_hook(lambda _m, a: reference.setdefault("o", a[0]))
        adapter.run_block(block, hidden, context)
        hook.remove()
    assert torch.equal(got["o"], reference["o"])

    class Reversed(type(adapter)):  # stages listed against the forward order: refused, never a silent short read
        def stages(self, block):
            return list(reversed(super().stages(block)))

    with pytest.raises(RuntimeError, match="stages"):
        with torch.no_grad():
            Reversed().read_inputs(block, hidden, context, {"self_attn.q_proj": lambda x: None, "mlp.down_proj": lambda x: None})
