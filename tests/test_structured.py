"""Structured pruning: exact scores on hand-made tensors, removal == masking, GQA constraints, budgets,
the search, reformation lowering the block error, reload with plain transformers, ONNX export, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import (assert_attention_is_the_models, error_line, make_tiny_bert, make_tiny_llama, make_tiny_qwen2,
                      make_tiny_smollm3, no_leftovers)
from edgeprune.cli import app
from edgeprune.data import CalibConfig
from edgeprune.errors import EdgepruneError
from edgeprune.models import get_adapter
from edgeprune.models.base import Units
from edgeprune.structured import StructuredConfig, masked, spaces_and_cost, structured
from edgeprune.structured.layout import LAYOUT_KEY, block_params, check_heads, remove_units, save_layout_folder
from edgeprune.structured.reform import ridge_refit
from edgeprune.structured.scores import SCORES, BlockStats
from edgeprune.structured.search import ParamCost, Space, dense_arch, evolve, greedy_arch, kept_units, uniform_arch
from edgeprune.structured.scores import UnitScores

runner = CliRunner()
TINY = dict(calib=CalibConfig(samples=4, seqlen=32), search_samples=2, search_seqlen=32, population=4, generations=2)


@pytest.fixture(scope="module")
def gqa_llama_dir(tmp_path_factory, tiny_tokenizer):
    """6 query heads in 2 KV groups of 3, so a search has real choices."""
    path = tmp_path_factory.mktemp("gqa-llama")
    make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=96,
                    intermediate_size=256, initializer_range=0.2).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _units(**kw) -> Units:
    base = dict(head_rows=("q",), head_cols="o", num_heads=2, num_kv_heads=1, head_dim=2, channel_rows=("up",), channel_cols="down", channels=3)
    return Units(**(base | kw))


def test_output_score_is_the_squared_error_of_removing_the_unit_alone():
    torch.manual_seed(0)
    units = _units()
    x_attn, x_mlp = torch.randn(500, 4), torch.randn(500, 3)  # inputs of "o" and "down"
    w = {"q": torch.randn(4, 5), "o": torch.randn(6, 4), "up": torch.randn(3, 5), "down": torch.randn(6, 3)}
    stats = BlockStats(torch.ones(5), x_attn.T @ x_attn / 500, torch.ones(5), (x_mlp ** 2).mean(0))
    scores = SCORES.get("output")(w, units, stats)
    for h in range(2):
        cols = slice(2 * h, 2 * h + 2)
        removed = (x_attn[:, cols] @ w["o"][:, cols].T).pow(2).sum(1).mean()
        assert torch.isclose(scores.heads[h], removed, rtol=1e-4)
    for j in range(3):
        removed = (x_mlp[:, j:j + 1] @ w["down"][:, j:j + 1].T).pow(2).sum(1).mean()
        assert torch.isclose(scores.channels[j], removed, rtol=1e-4)


def test_wanda_sp_and_magnitude_scores_on_hand_made_weights():
    units = _units(num_heads=1, head_dim=1, channels=2)
    w = {"q": torch.tensor([[1.0, -2.0]]), "o": torch.tensor([[3.0]]), "up": torch.tensor([[1.0, 1.0], [0.0, -1.0]]),
         "down": torch.tensor([[2.0, 4.0]])}
    stats = BlockStats(torch.tensor([4.0, 1.0]), torch.tensor([[9.0]]), torch.tensor([1.0, 4.0]), torch.tensor([1.0, 0.25]))
    mag = SCORES.get("magnitude")(w, units, stats)
    assert mag.heads.tolist() == [1 + 4 + 9] and mag.channels.tolist() == [1 + 1 + 4, 1 + 16]
    sp = SCORES.get("wanda-sp")(w, units, stats)
    assert sp.heads.tolist() == [1 * 2 + 2 * 1 + 3 * 3]  # |W|·‖X‖ over q's row and o's column
    assert sp.channels.tolist() == [1 * 1 + 1 * 2 + 2 * 1, 0 * 1 + 1 * 2 + 4 * 0.5]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_removing_units_equals_masking_them_and_shrinks_the_weights(family, tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2) if family == "llama" \
        else make_tiny_bert(len(tiny_tokenizer))
    adapter = get_adapter(model)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 12))
    units = adapter.units(adapter.blocks(model)[0])
    heads = torch.tensor([0, 2]) if units.group_size > 1 else torch.tensor([1, 3])  # llama: one query head per KV group
    kept = [(heads, torch.arange(0, units.channels, 2)) for _ in adapter.blocks(model)]
    out = lambda m: m(input_ids=ids).logits if family == "llama" else m(input_ids=ids).last_hidden_state  # noqa: E731
    with torch.no_grad(), masked(model, adapter, kept):
        expected = out(model)
    before = sum(block_params(b, adapter) for b in adapter.blocks(model))
    for block, (h, c) in zip(adapter.blocks(model), kept):
        shape = remove_units(block, adapter, h, c)
        assert shape.num_heads == 2 and shape.channels == units.channels // 2
        assert shape.num_kv_heads == (units.num_kv_heads if family == "llama" else 2)
    with torch.no_grad():
        assert torch.allclose(out(model), expected, atol=1e-5)
    assert sum(block_params(b, adapter) for b in adapter.blocks(model)) < before


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_removing_a_block_equals_masking_all_its_units(family, tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3, initializer_range=0.2) if family == "llama" \
        else make_tiny_bert(len(tiny_tokenizer))
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    empty = torch.zeros(0, dtype=torch.long)
    kept = [(torch.arange(adapter.units(b).num_heads), torch.arange(adapter.units(b).channels)) for b in blocks]
    kept[1] = (empty, empty)
    ids = torch.randint(4, len(tiny_tokenizer), (1, 10))
    with torch.no_grad(), masked(model, adapter, kept):
        if family == "llama":  # with the KV cache: the remaining blocks must be renumbered for it
            expected = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        else:
            expected = model(input_ids=ids).last_hidden_state
    adapter.keep_blocks(model, [i for i in range(len(blocks)) if i != 1])
    assert len(adapter.blocks(model)) == len(blocks) - 1 == model.config.num_hidden_layers
    with torch.no_grad():
        if family == "llama":
            assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0), expected)
        else:
            assert torch.allclose(model(input_ids=ids).last_hidden_state, expected, atol=1e-5)


def test_gqa_groups_must_keep_equal_nonzero_query_heads():
    units = _units(num_heads=6, num_kv_heads=2, head_dim=4)
    check_heads(units, torch.tensor([0, 1, 3, 4]))
    with pytest.raises(EdgepruneError, match="KV groups"):
        check_heads(units, torch.tensor([0, 1, 3]))
    with pytest.raises(EdgepruneError, match="KV groups"):
        check_heads(units, torch.tensor([0, 1]))  # the second group loses every query head
    with pytest.raises(EdgepruneError, match="every attention head"):
        check_heads(units, torch.tensor([], dtype=torch.long))


def _toy_space(blocks=3):
    spaces = tuple(Space(2, 3, 64, 8) for _ in range(blocks))
    cost = ParamCost(spaces, (100,) * blocks, (10,) * blocks, (50,) * blocks)
    gen = torch.Generator().manual_seed(0)
    scores = [UnitScores(torch.rand(6, generator=gen) * (i + 1), torch.rand(64, generator=gen) * (i + 1)) for i in range(blocks)]
    return spaces, cost, scores


def test_searches_respect_the_budget_and_gqa_and_evolution_never_loses_to_its_seeds():
    spaces, cost, scores = _toy_space()
    budget = 0.6 * cost(dense_arch(spaces))
    uniform = uniform_arch(spaces, cost, budget)
    assert len(set(uniform)) == 1 and cost(uniform) <= budget
    greedy = greedy_arch(dense_arch(spaces), spaces, scores, cost, budget)
    assert cost(greedy) <= budget and budget - cost(greedy) < 2 * (2 * 100 + 8 * 10)
    # a fitness that prefers keeping block 0 wide: evolution must find something at least as good as its seeds
    fitness = lambda arch: -arch[0][1] - 5 * arch[0][0] + 0.01 * sum(c for _, c in arch)  # noqa: E731
    best, log = evolve(spaces, scores, cost, budget, fitness, population=6, generations=4)
    assert cost(best) <= budget
    assert log.fitness["best"] <= min(log.fitness["greedy"], log.fitness["uniform"], log.fitness["uniform-channels"])
    channels_only = uniform_arch(spaces, cost, budget, keep_heads=True)
    assert all(k == 3 for k, _ in channels_only) and cost(channels_only) <= budget
    for heads, channels in kept_units(best, spaces, scores):
        check_heads(_units(num_heads=6, num_kv_heads=2), heads)
        assert len(channels) % 8 == 0


def test_uniform_target_that_removes_every_head_is_a_clear_error():
    spaces, cost, _ = _toy_space()
    with pytest.raises(EdgepruneError, match="every attention head"):
        uniform_arch(spaces, cost, 0.1 * cost(dense_arch(spaces)))


def test_ridge_refit_recovers_the_dense_output_from_correlated_kept_inputs():
    torch.manual_seed(0)
    x = torch.randn(2000, 4)
    x[:, 3] = x[:, 0] + 0.01 * torch.randn(2000)  # column 3 is (almost) column 0: dropping it loses little after a re-fit
    w = torch.randn(5, 4)
    keep = torch.tensor([0, 1, 2])
    refit = ridge_refit(w, x.T @ x / 2000, x.T @ x / 2000, keep, damp=1e-6)
    assert (refit[:, 3] == 0).all()
    target = x @ w.T
    removed = x[:, keep] @ w[:, keep].T
    assert ((x @ refit.T - target).pow(2).mean()) < 0.01 * ((removed - target).pow(2).mean())


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_structured_end_to_end_reloads_with_transformers_and_exports(family, gqa_llama_dir, tiny_bert_dir, tmp_path):
    src = gqa_llama_dir if family == "llama" else tiny_bert_dir
    out = tmp_path / "small"
    report = structured(str(src), out, StructuredConfig(target_params=0.6, **TINY))
    assert 0.5 < report.kept_fraction <= 0.6
    # reformation lowers every block's output error
    assert all(e["reformed_error"] < e["removal_error"] for e in report.reform if not e.get("removed"))
    assert len(report.layout) == len(report.reform) - len(report.removed_blocks)
    config = json.loads((out / "config.json").read_text())
    assert len(config[LAYOUT_KEY]) == len(report.layout) and (out / "modeling_edgeprune.py").is_file()
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["method"] == "structured" and meta["structured"]["layout"] == config[LAYOUT_KEY]

    from transformers import AutoModel, AutoModelForCausalLM

    from edgeprune.models.loading import load_model

    cls = AutoModelForCausalLM if family == "llama" else AutoModel
    plain = cls.from_pretrained(out, trust_remote_code=True).eval()
    ours = load_model(out)
    for block, shape in zip(ours.adapter.blocks(ours.model), config[LAYOUT_KEY]):
        units = ours.adapter.units(block)
        assert (units.num_heads, units.num_kv_heads, units.channels) == (shape["num_heads"], shape["num_kv_heads"], shape["channels"])
    ids = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        a, b = plain(input_ids=ids), ours.model(input_ids=ids)
    key = "logits" if family == "llama" else "last_hidden_state"
    assert torch.equal(a[key], b[key])

    from edgeprune.onnx import ExportConfig, export

    exported = export(str(out), tmp_path / "onnx", ExportConfig())
    assert exported.verify.worst[1] <= exported.verify.atol  # export() also fails above it; be explicit
    if family == "llama":
        assert exported.verify.tokens_identical


@pytest.mark.parametrize("arch", ["qwen2", "smollm3"])
def test_structured_folder_reloads_as_its_own_architecture(arch, tiny_tokenizer, tmp_path):
    """A Qwen2 folder keeps its q/k/v biases and a SmolLM3 folder its layers without RoPE: the reloaded model's outputs
    are the in-memory structured model's."""
    from transformers import AutoModelForCausalLM

    make = make_tiny_qwen2 if arch == "qwen2" else make_tiny_smollm3
    model = make(len(tiny_tokenizer), initializer_range=0.2)
    adapter = get_adapter(model)
    for i, block in enumerate(adapter.blocks(model)):
        units = adapter.units(block)
        heads = torch.tensor([0, 2]) if i % 2 else torch.arange(units.num_heads)  # one query head per KV group
        remove_units(block, adapter, heads, torch.arange(0, units.channels, 2 + i % 2))
    save_layout_folder(model, adapter, tiny_tokenizer, tmp_path / "small")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small", trust_remote_code=True).eval()
    assert isinstance(reloaded, type(model))  # e.g. a Qwen2ForCausalLM, not a Llama built from Qwen2's config
    ids = torch.randint(4, len(tiny_tokenizer), (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_every_auto_map_entry_names_a_class_of_the_copied_modeling_file():
    """layout.AUTO_MAP lives apart from modeling_edgeprune.py (which imports layout): each class it names must be there."""
    from pathlib import Path

    from edgeprune.structured import layout, modeling_edgeprune

    assert layout.MODELING_FILE == Path(modeling_edgeprune.__file__)
    for model_type, (auto_class, class_name) in layout.AUTO_MAP.items():
        assert issubclass(getattr(modeling_edgeprune, class_name), modeling_edgeprune._Resized), model_type
        assert auto_class in ("AutoModelForCausalLM", "AutoModel")


def test_folder_with_heads_removed_evaluates_and_prunes_with_attention(gqa_llama_dir, tiny_tokenizer, tmp_path):
    """Head counts come from each block's weights, not the dense config: the adapter's attention equals the reloaded
    model's own, evaluation compares attention with a same-shaped reference, and the attention method prunes it."""
    import math

    from transformers import AutoModelForCausalLM

    from edgeprune import PruneConfig, evaluate, prune
    from edgeprune.models.loading import load_model

    loaded = load_model(gqa_llama_dir)
    adapter, blocks = loaded.adapter, loaded.adapter.blocks(loaded.model)
    all_channels = torch.arange(adapter.units(blocks[0]).channels)
    remove_units(blocks[1], adapter, torch.tensor([0, 1, 3, 4]), all_channels)  # 6 → 4 query heads, 2 per KV group
    small = tmp_path / "small"
    save_layout_folder(loaded.model, adapter, loaded.tokenizer, small)
    eager = AutoModelForCausalLM.from_pretrained(small, trust_remote_code=True, attn_implementation="eager").eval()
    assert [adapter.attention(b).num_heads for b in adapter.blocks(eager)] == [6, 4, 6]
    assert_attention_is_the_models(eager, torch.randint(4, len(tiny_tokenizer), (2, 24), generator=torch.Generator().manual_seed(0)))

    itself = evaluate(str(small), reference=str(small), seqlen=32, max_windows=2)
    assert itself.attention_error == [0.0, 0.0, 0.0] and math.isfinite(itself.perplexity)

    pruned = tmp_path / "pruned"
    report = prune(str(small), pruned, PruneConfig(method="attention", sparsity="2:4", calib=CalibConfig(samples=8, seqlen=32),
                                                   options={"steps": 4, "check_every": 2}))
    reloaded = AutoModelForCausalLM.from_pretrained(pruned, trust_remote_code=True)
    q = adapter.attention(adapter.blocks(reloaded)[1]).q.weight
    assert q.shape == (4 * 16, 96) and q.reshape(-1, 4).ne(0).sum(1).le(2).all()
    # ½‖P̃ − P‖² per head over 32 rows of probabilities lies in (0, 32) (each row's ½‖p̃ − p‖² is at most 1)
    assert len(report.attention_error) == 3 and all(0 < e["error"] < 32 for e in report.attention_error)
    result = evaluate(str(pruned), seqlen=32, max_windows=2)  # reference: the structured folder it was pruned from
    assert result.reference == str(small) and len(result.attention_error) == 3
    assert all(0 < e < 32 for e in result.attention_error)


def test_reformation_off_keeps_the_removal_error(gqa_llama_dir, tmp_path):
    report = structured(str(gqa_llama_dir), tmp_path / "plain", StructuredConfig(target_params=0.7, search="uniform", reform=False, **TINY))
    assert all("reformed_error" not in e for e in report.reform)
    assert len({(s["num_heads"], s["channels"]) for s in report.layout}) == 1


@pytest.mark.parametrize("args, message", [
    (["--target-params", "1.2"], "not in (0, 1]"),
    (["--target-params", "0"], "not in (0, 1]"),
    (["--target-latency-ms", "10"], "needs a device"),
    (["--target-params", "0.5", "--target-latency-ms", "-3", "--device", "this-host"], "must be positive"),
    (["--target-params", "0.5", "--target-latency-ms", "10", "--device", "no-such-device"], "no-such-device"),
    (["--target-speedup", "1.3"], "needs a device"),
    (["--target-speedup", "0.9", "--device", "this-host"], "is not above 1"),
    (["--target-speedup", "1.3", "--target-latency-ms", "10", "--device", "this-host"], "pass one latency budget"),
    (["--target-params", "0.05", "--search", "uniform"], "below the smallest model the search can reach"),
    (["--target-params", "0.7", "--score", "nope"], "unknown structured score"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, gqa_llama_dir, tmp_path):
    result = runner.invoke(app, ["structured", str(gqa_llama_dir), "--out", str(tmp_path / "out"), "--samples", "4", "--seqlen", "32", *args])
    assert result.exit_code == 2
    assert message in error_line(result)
    no_leftovers(tmp_path)


def test_cli_structured_writes_a_smaller_model(gqa_llama_dir, tmp_path):
    result = runner.invoke(app, ["structured", str(gqa_llama_dir), "--out", str(tmp_path / "out"), "--target-params", "0.75",
                                 "--samples", "4", "--seqlen", "32", "--generations", "1", "--population", "4"])
    assert result.exit_code == 0, result.output
    assert "kept 7" in result.output and "after reformation" in result.output
    assert (tmp_path / "out" / "model.safetensors").stat().st_size < (gqa_llama_dir / "model.safetensors").stat().st_size


def test_latency_budget_is_measured_on_the_device(gqa_llama_dir, tmp_path):
    device = tmp_path / "dev.toml"
    device.write_text('name = "tiny-host"\nintra_op_threads = 1\nwarmup = 2\nruns = 5\n')
    probe = structured(str(gqa_llama_dir), tmp_path / "probe", StructuredConfig(target_params=None, target_latency_ms=1e6,
                                                                               latency_device=str(device), **TINY))
    lat = probe.latency
    assert lat["device"] == "tiny-host" and lat["threads"] == 1 and lat["measured_dense_ms"] > 0
    assert lat["predicted_dense_ms"] == pytest.approx(lat["measured_dense_ms"], abs=2e-3)  # anchored on the real measurement
    assert probe.kept_fraction == 1.0 and "already meets" in probe.search_log["note"]
    both = structured(str(gqa_llama_dir), tmp_path / "both", StructuredConfig(target_params=0.7, target_latency_ms=1e6,
                                                                             latency_device=str(device), **TINY))
    assert both.kept_fraction <= 0.7 and both.latency["predicted_ms"] <= 1e6 and both.target["params"] == 0.7
    with pytest.raises(EdgepruneError, match="below the smallest model"):
        structured(str(gqa_llama_dir), tmp_path / "none", StructuredConfig(target_params=None, target_latency_ms=1e-6,
                                                                          latency_device=str(device), **TINY))
    no_leftovers(tmp_path, "none")


def test_latency_model_graphs_are_timed_side_by_side_here(gqa_llama_dir, monkeypatch):
    """On this host the three real graphs are exported and timed in one process, SIDE_BY_SIDE_TURNS turns each."""
    import edgeprune.profiling.workflow as workflow
    from edgeprune.models.loading import load_model
    from edgeprune.structured.latency import SIDE_BY_SIDE_TURNS, _cut, measure_rounds

    calls = []

    def fake_interleaved(graphs, device, threads, **kw):
        calls.append((graphs, kw))
        assert all((g / "model.onnx").is_file() for g in graphs)  # real exports, alive while timed
        return [[float(i + 1)] * kw["sequences"] for i in range(len(graphs))]

    monkeypatch.setattr(workflow, "interleaved", fake_interleaved)
    loaded = load_model(str(gqa_llama_dir))
    got = measure_rounds(loaded, "this-host", 1, [None, _cut(loaded, 1, narrow=True), _cut(loaded, 1, narrow=False)], rounds=3)
    assert len(calls) == 1 and len(calls[0][0]) == 3 and calls[0][1]["sequences"] == SIDE_BY_SIDE_TURNS
    assert got == [[1.0] * SIDE_BY_SIDE_TURNS, [2.0] * SIDE_BY_SIDE_TURNS, [3.0] * SIDE_BY_SIDE_TURNS]


def test_latency_model_graphs_are_measured_together_in_alternating_rounds(gqa_llama_dir, monkeypatch, tmp_path):
    """On a remote device, dense, narrowed cut and cut are profiled in one call per round, the order reversed every other
    round, and each figure's median over its rounds ignores a slow round."""
    from types import SimpleNamespace

    import edgeprune.profiling as profiling
    from edgeprune.models.loading import load_model
    from edgeprune.profiling.devices import DeviceProfile
    from edgeprune.structured.latency import _cut, measure_rounds

    base = {"g0": 10.0, "g1": 4.0, "g2": 6.0}
    slow = [1.0, 3.0, 1.0]  # round 2 runs three times slower
    orders = []

    def fake_profile(graphs, device, threads, out, workload, names):
        orders.append(list(names))
        r = len(orders) - 1
        runs = [SimpleNamespace(runs=[SimpleNamespace(ok=True, reason=None, headline={"decode_p50_ms@32": base[n] * slow[r] + r * 0.01})])
                for n in names]
        return SimpleNamespace(variants=runs)

    monkeypatch.setattr(profiling, "profile", fake_profile)
    loaded = load_model(str(gqa_llama_dir))
    device = DeviceProfile(name="phone", remote="ssh://user@phone")
    got = measure_rounds(loaded, device, 1, [None, _cut(loaded, 1, narrow=True), _cut(loaded, 1, narrow=False)], rounds=3)
    assert orders == [["g0", "g1", "g2"], ["g2", "g1", "g0"], ["g0", "g1", "g2"]]
    assert got == [pytest.approx([b * s + r * 0.01 for r, s in enumerate(slow)]) for b in base.values()]  # each round, per graph
    import statistics
    assert [statistics.median(t) for t in got] == pytest.approx([10.02, 4.02, 6.02])  # medians: round 3, never the slow round


def test_speedup_target_is_a_latency_budget_against_the_measured_dense_model(tiny_tokenizer, tmp_path):
    # MLPs wide enough that narrowing them costs measurably less than the per-op overhead of a tiny graph: with the
    # 256-channel model a 1.1x target sometimes fell below the narrowest model the search can reach (timing noise)
    src = tmp_path / "wide-mlp"
    make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=96,
                    intermediate_size=4096, initializer_range=0.2).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    device = tmp_path / "dev.toml"
    device.write_text('name = "tiny-host"\nintra_op_threads = 1\nwarmup = 2\nruns = 5\n')
    report = structured(str(src), tmp_path / "fast", StructuredConfig(target_params=None, target_speedup=1.1,
                                                                              latency_device=str(device), search="greedy", **TINY))
    lat = report.latency
    assert lat["budget_ms"] == pytest.approx(lat["predicted_dense_ms"] / 1.1, abs=1e-3)  # both rounded to µs
    assert lat["predicted_ms"] <= lat["budget_ms"] + 1e-3 and report.kept_fraction < 1
    assert report.target == {"speedup": 1.1, "device": str(device)}


def test_latency_model_from_noisy_times_never_predicts_a_negative_cost():
    """On a tiny model the real graphs' times are mostly noise: a cut that looks cheaper than its share of the dense
    model, or a narrowed cut that looks far cheaper than the MatMul chains explain, must not give a negative base or
    block cost (the fit workflow once predicted -0.014 ms for a pruned encoder)."""
    from edgeprune.structured.latency import fit_cost

    spaces, _, _ = _toy_space(blocks=2)
    units = [_units(num_heads=6, num_kv_heads=2, channels=64)] * 2
    attn, widths, mlp = {2: 0.01, 4: 0.02, 6: 0.03}, (8, 32, 64), (0.01, 0.04, 0.08)
    for dense, cut, narrow in ((0.30, 0.10, 0.09), (0.30, 0.29, 0.01), (0.30, 0.31, 0.30), (0.30, 0.16, 0.001)):
        cost = fit_cost(spaces, units, attn, widths, mlp, dense, cut, narrow, few=1)
        assert cost.base_ms >= 0 and cost.block_ms >= -1e-12 and cost.scale >= 0
        assert cost(dense_arch(spaces)) == pytest.approx(dense)  # the model still reproduces what it was fitted on
        assert 0 < cost(((1, 8), (1, 8))) <= dense
    sane = fit_cost(spaces, units, attn, widths, mlp, dense=1.0, cut=0.6, narrow=0.5, few=1)  # clean times: no clamp
    # chain saving of narrowing a block: heads 6 → 2 (0.02 ms) + channels 64 → 16 (0.08 - 0.02 ms); real saving 0.1 ms
    assert sane.base_ms == pytest.approx(0.2) and sane.scale == pytest.approx(0.1 / 0.08)
    assert sane.block_ms == pytest.approx(0.4 - 1.25 * (0.03 + 0.08))


def test_a_config_needs_a_target():
    with pytest.raises(EdgepruneError, match="no target"):
        StructuredConfig(target_params=None)


def test_latency_model_interpolates_widths_and_spends_the_budget():
    from edgeprune.structured.latency import LatencyCost

    spaces, _, scores = _toy_space(blocks=2)
    cost = LatencyCost(spaces, base_ms=1.0, block_ms=0.05, scale=1.0, attn_ms={2: 0.1, 4: 0.2, 6: 0.3}, mlp_widths=(8, 32, 64), mlp_ms=(0.1, 0.4, 0.8))
    assert cost.mlp(48) == pytest.approx(0.6) and cost.mlp(64) == pytest.approx(0.8)
    assert cost(dense_arch(spaces)) == pytest.approx(1.0 + 2 * (0.05 + 0.3 + 0.8))
    assert cost(((0, 0), (3, 64))) == pytest.approx(1.0 + 0.05 + 0.3 + 0.8)  # a removed block costs nothing
    budget = 2.6
    arch = greedy_arch(dense_arch(spaces), spaces, scores, cost, budget)
    assert cost(arch) <= budget < cost(dense_arch(spaces))
