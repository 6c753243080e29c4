"""Profiling: every metric measured in a fresh process on tiny exported graphs, device profiles validated strictly,
a memory-limit failure reported without stopping the other variants, report.json/md/html rendered, CLI errors one line."""

from __future__ import annotations

import json
import os
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from edgeprune.cli import app  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.profiling import Workload, load_device, profile  # noqa: E402
from edgeprune.profiling.devices import DeviceProfile, devices_dir  # noqa: E402
from edgeprune.profiling.ops import summarize_trace  # noqa: E402
from edgeprune.profiling.results import Latency, Report  # noqa: E402
from edgeprune.report import tables  # noqa: E402

runner = CliRunner()
TINY = Workload(prompt_lengths=(16, 24), decode_tokens=4, batch_sizes=(1, 2), seq_lengths=(16,))
FAST = DeviceProfile(name="test-tiny", intra_op_threads=1, warmup=2, runs=4, memory_budget_mb=4096,
                     latency_p90_ms_budget=1000, decode_ms_per_token_budget=1000,
                     execution_providers=("XnnpackExecutionProvider", "CPUExecutionProvider"))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_onnx):
    out = tmp_path_factory.mktemp("profiling-report") / "report"
    report = profile(list(tiny_onnx), FAST, out=out, workload=TINY)
    return report, out


def _big_graph(path: Path, floats: int) -> None:
    """A graph y = x + sum(W) whose initializer W has ``floats`` values: memory that grows with the model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(floats, np.float32), "W")
    nodes = [helper.make_node("ReduceSum", ["W"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _positive(latency: Latency):
    assert latency.count >= 1 and len(latency.samples) == latency.count
    for key in ("mean", "min", "p50", "p90", "p95", "p99", "max"):
        assert getattr(latency, key) > 0, key
    assert latency.min <= latency.p50 <= latency.p90 <= latency.p95 <= latency.p99 <= latency.max
    assert latency.sd >= 0 and latency.cv >= 0


# --- measuring --------------------------------------------------------------------------------


def test_every_metric_present_and_positive(report_dir, tiny_onnx):
    report, _ = report_dir
    llama, bert = report.variants
    assert (llama.kind, bert.kind) == ("decoder", "encoder")
    for v in report.variants:
        assert v.size_bytes == sum(v.files.values()) > 0 and "model.onnx" in v.files
        (run,) = v.runs
        assert run.ok, run.reason
        assert run.session_ms > 0 and run.first_inference_ms > 0 and run.warmup == FAST.warmup and run.wall_s > 0
        assert run.ort["intra_op_threads"] == 1 and run.ort["providers"] == ["CPUExecutionProvider"]
        assert {"graph_optimization", "cpu_mem_arena", "mem_pattern"} <= set(run.ort)
        m = run.memory
        assert 0 < m.baseline_mb <= m.peak_load_mb and m.peak_run_mb > 0 and m.samples > 0
        assert m.ru_maxrss_load_mb > 0 and m.ru_maxrss_run_mb >= m.ru_maxrss_load_mb
        assert 0 < m.hwm_load_mb <= m.hwm_run_mb <= m.ru_maxrss_run_mb  # ru_maxrss also carries pytest's size across fork+exec
        assert 0.5 < m.agreement <= 1.2  # the outside sampler and the child's own high-water mark agree roughly
        assert run.op_profile.ops and run.op_profile.run_ms > 0 and run.op_profile.kernel_ms > 0 and run.op_profile.top_nodes
        assert all(o.count > 0 and o.total_ms >= 0 and 0 <= o.percent <= 100 for o in run.op_profile.ops)
        assert {b.name for b in run.budgets} >= {"memory_budget_mb", "latency_p90_ms_budget"} and all(b.passed for b in run.budgets)
    dec = llama.runs[0].decoder
    assert [d.prompt_tokens for d in dec] == [16, 24]
    for d in dec:
        _positive(d.prefill)
        _positive(d.decode)
        assert d.prefill.count == FAST.runs and d.decode.count >= FAST.runs and d.decode.count % TINY.decode_tokens == 0
        assert d.prefill_tokens_per_s > 0 and d.decode_tokens_per_s == pytest.approx(1000 / d.decode_ms_per_token)
    enc = bert.runs[0].encoder
    assert [(e.batch_size, e.seq_len) for e in enc] == [(1, 16), (2, 16)]
    for e in enc:
        _positive(e.latency)
        assert e.sequences_per_s > 0
    assert any("XnnpackExecutionProvider" in n and "fell back" in n for n in report.notes)
    assert report.host["onnxruntime"] and report.host["usable_cores"]


def test_each_run_is_its_own_process(report_dir):
    report, _ = report_dir
    pids = [r.pid for v in report.variants for r in v.runs]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids and all(pids)


def test_strict_repeats_in_fresh_processes_and_threads_clamped_cores(tmp_path, tiny_onnx):
    device = DeviceProfile(name="strict", cores=(0, 4096), warmup=1, runs=3)
    report = profile([tiny_onnx[1]], device, threads=[1], out=tmp_path / "r", strict=True,
                     workload=Workload(seq_lengths=(8,), op_profile=False))
    (run,) = report.variants[0].runs
    assert len(run.repeats) == 3 and len({r["pid"] for r in run.repeats}) == 3
    assert all(set(r) >= {"pid", "status", "latency_p50_ms@1x8"} for r in run.repeats)
    assert isinstance(run.unstable, list)  # tiny graphs on a shared CPU may or may not be flagged
    assert run.op_profile is None and run.cores == [0]
    assert any("4096" in n and "pinned to [0]" in n for n in report.notes)
    assert not list((tmp_path / "r").glob("traces/*"))


def test_memory_limit_fails_one_variant_and_the_others_are_measured(tmp_path, tiny_onnx):
    big = tmp_path / "big" / "model.onnx"
    _big_graph(big, 48 * 2**20 // 4 * 4)  # 192 MiB of weights
    device = DeviceProfile(name="tight", intra_op_threads=1, warmup=1, runs=2, memory_limit_mb=160, memory_budget_mb=100)
    report = profile([big.parent, tiny_onnx[1]], device, out=tmp_path / "r", workload=Workload(seq_lengths=(8,), op_profile=False))
    failed, ok = report.variants[0].runs[0], report.variants[1].runs[0]
    assert failed.status == "failed" and "memory limit of 160 MiB" in failed.reason, failed.reason
    assert ok.ok and ok.encoder and ok.memory.peak_mb < 160
    assert [b.passed for b in ok.budgets] == [True]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "FAILED" in html and "memory limit" in html


def test_crash_is_reported_with_the_reason(tmp_path, tiny_onnx):
    # A decoder whose cache inputs the graph does not accept: ORT raises inside the child; the parent keeps going.
    import onnx

    model = onnx.load(str(tiny_onnx[0] / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "Gather":
            node.op_type = "GatherBogus"  # an op no provider implements: session creation fails in the child
            break
    (tmp_path / "broken").mkdir()
    onnx.save(model, str(tmp_path / "broken" / "model.onnx"))
    report = profile([tmp_path / "broken", tiny_onnx[1]], FAST, out=tmp_path / "r", workload=Workload(seq_lengths=(8,), op_profile=False))
    bad, good = report.variants[0].runs[0], report.variants[1].runs[0]
    assert bad.status == "failed" and "exited with code 1" in bad.reason and "GatherBogus" in bad.reason
    assert good.ok


# --- results and rendering --------------------------------------------------------------------


def test_latency_from_values_on_hand_made_samples():
    lat = Latency.from_values([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (lat.count, lat.mean, lat.min, lat.max, lat.p50) == (5, 3.0, 1.0, 5.0, 3.0)
    assert lat.p90 == pytest.approx(4.6) and lat.p99 == pytest.approx(4.96)
    assert lat.sd == pytest.approx(1.5811388) and lat.cv == pytest.approx(1.5811388 / 3)
    assert lat.samples == [4.0, 1.0, 3.0, 2.0, 5.0]  # in the order measured
    with pytest.raises(ValueError):
        Latency.from_values([])


def test_op_breakdown_from_a_hand_made_trace(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Node", "name": "a_kernel_time", "dur": 500, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "b_kernel_time", "dur": 200, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "a_kernel_time", "dur": 100, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "c_kernel_time", "dur": 100, "args": {"op_name": "Add"}},
        {"cat": "Node", "name": "c_fence_before", "dur": 999, "args": {"op_name": "Add"}},
    ]
    (tmp_path / "t.json").write_text(json.dumps(events))
    p = summarize_trace(tmp_path / "t.json", "t.json")
    assert [(o.op_type, o.count, o.nodes, o.total_ms, o.percent) for o in p.ops] == [("MatMul", 3, 2, 0.8, 80.0), ("Add", 1, 1, 0.1, 10.0)]
    assert [(n.name, n.count, n.total_ms) for n in p.top_nodes] == [("a", 2, 0.6), ("b", 1, 0.2), ("c", 1, 0.1)]
    assert (p.run_ms, p.kernel_ms, p.runs) == (1.0, 0.9, 1)


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def test_report_files_render(report_dir):
    report, out = report_dir
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1 and len(data["variants"]) == 2
    again = Report.from_dict(data)
    assert again.variants[0].runs[0].decoder[0].prefill.p90 == pytest.approx(report.variants[0].runs[0].decoder[0].prefill.p90, abs=1e-5)
    assert again.variants[1].runs[0].memory.peak_mb == pytest.approx(report.variants[1].runs[0].memory.peak_mb, abs=1e-5)

    md = (out / "report.md").read_text()
    assert "not scaled" in md and "| variant | threads | status |" in md
    assert "×)" in md  # ratios against the first variant

    checker = _Checker()
    checker.feed((out / "report.html").read_text())
    checker.close()
    assert not checker.errors and checker.stack == [], (checker.errors, checker.stack)
    alts = {i["alt"] for i in checker.images}
    assert {"latency distribution", "memory per variant", "op-type breakdown"} <= alts
    assert all(i["src"].startswith("data:image/png;base64,iVBOR") for i in checker.images)  # embedded PNGs, self-contained

    for v in report.variants:
        trace = out / v.runs[0].op_profile.trace_file
        events = json.loads(trace.read_text())  # the raw Chrome/Perfetto trace is kept
        assert any(e.get("name") == "model_run" for e in events)


def test_quality_from_edgeprune_json_and_quality_plot(tmp_path, tiny_onnx):
    import shutil

    from edgeprune.report.plots import quality_tradeoff

    src = tmp_path / "pruned"
    shutil.copytree(tiny_onnx[1], src)
    meta = json.loads((src / "edgeprune.json").read_text())
    meta["pruning"] = {"method": "wanda", "sparsity": "2:4", "overall_sparsity": 0.5}
    (src / "edgeprune.json").write_text(json.dumps(meta))
    report = profile([tiny_onnx[1], src], FAST, out=tmp_path / "r", workload=Workload(seq_lengths=(8,), op_profile=False))
    assert report.variants[1].quality["overall_sparsity"] == 0.5 and report.variants[1].quality["method"] == "wanda"
    assert quality_tradeoff(report).startswith(b"\x89PNG")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| overall sparsity |" in md and "| 50.0% |" in md and "overall_sparsity" not in md


def test_op_rows_add_up_to_the_whole_run_with_other_and_outside_kernels(report_dir):
    report, _ = report_dir
    for v in report.variants:
        run = v.runs[0]
        assert len(run.op_profile.ops) > 2
        _, rows = tables.op_rows(run, top=2)
        assert [r[0] for r in rows[:2]] == [o.op_type for o in run.op_profile.ops[:2]]
        assert rows[2][0] == f"other ({len(run.op_profile.ops) - 2} op types)"
        assert float(rows[2][4]) == pytest.approx(sum(o.percent for o in run.op_profile.ops[2:]), abs=0.06)
        outside = 100 * (run.op_profile.run_ms - run.op_profile.kernel_ms) / run.op_profile.run_ms
        assert rows[-1][0] == "outside kernels (ORT overhead)" and float(rows[-1][4]) == pytest.approx(outside, abs=0.06)
        assert sum(float(r[4]) for r in rows) == pytest.approx(100, abs=0.3)


def test_report_tables_have_titles_in_words(report_dir):
    report = Report.from_dict(report_dir[0].to_dict())
    report.variants[1].quality = {"method": "wanda", "sparsity": "2:4", "overall_sparsity": 0.5, "perplexity": 11.1,
                                  "embedding_cosine_mean": 0.99, "embedding_cosine_min": 0.9, "greedy_tokens_identical": "8/32",
                                  "max_abs_diff_vs_torch": 11.8, "some_new_figure": 1.0}
    v, run = report.variants[0], report.variants[0].runs[0]
    for headers, _ in (tables.comparison(report), tables.quality_rows(report), tables.memory_rows(report),
                       tables.run_details(v, run), tables.op_rows(run), tables.node_rows(run)):
        assert headers and not [h for h in headers if re.search(r"[a-z]_[a-z]", h)], headers  # no raw field names


def test_quantised_divergence_from_pytorch_is_explained(report_dir):
    from edgeprune.report import to_html, to_markdown

    report = Report.from_dict(report_dir[0].to_dict())
    assert tables.divergence_note(report) is None  # fp32 graphs: nothing to explain
    quantised = report.variants[0]
    quantised.quantization = "int4"
    quantised.quality = {"greedy_tokens_identical": "8/32", "max_abs_diff_vs_torch": 11.8, "perplexity": 11.1}
    headers, rows = tables.quality_rows(report)
    assert headers[:2] == ["variant", "quantisation"]
    row = dict(zip(headers, rows[0]))
    assert row["greedy tokens same as PyTorch"] == "8/32" and row["max abs diff vs PyTorch"] == "11.8"
    assert row["quantisation"] == "int4"
    note = tables.divergence_note(report)
    assert note.startswith(f"{quantised.name}: a quantised graph is expected to differ") and "Perplexity" in note
    assert f"Note: {note}" in to_markdown(report)
    assert escape(note) in to_html(report)


# --- device profiles --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(devices_dir().glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_device_profile_loads(path):
    device = load_device(path)
    assert device.name == path.stem and device.warmup >= 10 and device.runs >= 1 and device.description


def test_shipped_profiles_are_the_documented_ones():
    names = {p.stem for p in devices_dir().glob("*.toml")}
    assert {"this-host", "laptop-x86-4t", "phone-arm-big4", "edge-arm-2t"} <= names
    phone = load_device(devices_dir() / "phone-arm-big4.toml")
    assert phone.cores == (4, 5, 6, 7) and phone.intra_op_threads == 4 and phone.memory_budget_mb <= 512


@pytest.mark.parametrize("text,message", [
    ('name = "x"\nwarmpu = 3\n', "x.toml:2: unknown key 'warmpu' in device profile. did you mean warmup?"),
    ('name = "x"\n\n[budgets]\np90 = 3\n', "x.toml:3: unknown key 'budgets'"),
    ('name = "x"\nruns = "many"\n', "x.toml:2: 'runs' must be an integer, not str"),
    ('name = "x"\ncores = [1, "2"]\n', "x.toml:2: 'cores' must be a list of integers"),
    ('name = "x"\nrequire_providers = 1\n', "x.toml:2: 'require_providers' must be true or false"),
    ('name = "x"\n\n\ngraph_optimization = "max"\n', "x.toml:4: device profile 'x': graph_optimization 'max' is unknown"),
    ('name = "x"\nintra_op_threads = 0\n', "x.toml:2: device profile 'x': intra_op_threads is 0"),
    ('name = "x"\nruns = \n', "is not valid TOML"),
    ('description = "no name"\n', "device profile has no 'name'"),
])
def test_bad_device_profiles_name_the_key_and_line(tmp_path, text, message):
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(EdgepruneError) as err:
        load_device(tmp_path / "x.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- CLI --------------------------------------------------------------------------------------


def _error_line(result) -> str:
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def fast_toml(tmp_path):
    path = tmp_path / "fast.toml"
    path.write_text('name = "fast"\nwarmup = 1\nruns = 2\nintra_op_threads = 1\n')
    return path


def test_cli_profile_json_prints_the_report_on_stdout(tmp_path, tiny_onnx, fast_toml):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["profile", str(tiny_onnx[1]), "--device", str(fast_toml), "--threads", "1", "--seq-lengths", "8",
                                 "--no-op-profile", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # stdout is the JSON alone; the one-line summaries went to stderr
    assert printed == json.loads((out / "report.json").read_text())
    assert "not scaled" in result.stderr and printed["variants"][0]["runs"][0]["threads"] == 1


def test_cli_profile_writes_the_report(tmp_path, tiny_onnx, fast_toml):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["profile", str(tiny_onnx[1]), str(tiny_onnx[1]), "--device", str(fast_toml), "--threads", "1",
                                 "--seq-lengths", "8", "--no-op-profile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "latency_p50_ms@1x8" in result.stdout and "not scaled" in result.stdout
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html"}
    names = [v["name"] for v in json.loads((out / "report.json").read_text())["variants"]]
    assert len(set(names)) == 2  # the same folder twice still gets two names


def test_cli_errors_are_one_line(tmp_path, tiny_onnx, fast_toml):
    base = ["profile", str(tiny_onnx[1]), "--out", str(tmp_path / "o")]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nruns = 2\nthreds = 4\n')
    assert "bad.toml:3: unknown key 'threds'" in _error_line(runner.invoke(app, base + ["--device", str(bad)]))
    assert "not found" in _error_line(runner.invoke(app, base + ["--device", str(tmp_path / "nope.toml")]))
    assert "--threads" in _error_line(runner.invoke(app, base + ["--device", str(fast_toml), "--threads", "0"]))
    assert "is not a comma-separated list" in _error_line(runner.invoke(app, base + ["--device", str(fast_toml), "--threads", "a"]))
    (tmp_path / "empty").mkdir()
    assert "has no ONNX model" in _error_line(
        runner.invoke(app, ["profile", str(tmp_path / "empty"), "--device", str(fast_toml), "--out", str(tmp_path / "o")]))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    assert "not a readable ONNX model" in _error_line(
        runner.invoke(app, ["profile", str(tmp_path / "corrupt"), "--device", str(fast_toml), "--out", str(tmp_path / "o")]))
    strict_ep = tmp_path / "ep.toml"
    strict_ep.write_text('name = "ep"\nexecution_providers = ["QNNExecutionProvider", "CPUExecutionProvider"]\nrequire_providers = true\n')
    assert "QNNExecutionProvider" in _error_line(runner.invoke(app, base + ["--device", str(strict_ep)]))
    (tmp_path / "o").mkdir()
    assert "already exists" in _error_line(runner.invoke(app, base + ["--device", str(fast_toml)]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_graphs_timed_side_by_side_in_one_process(tiny_onnx):
    """``interleaved``: each graph gets its turns in one child process, order alternating; decoders report ms/token per
    turn, encoders ms/call; a decoder cannot be paired with an encoder (one line, not a traceback)."""
    from edgeprune.profiling.workflow import interleaved

    llama, bert = tiny_onnx
    ms = interleaved([llama, llama], FAST, prompt=8, decode_tokens=3, sequences=4)
    assert len(ms) == 2 and all(len(turns) == 4 and all(t > 0 for t in turns) for turns in ms)
    (enc,) = interleaved([bert], FAST, seq_len=8, sequences=3, runs=2)
    assert len(enc) == 3 and all(t > 0 for t in enc)
    with pytest.raises(EdgepruneError, match="could not be timed side by side.*all be decoders or all be encoders") as err:
        interleaved([llama, bert], FAST, sequences=1)
    assert "\n" not in str(err.value)
