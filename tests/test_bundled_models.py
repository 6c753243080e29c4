"""Slow tests on the real bundled models (run with `make test-slow`)."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_loads_as_llama_with_gqa_and_rope():
    from edgeprune.models.loading import load_model

    lm = load_model("smollm2-135m")
    cfg = lm.model.config
    assert lm.adapter.family == "llama" and cfg.num_hidden_layers == 30
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    parts = lm.adapter.attention(lm.adapter.blocks(lm.model)[0])
    assert parts.rope is not None and parts.causal and parts.head_dim == 64
    ids = lm.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert torch.isfinite(logits).all()


def test_smollm2_prune_2of4_saves_loadable_nm_model(tmp_path):
    from transformers import AutoModelForCausalLM

    import edgeprune
    from edgeprune.data import CalibConfig

    out = tmp_path / "smol"
    edgeprune.prune("smollm2-135m", out, edgeprune.PruneConfig(method="wanda", sparsity="2:4", calib=CalibConfig(samples=4, seqlen=128)))
    model = AutoModelForCausalLM.from_pretrained(out)
    reports = edgeprune.check_nm(model, 2, 4)
    assert len(reports) == 30 * 7 and all(r.ok for r in reports)
    meta = json.loads((out / "edgeprune.json").read_text())
    # the dequantised Q4_1 weights already hold a few exact zeros, so slightly over 50%
    assert 0.5 <= meta["overall_sparsity"] < 0.5001 and len(meta["attention_error"]) == 30


def test_minilm_prune_keeps_embeddings_close(tmp_path):
    import edgeprune
    from edgeprune.data import CalibConfig

    out = tmp_path / "minilm"
    edgeprune.prune("minilm-l6", out, edgeprune.PruneConfig(method="sparsegpt", sparsity="0.5", calib=CalibConfig(samples=16, seqlen=128)))
    result = edgeprune.evaluate(str(out))
    assert result.embedding_cosine > 0.8
    assert (out / "modules.json").exists() and (out / "1_Pooling" / "config.json").exists()


def test_minilm_streamed_prune_equals_the_whole_model_prune(tmp_path):
    """The real bundled encoder (one old-format safetensors file with a stale position_ids buffer), pruned block by
    block, gives the tensors of the whole-model prune, bit for bit, and no stale extras."""
    from safetensors.torch import load_file

    from edgeprune.data import CalibConfig
    from edgeprune.pruning import PruneConfig, prune

    for stream in ("on", "off"):
        prune("minilm-l6", tmp_path / stream, PruneConfig(method="wanda", sparsity="2:4", calib=CalibConfig("pydoc", 8, 128), stream=stream))
    on, off = ({k: v for f in sorted((tmp_path / s).glob("*.safetensors")) for k, v in load_file(f).items()} for s in ("on", "off"))
    assert set(on) == set(off)
    assert all(torch.equal(on[k], off[k]) for k in on)


def test_smollm2_gguf_converts_tensor_by_tensor_to_what_transformers_loads(tmp_path):
    """The GGUF cache conversion de-quantises one tensor at a time into per-block shards: every tensor and the config
    equal transformers' own whole-file GGUF load (q/k un-permuted alike, the tied head included)."""
    from transformers import AutoModelForCausalLM

    from edgeprune.models.loading import _convert_gguf, resolve_spec

    _, path, gguf = resolve_spec("smollm2-135m")
    _convert_gguf(path / gguf, AutoModelForCausalLM, tmp_path / "streamed")
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 30  # one shard per block, and the stem tensors
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")
    theirs = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=gguf, dtype=torch.float32)
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    theirs.save_pretrained(tmp_path / "whole")
    assert json.loads((tmp_path / "streamed" / "config.json").read_text()) == json.loads((tmp_path / "whole" / "config.json").read_text())
