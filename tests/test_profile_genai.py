"""Profiling decoders with ORT GenAI's generator (``--backend genai|both``): the same figures as the ort loop, from the
same prompts, side by side in one report; the same greedy tokens as the ort loop; the thread count reaches ORT GenAI's
session; encoders, folders without genai_config.json and remote devices are refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("onnxruntime_genai")

from conftest import error_line  # noqa: E402

from edgeprune.cli import app  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.profiling import ProfileConfig, Workload, profile  # noqa: E402
from edgeprune.profiling.devices import DeviceProfile  # noqa: E402
from edgeprune.profiling.results import Report  # noqa: E402

runner = CliRunner()
TINY = Workload(prompt_lengths=(16, 24), decode_tokens=4)
FAST = DeviceProfile(name="test-tiny", warmup=1, runs=3, decode_ms_per_token_budget=1000)
EOS = 2  # the tiny tokenizer's </s>


@pytest.fixture(scope="module")
def lively_onnx(tmp_path_factory, tiny_llama_lively_dir):
    """The lively tiny Llama (greedy tokens vary) exported fused, with its genai_config.json."""
    from edgeprune.onnx import ExportConfig, export

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("genai-profile") / "lively"
        export(str(tiny_llama_lively_dir), out, ExportConfig(verify=False))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def both_report(tmp_path_factory, lively_onnx, tiny_onnx):
    out = tmp_path_factory.mktemp("genai-profile-report") / "report"
    report = profile([lively_onnx, tiny_onnx[1]], FAST, threads=[1, 2], out=out, workload=TINY, backend="both")
    return report, out


def test_both_backends_give_every_decoder_figure_side_by_side(both_report):
    report, out = both_report
    assert [(v.name, v.backend) for v in report.variants] == [("lively (ort)", "ort"), ("lively (genai)", "genai"), ("bert", "ort")]
    for v in report.variants[:2]:
        assert [r.threads for r in v.runs] == [1, 2]
        for run in v.runs:
            assert run.ok, run.reason
            assert run.session_ms > 0 and run.first_inference_ms > 0 and run.memory.peak_mb > run.memory.baseline_mb > 0
            assert [d.prompt_tokens for d in run.decoder] == [16, 24]
            for d in run.decoder:
                assert d.prefill.count == FAST.runs and d.prefill.p50 > 0
                assert d.decode.count % TINY.decode_tokens == 0 and d.decode.min > 0 and d.decode_tokens_per_s > 0
            assert run.op_profile.runs == 1 + TINY.decode_tokens and run.op_profile.kernel_ms > 0  # prefill + each step
            assert [b.name for b in run.budgets] == ["decode_ms_per_token_budget"]
    genai = report.variants[1].runs[0]
    assert genai.ort["backend"] == "genai" and genai.ort["past_present_share_buffer"] is True
    assert any("bert is an encoder" in n and "ort backend alone" in n for n in report.notes)

    data = json.loads((out / "report.json").read_text())
    assert [(v["name"], v["backend"]) for v in data["variants"]] == [(v.name, v.backend) for v in report.variants]
    for v in data["variants"][:2]:
        assert all(d["decode_ms_per_token"] > 0 and d["prefill"]["p50"] > 0 for r in v["runs"] for d in r["decoder"])
    assert Report.from_dict(data).variants[1].backend == "genai"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| variant | backend | threads |" in md and "| lively (genai) | genai | 1 | ok |" in md
    assert "ORT GenAI 0.18" in md and "greedy tokens same as the ort loop" in md and "lively (genai)" in html
    assert len(list((out / "traces").glob("*genai*.json"))) == 2


def test_genai_generates_the_ort_loops_greedy_tokens(both_report):
    report, _ = both_report
    ort, genai = report.variants[:2]
    for mine, theirs in zip(genai.runs, ort.runs):
        for a, b in zip(mine.decoder, theirs.decoder):
            assert len(a.tokens) == TINY.decode_tokens + 1 and EOS not in b.tokens  # ORT GenAI would not pick EOS
            assert a.tokens == b.tokens
    assert len({t for d in ort.runs[0].decoder for t in d.tokens}) > 3  # prompts differ, generations move
    assert genai.quality["greedy_tokens_same_as_ort"] == f"{TINY.decode_tokens + 1}/{TINY.decode_tokens + 1}"
    assert "greedy_tokens_same_as_ort" not in ort.quality and not [n for n in report.notes if "leave the ort loop" in n]


def test_the_thread_count_reaches_genais_session(both_report):
    """ORT GenAI takes intra_op_num_threads from genai_config.json's session options: one more pool thread at 2."""
    report, _ = both_report
    for v in report.variants[:2]:
        one, two = v.runs
        assert (one.ort["intra_op_threads"], two.ort["intra_op_threads"]) == (1, 2)
        assert two.ort["process_threads"] - one.ort["process_threads"] == 1, v.name


def test_run_report_keeps_both_backends_apart(both_report):
    from edgeprune.report.run import summary_table

    report, _ = both_report
    summary = {"variants": {"lively": {"role": "dense", "onnx_bytes": 1000}}, "profiles": {"here": report.to_dict()}}
    _, rows = summary_table(summary)
    assert [(r[0], r[3], r[4]) for r in rows] == [("lively", "here, ort", "1"), ("lively", "here, ort", "2"),
                                                  ("lively", "here, genai", "1"), ("lively", "here, genai", "2")]


def test_cli_genai_backend_alone(lively_onnx, tmp_path):
    result = runner.invoke(app, ["profile", str(lively_onnx), "--device", "this-host", "--out", str(tmp_path / "r"),
                                 "--backend", "genai", "--threads", "1", "--prompt-lengths", "8", "--decode-tokens", "3",
                                 "--warmup", "0", "--runs", "2", "--no-op-profile", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (v,) = data["variants"]
    assert (v["name"], v["backend"]) == ("lively", "genai") and v["runs"][0]["status"] == "ok"
    assert v["runs"][0]["decoder"][0]["decode"]["count"] == 3  # one sequence of 3 steps already makes the 2 runs


def test_encoder_with_the_genai_backend_is_one_line(tiny_onnx, tmp_path):
    result = runner.invoke(app, ["profile", str(tiny_onnx[1]), "--device", "this-host", "--out", str(tmp_path / "r"),
                                 "--backend", "genai"])
    assert result.exit_code != 0
    line = error_line(result)
    assert "bert is an encoder" in line and "decoders only" in line and "--backend ort" in line
    assert not (tmp_path / "r").exists()


def test_folder_without_genai_config_is_one_line(lively_onnx, tmp_path):
    folder = tmp_path / "no-genai"
    shutil.copytree(lively_onnx, folder)
    (folder / "genai_config.json").unlink()
    for backend in ("genai", "both"):
        result = runner.invoke(app, ["profile", str(folder), "--device", "this-host", "--out", str(tmp_path / "r"),
                                     "--backend", backend])
        assert result.exit_code != 0
        line = error_line(result)
        assert "has no genai_config.json" in line and "re-export it with edgeprune export" in line, line
    assert not (tmp_path / "r").exists()


def test_bad_backend_and_remote_genai_are_refused(lively_onnx, tmp_path):
    with pytest.raises(EdgepruneError, match="backend 'gpu' is unknown"):
        ProfileConfig(backend="gpu")
    result = runner.invoke(app, ["profile", str(lively_onnx), "--device", "this-host", "--out", str(tmp_path / "r"),
                                 "--backend", "gpu"])
    assert "backend 'gpu' is unknown" in error_line(result)
    remote = DeviceProfile(name="pi", remote="ssh://pi@example.invalid")
    with pytest.raises(EdgepruneError, match="genai backend measures on this host only"):
        profile([lively_onnx], remote, out=tmp_path / "r", backend="genai")
    assert not (tmp_path / "r").exists()


def test_recipe_profile_step_takes_the_backend(tmp_path):
    from edgeprune.recipes import load_recipe

    head = '[recipe]\nname = "r"\nmodel = "smollm2-135m"\n\n[export]\n[profile]\n'
    (tmp_path / "r.toml").write_text(head + 'backend = "both"\n')
    assert load_recipe(tmp_path / "r.toml").step("profile").config.backend == "both"
    (tmp_path / "r.toml").write_text(head + 'backend = "gpu"\n')
    with pytest.raises(EdgepruneError, match=r"r.toml:7: backend 'gpu' is unknown"):
        load_recipe(tmp_path / "r.toml")


def test_token_comparison_on_hand_made_results():
    from edgeprune.profiling.workflow import _compare_tokens
    from edgeprune.profiling.results import DecoderResult, Latency, RunResult, VariantResult

    lat = Latency.from_values([1.0])

    def variant(backend, *tokens):
        run = RunResult(threads=1, status="ok", decoder=[DecoderResult(8 * (i + 1), 4, lat, lat, tokens=t) for i, t in enumerate(tokens)])
        return VariantResult(f"m ({backend})", "m/model.onnx", "decoder", 1, runs=[run], backend=backend)

    ort, genai = variant("ort", [5, 6, 7, 8, 9], [1, 2, 3, 4, 5]), variant("genai", [5, 6, 7, 8, 9], [1, 2, 0, 4, 5])
    notes = _compare_tokens([ort, genai])
    assert genai.quality == {"greedy_tokens_same_as_ort": "2/5"} and ort.quality == {}
    assert notes == ["m (genai) @ 1 thread(s): after the 16-token prompt its greedy tokens leave the ort loop's at token 3 of 5"]
    assert _compare_tokens([genai, ort]) == [] and _compare_tokens([ort, variant("genai", [5, 6, 7, 8, 9])]) == []
