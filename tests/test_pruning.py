"""Every registered pruning method on tiny in-process models: sparsity, saved zeros, sequential calibration."""

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from conftest import make_tiny_llama
from edgeprune.data import CalibConfig
from edgeprune.models import get_adapter
from edgeprune.pruning import PRUNERS, PruneConfig, make_pruner, prune, prune_model
from edgeprune.pruning.attention import AttentionConfig, optimise_qk_masks
from edgeprune.pruning.engine import LinearResult, Pruner
from edgeprune.pruning.kernels import ColumnSquareNorms
from edgeprune.sparsity import SparsitySpec, check_nm, parse_sparsity

CALIB = CalibConfig(samples=8, seqlen=64)
FAST = {"attention": {"steps": 6, "check_every": 3}}


def _prune(src, out, method, sparsity):
    return prune(str(src), out, PruneConfig(method=method, sparsity=sparsity, calib=CALIB, options=FAST.get(method, {})))


@pytest.mark.parametrize("method", PRUNERS.names())
@pytest.mark.parametrize("sparsity", ["0.5", "2:4", "4:8"])
def test_every_method_on_tiny_llama(tiny_llama_dir, tmp_path, method, sparsity):
    out = tmp_path / "pruned"
    report = _prune(tiny_llama_dir, out, method, sparsity)
    spec = parse_sparsity(sparsity)
    model = AutoModelForCausalLM.from_pretrained(out)  # masked weights really are zero after save and load
    linears = get_adapter(model).prunable_linears(model)
    assert len(linears) == 2 * 7
    for name, linear in linears.items():
        zeros = (linear.weight == 0).float().mean().item()
        assert zeros == pytest.approx(0.5, abs=1e-6), name
        if spec.is_nm:
            assert linear.weight.reshape(-1, spec.m).ne(0).sum(1).le(spec.n).all(), name
        elif method in ("wanda", "attention"):  # per-output-row comparison groups
            assert linear.weight.ne(0).sum(1).eq(linear.in_features // 2).all(), name
    assert model.lm_head.weight.ne(0).all() and model.model.embed_tokens.weight.ne(0).all()
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["method"] == method and meta["sparsity"] == str(spec)
    assert meta["calibration"]["samples"] == 8 and len(meta["layers"]) == 14
    assert len(meta["attention_error"]) == 2 and all(e["error"] >= 0 for e in meta["attention_error"])
    assert report.seconds > 0
    assert (out / "tokenizer.json").exists()


@pytest.mark.parametrize("method", PRUNERS.names())
def test_every_method_on_tiny_bert(tiny_bert_dir, tmp_path, method):
    out = tmp_path / "bert"
    _prune(tiny_bert_dir, out, method, "2:4")
    model = AutoModel.from_pretrained(out)
    reports = check_nm(model, 2, 4)
    assert len(reports) == 12 and all(r.ok and r.sparsity == pytest.approx(0.5) for r in reports)


def test_overrides_keep_layers_dense_or_other_pattern(tiny_llama_dir, tmp_path):
    out = tmp_path / "mixed"
    config = PruneConfig(method="wanda", sparsity="2:4", calib=CALIB, overrides={"*.down_proj": "dense", "model.layers.0.*": "4:8"})
    prune(str(tiny_llama_dir), out, config)
    meta = {l["name"]: l for l in json.loads((out / "edgeprune.json").read_text())["layers"]}
    assert meta["model.layers.1.mlp.down_proj"]["sparsity"] == 0 and meta["model.layers.1.mlp.down_proj"]["pattern"] == "dense"
    assert meta["model.layers.0.mlp.down_proj"]["pattern"] == "4:8"  # later pattern wins
    assert meta["model.layers.0.self_attn.q_proj"]["pattern"] == "4:8"
    assert meta["model.layers.1.self_attn.q_proj"]["pattern"] == "2:4"


class _Spy(Pruner):
    """Records each block's calibration inputs, then prunes by magnitude."""

    name = "spy"

    def __init__(self):
        self.inputs = []

    def prune_block(self, ctx):
        self.inputs.append(ctx.inputs.clone())
        lin = ctx.linears()
        return {n: LinearResult(lin[n].weight.abs() > lin[n].weight.abs().median()) for n in ctx.specs}


def test_sequential_calibration_feeds_pruned_outputs_forward(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3)
    adapter = get_adapter(model)
    ids = torch.randint(0, len(tiny_tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    spy = _Spy()
    prune_model(model, adapter, spy, SparsitySpec(0.5), ids)
    blocks = adapter.blocks(model)
    with torch.no_grad():
        hidden, context = adapter.embed(model, ids)
        assert torch.allclose(spy.inputs[0], hidden)
        for i in (1, 2):
            hidden = adapter.run_block(blocks[i - 1], hidden, context)  # blocks are pruned by now
            assert torch.allclose(spy.inputs[i], hidden, atol=1e-5)
    dense = make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3)
    with torch.no_grad():
        h, ctx = adapter.embed(dense, ids)
        dense_in_1 = adapter.run_block(adapter.blocks(dense)[0], h, ctx)
    assert not torch.allclose(spy.inputs[1], dense_in_1, atol=1e-4)  # i.e. not the dense model's activations


def test_attention_loss_decreases_during_optimisation(tiny_tokenizer):
    # A larger init scale gives peaked attention, so the masks matter.
    model = make_tiny_llama(len(tiny_tokenizer), initializer_range=0.3)
    adapter = get_adapter(model)
    ids = torch.randint(0, len(tiny_tokenizer), (12, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, context = adapter.embed(model, ids)
        parts = adapter.attention(adapter.blocks(model)[0])
        x = parts.attn_input(hidden)
    norms = ColumnSquareNorms(x.shape[-1])
    norms.add(x)
    for spec in (SparsitySpec(0.5), SparsitySpec(0.5, 2, 4)):
        cfg = AttentionConfig(steps=40, lr=0.02, check_every=5, batch=4)
        mq, mk, diag = optimise_qk_masks(x, parts, context, spec, spec, norms.value, cfg, torch.Generator().manual_seed(0))
        # the objective drops on a fixed training batch, with exact binary masks
        assert diag["probe_end"] < 0.8 * diag["probe_start"], diag
        train = diag["train"]
        assert sum(train[-10:]) / 10 < sum(train[:10]) / 10
        # the returned mask is never worse than the Wanda start on the held sequences
        assert diag["best"] <= diag["start"]
        assert mq.shape == parts.q.weight.shape and mk.shape == parts.k.weight.shape
        assert mq.float().mean().item() == pytest.approx(0.5)


def test_make_pruner_rejects_unknown_option():
    from edgeprune.errors import EdgepruneError

    with pytest.raises(EdgepruneError, match="unknown option 'stepz'"):
        make_pruner("attention", {"stepz": 3})
    with pytest.raises(EdgepruneError, match="unknown pruning method"):
        make_pruner("obs", {})
