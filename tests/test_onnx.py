"""ONNX export: merged decoder graph with KV cache, encoder with pooling, verification against
PyTorch, pruned zeros and N:M kept on the exported weights, and one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from conftest import error_line, make_tiny_smollm3, no_leftovers  # noqa: E402
from edgeprune.cli import app  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.onnx import ExportConfig, export  # noqa: E402
from edgeprune.onnx.session import OrtDecoder, load_session, session  # noqa: E402
from edgeprune.onnx.weights import check_sparsity  # noqa: E402
from edgeprune.sparsity import is_nm  # noqa: E402

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pruned_llama_dir(tmp_path_factory, tiny_llama_lively_dir):
    from edgeprune import CalibConfig, PruneConfig, prune

    out = tmp_path_factory.mktemp("pruned") / "llama-2of4"
    prune(str(tiny_llama_lively_dir), out, PruneConfig(method="wanda", sparsity="2:4", calib=CalibConfig(samples=4, seqlen=32)))
    return out


@pytest.fixture(scope="module")
def pruned_llama_onnx(tmp_path_factory, pruned_llama_dir):
    out = tmp_path_factory.mktemp("pruned-onnx") / "onnx"
    report = export(str(pruned_llama_dir), out)
    return out, report






def _matmul_weights(path):
    """Module name (from the node scope) → ONNX weight array as stored, for MatMuls reading an initializer."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        ".".join(p for p in n.name.split("/")[:-1] if p): inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits
    }


# --- decoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fuse", [True, False])
def test_decoder_exports_one_merged_graph_with_identical_greedy_tokens(fuse, tiny_llama_lively_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "onnx"
    report = export(str(tiny_llama_lively_dir), out, ExportConfig(fuse=fuse))
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]
    sess = session(out / "model.onnx")
    inputs = [i.name for i in sess.get_inputs()]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    if fuse:  # one GroupQueryAttention per layer, with the same inputs as optimum's graph
        assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
        assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops
        assert report.fused.attention == "GroupQueryAttention" and report.fused.nodes_after < report.fused.nodes_before / 3
    else:
        assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"] and "GroupQueryAttention" not in ops
        assert report.fused is None
    assert "past_key_values.1.value" in inputs and [o.name for o in sess.get_outputs()][:2] == ["logits", "present.0.key"]

    # Independent reference: transformers' own greedy generate (no EOS in the way).
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_lively_dir).eval()
    ids = tiny_tokenizer("The quick brown fox jumps over the lazy dog because", return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert OrtDecoder(sess).greedy(ids.numpy(), 32) == expected
    assert len(set(expected)) > 5  # a generation that actually moves

    assert report.verify.tokens_identical and report.verify.tokens_onnx == expected
    assert set(report.verify.max_abs_diff) == {"prefill.logits", "prefill.present", "decode.logits"}
    assert report.verify.worst[1] < 1e-4
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["export"]["verify"]["tokens_identical"] is True and meta["export"]["task"] == "text-generation-with-past"
    assert meta["export"]["files"]["model.onnx"] == (out / "model.onnx").stat().st_size
    assert "pruning" not in meta  # a dense HF folder has no edgeprune.json to merge
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_fused_attention_matches_pytorch_on_padded_batches_and_biased_projections(tiny_tokenizer, tmp_path):
    """Rows padded on the left (as generate() pads) or on the right give PyTorch's logits on every real token, in the
    prompt and in the decode steps after it; q/k/v projections with a bias (Qwen2) fuse too, and the heads per layer
    come from the weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.2)).eval()
    for layer in model.model.layers:  # non-zero biases, so a dropped bias would show
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    src = tmp_path / "qwen2"
    model.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    report = export(str(src), tmp_path / "onnx")
    assert report.fused.attention == "GroupQueryAttention" and report.verify.tokens_identical

    sess = session(tmp_path / "onnx" / "model.onnx")
    names = [i.name for i in sess.get_inputs()]
    layers = sum(n.startswith("past_key_values.") and n.endswith(".key") for n in names)
    ids = torch.randint(4, len(tiny_tokenizer), (2, 12))
    for side in ("right", "left"):
        mask = torch.ones_like(ids)
        if side == "right":
            mask[1, 7:] = 0  # second row: 7 real tokens, then padding
        else:
            mask[1, :9] = 0  # second row: padding, then 3 real tokens
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # as transformers and optimum compute them
        kv = np.zeros((2, model.config.num_key_value_heads, 0, 16), np.float32)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
        feeds |= {f"past_key_values.{i}.{w}": kv for i in range(layers) for w in ("key", "value")}
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        real = mask.bool()
        assert np.abs(out["logits"][real.numpy()] - ref.logits[real].numpy()).max() < 1e-4, side
        # decode steps on top of the padded prompt, each fed the cache the graph returned, as a generate() loop does
        past = ref.past_key_values
        for _ in range(3):
            step = torch.randint(4, len(tiny_tokenizer), (2, 1))
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
            positions = mask.sum(-1, keepdim=True) - 1
            feeds = {"input_ids": step.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
            feeds |= {f"past_key_values.{i}.{w}": out[f"present.{i}.{w}"] for i in range(layers) for w in ("key", "value")}
            out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            with torch.no_grad():
                ref = model(input_ids=step, attention_mask=mask, past_key_values=past, position_ids=positions, use_cache=True)
            past = ref.past_key_values
            assert np.abs(out["logits"] - ref.logits.numpy()).max() < 1e-4, side


def test_packed_int4_graph_equals_unpacked_and_pads_exactly_at_fp32_compute(tiny_llama_dir, tmp_path):
    """The export's RMSNorms are ORT's (Skip)SimplifiedLayerNormalization; q/k/v and gate/up packed into one MatMulNBits
    each compute what the separate nodes compute; and with fp32 compute (accuracy level 0) a left-padded row gives the
    same logits as its prompt alone (int8-activation kernels round a row by its index modulo 4: BENCHMARKS §9)."""
    from edgeprune.onnx import QuantizeConfig, quantize

    src = tmp_path / "onnx"
    report = export(str(tiny_llama_dir), src, ExportConfig(new_tokens=4))
    assert (report.fused.norms, report.fused.skip_norms) == (2 * 2 + 1, 2 * 2)  # every norm; all but the first have a residual
    ops = [n.op_type for n in onnx.load(str(src / "model.onnx")).graph.node]
    assert "Pow" not in ops and "ReduceMean" not in ops and ops.count("SkipSimplifiedLayerNormalization") == 4

    ids = np.random.default_rng(0).integers(4, 100, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # second row: 5 pads, then its 4 tokens
    logits = {}
    for pack in (True, False):
        q = quantize(src, tmp_path / f"pack-{pack}", QuantizeConfig("int4", method="rtn", accuracy_level=0, pack=pack), verify=False)
        assert q.settings["packed_matmuls"] == (2 * 2 if pack else 0) and not q.lost
        sess = session(tmp_path / f"pack-{pack}" / "model.onnx")
        if pack:
            assert sum(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "pack-True" / "model.onnx")).graph.node) == 2 * 4 + 1
        decoder = OrtDecoder(sess)
        logits[pack], _, _ = decoder.step(ids, mask, decoder.empty_past(2))  # positions from the mask
        alone, _, _ = decoder.step(ids[1:, 5:], mask[1:, 5:], decoder.empty_past(1))
        assert np.abs(logits[pack][1, 5:] - alone[0]).max() < 1e-4
    assert np.abs(logits[True] - logits[False]).max() < 1e-4


def test_fused_smollm3_skips_rope_on_its_no_rope_layers(tiny_tokenizer, tmp_path):
    """SmolLM3 leaves RoPE out of some layers: the fused graph rotates q/k only in the others, and matches PyTorch."""
    model = make_tiny_smollm3(len(tiny_tokenizer), initializer_range=0.2)
    src = tmp_path / "smollm3"
    model.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    report = export(str(src), tmp_path / "onnx")
    assert report.fused.attention == "GroupQueryAttention" and report.fused.layers == 4
    rotary = [n.name for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node if n.op_type == "RotaryEmbedding"]
    assert sorted({name.split("/")[2] for name in rotary}) == ["layers.0", "layers.2"] and len(rotary) == 4  # q and k
    assert report.verify.worst[1] < 1e-4 and report.verify.tokens_identical
    assert len(set(report.verify.tokens_torch)) > 3  # a generation that moves, so RoPE on a wrong layer would show


@pytest.mark.parametrize("fuse", [True, False])
def test_optimum_ortmodel_batched_left_padded_generation_matches_unbatched(fuse, tiny_llama_lively_dir, tmp_path, recwarn):
    """What an app does with the folder: optimum's ORTModelForCausalLM loads it (without its 'legacy model' warning about
    a missing position_ids input) and generates for a left-padded batch; every row equals that prompt generated alone."""
    import logging

    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    export(str(tiny_llama_lively_dir), out, ExportConfig(fuse=fuse, verify=False))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optimum").addHandler(handler)
    try:
        model = ORTModelForCausalLM.from_pretrained(out)
    finally:
        logging.getLogger("optimum").removeHandler(handler)
    said = [str(w.message) for w in recwarn] + [r.getMessage() for r in records]
    assert not [m for m in said if "legacy" in m.lower() or "position_ids" in m], said
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    prompts = ["The quick brown fox jumps over the lazy dog and then", "Hello", "Return the value of"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    assert batch.attention_mask[1].sum() < batch.attention_mask.shape[1] / 2  # a row with more padding than text
    generated = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for row, prompt in enumerate(prompts):
        alone = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
        single = model.generate(**alone, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert generated[row, batch.input_ids.shape[1]:].tolist() == single[0, alone.input_ids.shape[1]:].tolist(), prompt


def test_pruned_decoder_keeps_zeros_and_2of4_along_input_dim(pruned_llama_dir, pruned_llama_onnx):
    from transformers import AutoModelForCausalLM

    out, report = pruned_llama_onnx
    assert report.verify.tokens_identical
    model = AutoModelForCausalLM.from_pretrained(pruned_llama_dir)
    weights = _matmul_weights(out / "model.onnx")
    linears = {n: m for n, m in model.named_modules() if n.startswith("model.layers.") and isinstance(m, torch.nn.Linear)}
    assert len(linears) == 14
    for name, linear in linears.items():
        stored = weights[name]  # MatMul weight: [in, out]
        assert stored.shape == (linear.in_features, linear.out_features)
        assert int((stored == 0).sum()) == int((linear.weight == 0).sum()) == linear.weight.numel() // 2
        assert is_nm(torch.from_numpy(stored.T.copy()), 2, 4)  # groups of 4 along the input dim
        assert not is_nm(torch.from_numpy(stored.copy()), 2, 4)  # read along the wrong dim it is not 2:4

    meta = json.loads((out / "edgeprune.json").read_text())
    sp = meta["export"]["sparsity"]
    assert sp["zeros_preserved"] is True and sp["nm_ok"] is True
    assert sp["onnx_zeros"] == sp["torch_zeros"] == sum(l.weight.numel() // 2 for l in linears.values())
    assert all(l["unchanged"] and l["layout"] == "in,out" and l["pattern"] == "2:4" for l in sp["layers"])
    assert meta["pruning"]["method"] == "wanda" and meta["pruning"]["sparsity"] == "2:4"  # source metadata merged
    assert sum(v["zeros"] for v in sp["initializers"].values()) >= sp["onnx_zeros"]


def test_lost_zeros_and_broken_nm_are_errors(pruned_llama_dir, pruned_llama_onnx, tmp_path):
    from edgeprune.models.loading import load_model
    from edgeprune.onnx.workflow import _check
    from edgeprune.onnx.weights import layer_patterns

    out, report = pruned_llama_onnx
    loaded = load_model(str(pruned_llama_dir))
    layers = loaded.adapter.prunable_linears(loaded.model)
    patterns = layer_patterns(json.loads((pruned_llama_dir / "edgeprune.json").read_text()))
    model = onnx.load(str(out / "model.onnx"))
    target = next(n.input[1] for n in model.graph.node if n.name == "/model/layers.0/mlp/up_proj/MatMul")

    def tampered(change):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        t = next(t for t in m.graph.initializer if t.name == target)
        t.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(t)), t.name))
        path = tmp_path / f"{change.__name__}.onnx"
        onnx.save(m, str(path))
        return check_sparsity(path, layers, patterns)

    def fill_zeros(a):
        return np.where(a == 0, np.float32(1e-3), a)

    def shift_rows(a):  # same zeros, groups of 4 misaligned along the input dim
        return np.roll(a, 1, axis=0)

    lost = tampered(fill_zeros)
    assert [l.layer for l in lost.lost] == ["model.layers.0.mlp.up_proj"] and lost.lost[0].onnx_zeros == 0
    report.sparsity = lost
    with pytest.raises(EdgepruneError, match="lost pruned zeros: model.layers.0.mlp.up_proj"):
        _check(report, ExportConfig())

    broken = tampered(shift_rows)
    assert not broken.lost and [l.layer for l in broken.nm_violations] == ["model.layers.0.mlp.up_proj"]
    report.sparsity = broken
    with pytest.raises(EdgepruneError, match="breaks its 2:4 pattern"):
        _check(report, ExportConfig())


def test_large_models_export_in_a_child_process_and_its_failure_is_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    """Above LARGE_MODEL_BYTES optimum runs in a spawned child (its memory goes back when it ends): the graph is the
    same, verified as usual, and a failure in the child reaches the user as one line."""
    import edgeprune.onnx.workflow as workflow

    def not_here(*args, **kwargs):
        raise AssertionError("optimum ran in the exporting process")

    monkeypatch.setattr(workflow, "LARGE_MODEL_BYTES", 0)
    monkeypatch.setattr(workflow, "_run_optimum", not_here)  # the spawned child imports its own, untouched
    report = export(str(tiny_llama_dir), tmp_path / "onnx")
    assert report.verify.tokens_identical and report.fused.attention == "GroupQueryAttention"
    assert report.sparsity is not None and (tmp_path / "onnx" / "model.onnx").is_file()
    with pytest.raises(EdgepruneError) as err:
        workflow._run_optimum_apart(tmp_path / "no-such-folder", tmp_path / "out", "text-generation-with-past", None, True)
    assert str(err.value).startswith("ONNX export failed") and "\n" not in str(err.value)


def test_failed_verification_writes_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    import edgeprune.onnx.verify as verify

    real = verify.verify_decoder

    def off_by_a_lot(*args, **kwargs):
        rep = real(*args, **kwargs)
        rep.max_abs_diff["decode.logits"] = 0.5
        return rep

    monkeypatch.setattr(verify, "verify_decoder", off_by_a_lot)
    with pytest.raises(EdgepruneError, match="'decode.logits' differs from PyTorch by 0.5"):
        export(str(tiny_llama_dir), tmp_path / "out")
    no_leftovers(tmp_path)


# --- encoders ---------------------------------------------------------------------------------


def test_encoder_with_pooling_gives_normalised_embedding(tiny_bert_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModel

    from edgeprune.evaluation import sentence_embeddings

    out = tmp_path / "onnx"
    report = export(str(tiny_bert_dir), out, ExportConfig(pooling=True))
    assert report.verify.embedding_cosine_min > 0.9999
    texts = ["short one", "a noticeably longer sentence so that the batch needs padding on the first"]
    enc = tiny_tokenizer(texts, padding=True, return_tensors="np")
    sess = session(out / "model.onnx")
    feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": np.zeros_like(enc["input_ids"])}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))["sentence_embedding"]
    ref = sentence_embeddings(AutoModel.from_pretrained(tiny_bert_dir).eval(), tiny_tokenizer, texts)
    assert got.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (torch.from_numpy(got) * ref).sum(-1)
    assert float(cos.min()) > 0.9999


def test_encoder_without_pooling_has_hidden_states_only(tiny_bert_dir, tmp_path):
    report = export(str(tiny_bert_dir), tmp_path / "onnx", ExportConfig(verify=False))
    sess = session(tmp_path / "onnx" / "model.onnx")
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state"]
    assert report.verify is None and report.task == "feature-extraction"
    assert json.loads((tmp_path / "onnx" / "edgeprune.json").read_text())["export"]["verify"] is None


# --- quantisation ------------------------------------------------------------------------------


def _nbits(model, initializer):
    """(attributes, B bytes [rows, ...], scales [rows, blocks]) of one linear's MatMulNBits, alone or packed with others."""
    from edgeprune.onnx.quantization import packed_rows

    weight, start, rows = packed_rows(model).get(initializer, (initializer + "_Q4", 0, None))
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == weight)
    attrs = {a.name: a.i for a in node.attribute}
    rows = attrs["N"] if rows is None else rows
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in node.input}
    b = inits[node.input[1]].reshape(attrs["N"], -1)[start:start + rows]
    return attrs | {"N": rows}, b, inits[node.input[2]].reshape(attrs["N"], -1)[start:start + rows]


def _int4_dequantized(model, initializer):
    """[out, in] float weight from a MatMulNBits node (symmetric: zero point 8), unpacked here independently."""
    attrs, packed, scales = _nbits(model, initializer)
    codes = np.empty((attrs["N"], packed.shape[1] * 2), np.int32)
    codes[:, 0::2], codes[:, 1::2] = packed & 0x0F, packed >> 4
    scales = np.repeat(scales, attrs["block_size"], axis=1)
    return ((codes - 8) * scales)[:, : attrs["K"]]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_graph_keeps_pruned_zeros(scheme, pruned_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from edgeprune.onnx import QuantizeConfig

    out = tmp_path / "q"
    report = export(str(pruned_llama_dir), out, ExportConfig(quantize=QuantizeConfig(scheme, block_size=32, symmetric=True)))
    q = report.quantized
    assert (out / f"model_{scheme}.onnx").is_file() and q.bytes < report.files["model.onnx"]
    assert len(q.layers) == 14 and all(l.kept_zeros == l.torch_zeros > 0 and l.nm_ok for l in q.layers)
    assert 0 <= q.quality["greedy_tokens_identical_prefix"] <= 32  # reported, not enforced
    meta = json.loads((out / "edgeprune.json").read_text())["export"]["quantized"]
    assert meta["zeros_preserved"] is True and meta["nm_ok"] is True and meta["layers_not_quantized"] == []

    if scheme == "int4":  # the unpacking the check relies on reproduces the weights to within half a step
        model = AutoModelForCausalLM.from_pretrained(pruned_llama_dir)
        graph = onnx.load(str(out / "model_int4.onnx"))
        w = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
        init = next(l.initializer for l in report.sparsity.layers if l.layer == "model.layers.1.mlp.down_proj")
        deq = _int4_dequantized(graph, init)
        assert deq.shape == w.shape and np.all(deq[w == 0] == 0)
        assert np.abs(deq - w).max() <= np.abs(w).max() / 7


def test_quantized_zero_check_catches_a_moved_zero(pruned_llama_dir, pruned_llama_onnx, tmp_path):
    from edgeprune.models.loading import load_model
    from edgeprune.onnx.quantization import check_quantized, quantize_graph
    from edgeprune.onnx import QuantizeConfig

    out, report = pruned_llama_onnx
    dst = tmp_path / "model_int8.onnx"
    quantize_graph(out / "model.onnx", dst, QuantizeConfig("int8"), external_data=False)
    loaded = load_model(str(pruned_llama_dir))
    layers = loaded.adapter.prunable_linears(loaded.model)
    inits = {l.layer: l.initializer for l in report.sparsity.layers}
    name = inits["model.layers.0.self_attn.q_proj"] + "_quantized"
    model = onnx.load(str(dst))
    t = next(t for t in model.graph.initializer if t.name == name)
    codes = numpy_helper.to_array(t).copy()
    codes[0, 0] = 5 if codes[0, 0] == 0 else codes[0, 0]  # make sure input 0 → output 0 is non-zero...
    codes[1, 0] = codes[2, 0] = codes[3, 0] = 5  # ...and so are its group-mates: 4 of 4 non-zero
    t.CopyFrom(numpy_helper.from_array(codes, name))
    onnx.save(model, str(dst))
    checked = {l.layer: l for l in check_quantized(dst, layers, inits, {k: "2:4" for k in layers}, "int8")}
    bad = checked["model.layers.0.self_attn.q_proj"]
    assert bad.kept_zeros < bad.torch_zeros and bad.nm_ok is False
    assert all(l.kept_zeros == l.torch_zeros for k, l in checked.items() if k != "model.layers.0.self_attn.q_proj")


def test_bad_quantize_option_is_one_line(tiny_bert_dir, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(tmp_path / "out"), "--quantize", "int3"])
    assert result.exit_code == 2 and "unknown quantisation 'int3'" in error_line(result)
    no_leftovers(tmp_path)


# --- CLI and bad input ------------------------------------------------------------------------


def test_cli_export_encoder(tiny_bert_dir, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(tmp_path / "out"), "--pooling"])
    assert result.exit_code == 0, result.output
    assert "verified: max |diff|" in result.stdout and (tmp_path / "out" / "model.onnx").is_file()




@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("not_a_model", "is not a model (no config.json)"),
        ("unsupported", "unsupported architecture 'gpt2'"),
        ("pooling_on_decoder", "--pooling is for sentence encoders"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(case, expected, tmp_path, tiny_llama_dir, gpt2_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    model, extra = {
        "missing": (str(tmp_path / "nope"), []),
        "not_a_model": (str(empty), []),
        "unsupported": (str(gpt2_dir), []),
        "pooling_on_decoder": (str(tiny_llama_dir), ["--pooling"]),
    }[case]
    result = runner.invoke(app, ["export", model, "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert expected in error_line(result)
    no_leftovers(tmp_path)


def test_cli_existing_out_needs_overwrite(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(out), "--no-verify"])
    assert result.exit_code == 2 and "already exists" in error_line(result)
    assert (out / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["export", str(tiny_bert_dir), "--out", str(out), "--no-verify", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and not (out / "keep.txt").exists()


# --- the real bundled models (minutes on a 2-core CPU) ----------------------------------------


@pytest.mark.slow
def test_smollm2_export_is_token_identical(tmp_path):
    report = export("smollm2-135m", tmp_path / "onnx")
    assert report.verify.tokens_identical and len(report.verify.tokens_torch) == 32


@pytest.mark.slow
def test_minilm_export_with_pooling(tmp_path):
    report = export("minilm-l6", tmp_path / "onnx", ExportConfig(pooling=True))
    assert report.verify.embedding_cosine_min > 0.9999


# --- evaluation through ONNX Runtime ------------------------------------------------------------


def test_ort_eval_decoder_perplexity_matches_torch(tiny_llama_dir, tmp_path):
    from edgeprune.evaluation import evaluate

    out = tmp_path / "onnx"
    export(str(tiny_llama_dir), out, ExportConfig(verify=False))
    torch_ppl = evaluate(str(tiny_llama_dir), seqlen=64, max_windows=4, attention=False).perplexity
    result = evaluate(str(out), seqlen=64, max_windows=4)  # an exported folder dispatches to ORT
    assert result.model == str(out / "model.onnx") and result.task == "text-generation" and result.tokens == 256
    assert result.perplexity == pytest.approx(torch_ppl, rel=0.01)

    cli = runner.invoke(app, ["eval", str(out), "--onnx-file", "model.onnx", "--seqlen", "64", "--max-windows", "4"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["perplexity"] == pytest.approx(result.perplexity, rel=1e-6)

    limit = json.loads((out / "config.json").read_text())["max_position_embeddings"]
    cli = runner.invoke(app, ["eval", str(out), "--seqlen", str(limit + 1), "--max-windows", "1"])
    assert cli.exit_code == 2 and f"longer than the model's {limit} positions" in cli.output, cli.output
    assert len(cli.output.strip().splitlines()) <= 2 and "Traceback" not in cli.output


def test_ort_eval_encoder_cosine_to_dense_reference(tiny_bert_dir, tmp_path):
    from edgeprune.evaluation import evaluate

    for pooling in (True, False):  # pooled in the graph, or pooled by the evaluator
        out = tmp_path / f"onnx-{pooling}"
        export(str(tiny_bert_dir), out, ExportConfig(pooling=pooling, verify=False))
        result = evaluate(str(out))
        assert result.task == "feature-extraction" and result.sentences > 10
        assert result.reference == str(tiny_bert_dir)  # the export's source, from edgeprune.json
        assert result.embedding_cosine > 0.9999


def test_ort_eval_of_a_truncated_graph_is_one_line(tiny_llama_dir, tmp_path):
    out = tmp_path / "onnx"
    export(str(tiny_llama_dir), out, ExportConfig(verify=False))
    data = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(data[: len(data) // 3])
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 2
    line = error_line(result)
    assert "cannot load ONNX model" in line and "model.onnx" in line and "truncated or corrupt" in line

    result = runner.invoke(app, ["eval", str(out), "--onnx-file", "model_int4.onnx"])
    assert result.exit_code == 2 and "not found" in error_line(result)


# --- int4 token embedding and tied LM head --------------------------------------------------------


def test_int4_rows_exact_codes_on_a_hand_made_row():
    from edgeprune.onnx.quantization import quantize_rows

    row = np.tile(np.array([-8, -4, 0, 2, 7, 0, 1, -1], np.float32), 4)[None] * 0.5  # largest magnitude -4 → scale 0.5
    packed, scales = quantize_rows(row, 32, 4)
    assert packed.shape == (1, 1, 16) and scales.tolist() == [[0.5]]
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(-1)
    assert codes[:8].tolist() == [0, 4, 8, 10, 15, 8, 9, 7]  # value / scale + 8; zeros are code 8
    assert np.array_equal((codes.astype(np.float32) - 8) * 0.5, row[0])
    assert quantize_rows(np.zeros((2, 32), np.float32), 32, 4)[1].tolist() == [[0.0], [0.0]]  # all-zero block: scale 0, codes 8


@pytest.mark.parametrize("bits", [4, 8])
def test_a_large_table_is_quantised_in_row_chunks_with_the_same_codes(bits):
    """Tables over ~64 MB (a 1B model's embedding is 1 GB) are quantised a chunk of rows at a time, to bound the
    temporaries; rows are independent, so the codes equal those of the table quantised in two smaller pieces."""
    from edgeprune.onnx.quantization import quantize_rows

    table = np.random.default_rng(0).standard_normal((70_000, 256)).astype(np.float32)  # 72 MB: more than one chunk
    table[::3, ::5] = 0
    packed, scales = quantize_rows(table, 32, bits)
    halves = [quantize_rows(table[:35_000], 32, bits), quantize_rows(table[35_000:], 32, bits)]
    assert np.array_equal(packed, np.concatenate([h[0] for h in halves])) and np.array_equal(scales, np.concatenate([h[1] for h in halves]))
    assert packed.shape[:2] == (70_000, 8)


@pytest.mark.parametrize("bits,method", [(4, "rtn"), (8, "gptq"), (4, "gptq")])
def test_int4_with_head_quantised_keeps_zeros_shares_one_table_and_runs(bits, method, pruned_llama_dir, pruned_llama_onnx, tmp_path):
    from edgeprune.onnx import QuantizeConfig
    from edgeprune.onnx.quantization import quantize_graph

    out = tmp_path / "q"
    report = export(str(pruned_llama_dir), out, ExportConfig(quantize=QuantizeConfig("int4", head=True, head_bits=bits, method=method)))
    q = report.quantized
    assert all(l.kept_zeros == l.torch_zeros > 0 and l.nm_ok for l in q.layers)
    assert q.settings["embedding"]["tied_heads"] == 1 and "Gather" in q.settings["ops"]

    graph = onnx.load(str(out / "model_int4.onnx")).graph
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head"))
    assert gather.input[0] == head.input[1]  # one table for both (GPTQ's head codes when calibrated)...
    scales_reshape = next(n for n in graph.node if n.output[0] == gather.input[2])
    assert scales_reshape.op_type == "Reshape" and scales_reshape.input[0] == head.input[2]  # ...and one set of scales
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert "model.embed_tokens.weight" not in inits and not any(n.op_type == "Transpose" and n.input[0] == "model.embed_tokens.weight"
                                                                 for n in graph.node)
    old = tmp_path / "model_int4_fp32head.onnx"
    quantize_graph(pruned_llama_onnx[0] / "model.onnx", old, QuantizeConfig("int4", head=False), external_data=False)
    assert q.bytes < old.stat().st_size

    # The table dequantises to within one step of the fp32 embedding (half a step, except values clipped to the
    # top code on the side opposite the block's extreme), and the graph runs and decodes.
    from transformers import AutoModelForCausalLM

    emb = AutoModelForCausalLM.from_pretrained(pruned_llama_dir).model.embed_tokens.weight.detach().numpy()
    packed, scales = inits[gather.input[0]], inits[head.input[2]].reshape(emb.shape[0], -1)
    assert {a.name: a.i for a in head.attribute}["bits"] == bits
    codes = np.stack([packed & 0x0F, packed >> 4], -1) if bits == 4 else packed
    codes = codes.reshape(emb.shape).astype(np.float32)
    deq = ((codes - (1 << (bits - 1))).reshape(emb.shape[0], -1, 32) * scales[..., None]).reshape(emb.shape)
    step = np.repeat(np.abs(scales), 32, axis=1)
    if method == "rtn" or bits == 8:  # round to nearest: within half a step; GPTQ's codes trade that for the head's output
        assert np.all(np.abs(deq - emb) <= step + 1e-7) and np.mean(np.abs(deq - emb) <= step / 2 + 1e-7) > 0.99
    sess = session(out / "model_int4.onnx")
    ids = np.array([[5, 17, 33, 90, 120, 7]], np.int64)
    decoder = OrtDecoder(sess)
    logits, _, outs = decoder.step(ids, np.ones_like(ids), decoder.empty_past(1))
    assert np.isfinite(logits).all() and len(decoder.greedy(ids, 8)) == 8


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_untied_head_quantises_with_no_unused_initialisers(scheme, tiny_tokenizer, tmp_path):
    """An untied model (as every >2 GB export is, optimum's tied-weight dedup being off there): the embedding lookup
    gets its block table, the head its own quantised MatMul, and nothing is left in the file that no node reads."""
    from conftest import make_tiny_llama

    from edgeprune.onnx import QuantizeConfig

    src = tmp_path / "untied"
    make_tiny_llama(len(tiny_tokenizer), tie_word_embeddings=False, initializer_range=0.2).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    report = export(str(src), tmp_path / "onnx", ExportConfig(quantize=QuantizeConfig(scheme, method="rtn")))
    assert report.quantized.settings["embedding"]["tied_heads"] == 0
    graph = onnx.load(str(tmp_path / "onnx" / f"model_{scheme}.onnx")).graph
    read = {i for n in graph.node for i in n.input}
    assert [t.name for t in graph.initializer if t.name not in read] == []
    assert any(n.op_type == "GatherBlockQuantized" for n in graph.node)
    assert np.isfinite(report.quantized.quality["max_abs_diff"]["decode.logits"])  # it ran, and was compared with PyTorch


# --- mobile format ------------------------------------------------------------------------------


def test_ort_format_files_load_and_run(tiny_llama_dir, tmp_path):
    from edgeprune.onnx import QuantizeConfig

    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", str(tiny_llama_dir), "--out", str(out), "--no-verify", "--quantize", "int4", "--ort-format"])
    assert result.exit_code == 0, result.output
    assert "ORT format: model.ort, model_int4.ort" in result.stdout
    config = (out / "required_operators.config").read_text()
    assert "# - model_int4.ort" in config and str(tmp_path) not in config
    ms_ops = next(l for l in config.splitlines() if l.startswith("com.microsoft;1;")).split(";")[2].split(",")
    assert {"MatMulNBits", "GatherBlockQuantized"} <= set(ms_ops)
    files = json.loads((out / "edgeprune.json").read_text())["export"]["files"]
    assert {"model.ort", "model_int4.ort", "required_operators.config"} <= set(files)

    ids = np.array([[5, 17, 33, 90, 120, 7]], np.int64)
    for name in ("model", "model_int4"):
        ref, ort_ = OrtDecoder(session(out / f"{name}.onnx")), OrtDecoder(session(out / f"{name}.ort"))
        a, _, _ = ref.step(ids, np.ones_like(ids), ref.empty_past(1))
        b, _, _ = ort_.step(ids, np.ones_like(ids), ort_.empty_past(1))
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert QuantizeConfig("int4").head is True  # the default the CLI run above used


def _logit_error(folder: Path, reference, ids: np.ndarray) -> float:
    decoder = OrtDecoder(load_session(folder / "model.onnx"))
    logits, _, _ = decoder.step(ids, np.ones_like(ids), decoder.empty_past(1))
    with torch.no_grad():
        want = reference(torch.from_numpy(ids)).logits.numpy()
    return float(np.mean((logits - want) ** 2))


def test_quantize_folder_gptq_keeps_zeros_and_beats_round_to_nearest(tiny_llama_dir, tmp_path):
    """On a model at the usual init scale (the lively fixture's large random weights make any weight change
    chaotic downstream, which no layer-wise objective can address)."""
    from transformers import AutoModelForCausalLM

    from edgeprune import CalibConfig, PruneConfig, prune, quantize
    from edgeprune.models.loading import load_model
    from edgeprune.onnx import QuantizeConfig
    from edgeprune.onnx.quantization import calibrate_int4

    pruned_llama_dir = tmp_path / "pruned"
    prune(str(tiny_llama_dir), pruned_llama_dir, PruneConfig(method="wanda", sparsity="2:4", calib=CalibConfig(samples=4, seqlen=32)))
    src = tmp_path / "onnx"
    export_report = export(str(pruned_llama_dir), src)
    calib = CalibConfig(samples=8, seqlen=64)
    reports = {}
    for method in ("gptq", "rtn"):  # fp32 head, fp32 compute, all 4-bit: compare the linears' codes only
        config = QuantizeConfig("int4", method=method, calib=calib, head=False, accuracy_level=0, eight_bit_budget=0)
        reports[method] = quantize(src, tmp_path / method, config)
        assert not reports[method].lost and all(l.kept_zeros == l.torch_zeros > 0 for l in reports[method].layers)
        meta = json.loads((tmp_path / method / "edgeprune.json").read_text())["export"]["quantized"]
        assert meta["file"] == "model.onnx" and meta["settings"]["method"] == method
    assert json.loads((tmp_path / "gptq" / "edgeprune.json").read_text())["export"]["quantized"]["settings"]["calibrated_layers"] == 14
    assert (tmp_path / "gptq" / "tokenizer.json").is_file()  # carried over

    # the graph holds exactly the calibrated codes
    computed = calibrate_int4(load_model(str(pruned_llama_dir), device="cpu"), QuantizeConfig("int4", calib=calib, eight_bit_budget=0)).layers
    init = next(l.initializer for l in export_report.sparsity.layers if l.layer == "model.layers.1.mlp.down_proj")
    packed, scales, bits = computed["model.layers.1.mlp.down_proj"]
    graph = onnx.load(str(tmp_path / "gptq" / "model.onnx"))
    assert bits == 4 and np.array_equal(_nbits(graph, init)[1].reshape(packed.shape), packed)

    # with an 8-bit budget the layers with the largest GPTQ error move to 8 bits, zeros still exact
    mixed = quantize(src, tmp_path / "mixed", QuantizeConfig("int4", calib=calib, eight_bit_budget=0.2))
    eight = json.loads((tmp_path / "mixed" / "edgeprune.json").read_text())["export"]["quantized"]["settings"]["eight_bit_layers"]
    assert eight and not mixed.lost and all(l.kept_zeros == l.torch_zeros > 0 for l in mixed.layers)
    init8 = next(l.initializer for l in export_report.sparsity.layers if l.layer == eight[0])
    attrs, b8, _ = _nbits(onnx.load(str(tmp_path / "mixed" / "model.onnx")), init8)
    assert attrs["bits"] == 8 and b8.size == attrs["N"] * attrs["K"]  # one byte per weight

    # and reproduces the PyTorch model's logits better than round-to-nearest on unseen text
    from transformers import AutoTokenizer

    from edgeprune.data import eval_windows, load_text

    reference = AutoModelForCausalLM.from_pretrained(pruned_llama_dir).eval()
    ids = eval_windows(AutoTokenizer.from_pretrained(pruned_llama_dir), load_text("pydoc", "eval"), 64, 1).numpy()
    assert _logit_error(tmp_path / "gptq", reference, ids) < _logit_error(tmp_path / "rtn", reference, ids)


def test_quantize_folder_bad_input(pruned_llama_dir, pruned_llama_onnx, tmp_path):
    from edgeprune.cli import app

    src, _ = pruned_llama_onnx
    cases = [
        ([str(pruned_llama_dir)], "has no model.onnx"),
        ([str(src), "--scheme", "int3"], "unknown quantisation 'int3'"),
        ([str(src), "--method", "awq"], "unknown int4 method 'awq'"),
        ([str(src), "--head-bits", "3"], "head bits 3 is not 4 or 8"),
        ([str(src), "--accuracy-level", "0", "--head-bits", "8"], "8-bit layers at int4 accuracy level 0"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["quantize", *args, "--out", str(tmp_path / "q")])
        assert result.exit_code == 2 and needle in error_line(result), result.output
        assert not (tmp_path / "q").exists()
    ok = runner.invoke(app, ["quantize", str(src), "--out", str(tmp_path / "q"), "--method", "rtn", "--no-verify"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, ["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "q2")])
    assert again.exit_code == 2 and "is already quantised (int4)" in error_line(again)


def test_external_data_graphs_quantize_evaluate_and_name_a_missing_or_cut_data_file(tiny_llama_dir, tmp_path):
    """Graphs over 2 GB keep their weights in model.onnx_data (as optimum writes them): every tool reads them,
    and a missing or truncated data file is a one-line error naming it."""
    import onnx

    import edgeprune
    from edgeprune.errors import EdgepruneError

    src = tmp_path / "onnx"
    edgeprune.export(str(tiny_llama_dir), src, edgeprune.ExportConfig(verify=False))
    model = onnx.load(str(src / "model.onnx"))
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    assert (src / "model.onnx").stat().st_size < (src / "model.onnx_data").stat().st_size
    dense = edgeprune.evaluate(str(src), seqlen=32, max_windows=2).perplexity
    quantized = tmp_path / "int8"
    edgeprune.quantize(str(src), quantized, edgeprune.QuantizeConfig(scheme="int8"))
    assert edgeprune.evaluate(str(quantized), seqlen=32, max_windows=2).perplexity == pytest.approx(dense, rel=0.05)

    data = (src / "model.onnx_data").read_bytes()
    (src / "model.onnx_data").write_bytes(data[: len(data) // 2])
    calls = [lambda: edgeprune.evaluate(str(src), seqlen=32, max_windows=2),
             lambda: edgeprune.quantize(str(src), tmp_path / "q", edgeprune.QuantizeConfig(scheme="int8")),
             lambda: edgeprune.profile([str(src)], "this-host", out=tmp_path / "p")]
    for call in calls:
        with pytest.raises(EdgepruneError, match=r"model\.onnx_data' is truncated"):
            call()
    (src / "model.onnx_data").unlink()
    for call in calls:
        with pytest.raises(EdgepruneError, match="needs external data 'model.onnx_data', which is missing"):
            call()
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


def test_int4_of_an_external_data_graph_equals_int4_of_the_same_graph_inline(tiny_llama_dir, tmp_path):
    """The int4 rewrite reads each MatMul weight from the external data file only when it quantises it: the codes,
    scales and graph are exactly those of the same graph with its weights inline."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import edgeprune

    inline = tmp_path / "inline"
    edgeprune.export(str(tiny_llama_dir), inline, edgeprune.ExportConfig(verify=False))
    external = tmp_path / "external"
    shutil.copytree(inline, external)
    model = onnx.load(str(external / "model.onnx"))
    onnx.save(model, str(external / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    assert (external / "model.onnx").stat().st_size < (external / "model.onnx_data").stat().st_size
    config = edgeprune.QuantizeConfig(scheme="int4", method="rtn")
    graphs = {}
    for name, src in (("inline", inline), ("external", external)):
        edgeprune.quantize(str(src), tmp_path / f"q-{name}", config)
        graphs[name] = onnx.load(str(tmp_path / f"q-{name}" / "model.onnx"))
    a, b = graphs["inline"].graph, graphs["external"].graph
    assert [(n.op_type, list(n.input)) for n in a.node] == [(n.op_type, list(n.input)) for n in b.node]
    assert sum(n.op_type == "MatMulNBits" for n in b.node) > 0
    inits = {t.name: numpy_helper.to_array(t) for t in a.initializer}
    assert {t.name for t in b.initializer} == set(inits)
    for t in b.initializer:
        assert np.array_equal(numpy_helper.to_array(t), inits[t.name]), t.name


def test_large_decoder_int4_checks_against_the_checkpoint_block_by_block(tiny_llama_dir, tmp_path, monkeypatch):
    """A decoder graph in external data above LARGE_MODEL_BYTES, quantised to int4 without GPTQ: the PyTorch side is read
    from the safetensors block by block, only once the graph is written; its zero checks and quality figures equal those
    of the whole model (the greedy prefix teacher-forced, the prefill logits the same pass)."""
    import onnx

    import edgeprune
    import edgeprune.models.loading as loading
    import edgeprune.onnx.quantization as quantization
    import edgeprune.onnx.workflow as workflow
    from edgeprune.onnx.reference import StreamedReference, WholeReference

    src = tmp_path / "onnx"
    pruned = tmp_path / "pruned"
    edgeprune.prune(str(tiny_llama_dir), pruned, edgeprune.PruneConfig(method="wanda", sparsity="2:4", calib=edgeprune.CalibConfig(samples=4, seqlen=32)))
    edgeprune.export(str(pruned), src, edgeprune.ExportConfig(verify=False))
    model = onnx.load(str(src / "model.onnx"))
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    events = []
    real_streamed, real_graph = loading.load_streamed, quantization.quantize_graph
    monkeypatch.setattr(loading, "load_streamed", lambda *a, **kw: events.append("load") or real_streamed(*a, **kw))
    monkeypatch.setattr(loading, "load_model", lambda *a, **kw: pytest.fail("the whole model was loaded"))
    monkeypatch.setattr(quantization, "quantize_graph", lambda *a, **kw: events.append("graph") or real_graph(*a, **kw))
    monkeypatch.setattr(workflow, "LARGE_MODEL_BYTES", 0)
    report = edgeprune.quantize(str(src), tmp_path / "int4", edgeprune.QuantizeConfig(scheme="int4", method="rtn"))
    assert events == ["graph", "load"] and "block by block" in report.settings["reference"]
    assert report.to_dict()["zeros_preserved"] and report.to_dict()["torch_zeros"] > 0
    monkeypatch.undo()

    graph = tmp_path / "int4" / "model.onnx"
    whole = WholeReference(loading.load_model(str(pruned)))
    streamed = StreamedReference(*loading.load_streamed(str(pruned)))
    a, b = whole.quality(graph, 16, 1e-4, False), streamed.quality(graph, 16, 1e-4, False)
    assert a["tokens_onnx"] == b["tokens_onnx"] and a["greedy_tokens_identical_prefix"] == b["greedy_tokens_identical_prefix"]
    assert b["max_abs_diff"]["prefill.logits"] == pytest.approx(a["max_abs_diff"]["prefill.logits"], rel=1e-3, abs=1e-5)
    assert set(streamed.linears()) == set(whole.linears())
    for name, linear in whole.linears().items():
        assert torch.equal(streamed.linears()[name].weight, linear.weight.detach())
    ids = whole.loaded.tokenizer("a longer prompt for the teacher-forced pass", return_tensors="pt")["input_ids"]
    assert torch.allclose(streamed.logits(ids), whole.loaded.model(input_ids=ids).logits, atol=1e-5)


def test_large_decoder_gptq_streams_block_by_block_with_the_same_codes(tiny_llama_dir, tmp_path, monkeypatch):
    """GPTQ int4 of a decoder above LARGE_MODEL_BYTES: the model is never loaded whole (each block is read from the
    safetensors for its turn, the tied head's table at the end), and every initializer of the int4 graph equals the
    one the whole-model calibration writes; the head's GPTQ, run a slice of rows at a time, gives the same codes."""
    import onnx
    from onnx import numpy_helper

    import edgeprune
    import edgeprune.models.loading as loading
    import edgeprune.onnx.graph as graph
    import edgeprune.onnx.quantization as quantization
    import edgeprune.onnx.workflow as workflow

    src, pruned = tmp_path / "onnx", tmp_path / "pruned"
    edgeprune.prune(str(tiny_llama_dir), pruned, edgeprune.PruneConfig(method="wanda", sparsity="2:4", calib=edgeprune.CalibConfig(samples=4, seqlen=32)))
    edgeprune.export(str(pruned), src, edgeprune.ExportConfig(verify=False))
    config = edgeprune.QuantizeConfig(scheme="int4", method="gptq", calib=edgeprune.CalibConfig(samples=4, seqlen=32))
    whole = edgeprune.quantize(str(src), tmp_path / "whole", config)
    monkeypatch.setattr(loading, "load_model", lambda *a, **kw: pytest.fail("the whole model was loaded"))
    monkeypatch.setattr(workflow, "LARGE_MODEL_BYTES", 0)
    slices, read = [], []
    real_gptq, real_copy = quantization.gptq_rows, graph.loaded_copy

    def small_slices(table, hessian, cfg):
        slices.append((table.shape[0], isinstance(table, torch.Tensor)))
        return real_gptq(table, hessian, cfg)

    monkeypatch.setattr(quantization, "gptq_rows", small_slices)
    monkeypatch.setattr(quantization, "GPTQ_ROWS_BYTES", 7 * 64 * 4)  # 7 rows of the 64-wide head at a time
    monkeypatch.setattr(graph, "loaded_copy", lambda tensor, base: read.append(tensor.name) or real_copy(tensor, base))
    streamed = edgeprune.quantize(str(src), tmp_path / "streamed", config)
    assert slices == [(json.loads((pruned / "config.json").read_text())["vocab_size"], False)]  # the head table: read a slice at a time, never whole
    floats = {l["initializer"] for l in json.loads((src / "edgeprune.json").read_text())["export"]["sparsity"]["layers"]}
    assert floats and not floats & set(read)  # every MatMul had calibrated codes: no float weight was read to round it
    assert "block by block" in streamed.settings["reference"]
    assert streamed.settings["method"] == whole.settings["method"] == "gptq"
    assert streamed.settings["calibrated_layers"] == whole.settings["calibrated_layers"] > 0
    assert streamed.settings["eight_bit_layers"] == whole.settings["eight_bit_layers"]
    assert streamed.to_dict()["zeros_preserved"] and streamed.to_dict()["torch_zeros"] == whole.to_dict()["torch_zeros"] > 0
    a, b = (onnx.load(str(tmp_path / d / "model.onnx")).graph for d in ("whole", "streamed"))
    inits = {t.name: numpy_helper.to_array(t) for t in a.initializer}
    assert {t.name for t in b.initializer} == set(inits)
    for t in b.initializer:
        assert np.array_equal(numpy_helper.to_array(t), inits[t.name]), t.name


def test_gptq_calibration_batches_follow_the_block_width(tiny_llama_dir):
    """All sequences in one batch while the widest activation is small; a wide block takes fewer per batch."""
    import edgeprune.onnx.quantization as quantization
    from edgeprune.models.loading import load_model

    loaded = load_model(str(tiny_llama_dir))
    ids = torch.zeros(32, 512, dtype=torch.long)
    assert quantization.calibration_rows(loaded.adapter, loaded.model, ids) == 32
    width = max(l.out_features for l in loaded.adapter.block_linears(loaded.adapter.blocks(loaded.model)[0]).values())
    per_row = 4 * width * 512
    old = quantization.CALIBRATION_ACTIVATION_BYTES
    try:
        quantization.CALIBRATION_ACTIVATION_BYTES = 8 * per_row + 1
        assert quantization.calibration_rows(loaded.adapter, loaded.model, ids) == 8
        quantization.CALIBRATION_ACTIVATION_BYTES = 1
        assert quantization.calibration_rows(loaded.adapter, loaded.model, ids) == 1
    finally:
        quantization.CALIBRATION_ACTIVATION_BYTES = old
