"""`edgeprune fit`: candidates, budgets, the choice rule, the report's Pareto data, the cache, and a whole run on a tiny
model (CLI included)."""

from __future__ import annotations

import json
import statistics

import pytest
from typer.testing import CliRunner

from conftest import error_line, make_tiny_llama
from edgeprune.cli import app
from edgeprune.data import CalibConfig
from edgeprune.errors import EdgepruneError
from edgeprune.fit import Budget, Candidate, FitConfig, fit, generate_candidates, parse_budget, resolve_budget
from edgeprune.fit.workflow import Entry, choose, closest, no_fit_error, pareto_front, shortlist
from edgeprune.onnx.configs import QuantizeConfig
from edgeprune.profiling.devices import load_device
from edgeprune.profiling.workflow import Workload
from edgeprune.report.fit import candidate_table, pareto_points, to_html, to_markdown
from edgeprune.structured import StructuredConfig

runner = CliRunner()


# --- candidates -------------------------------------------------------------------------------------------


def test_candidates_cover_dense_structured_and_nm_only_with_kernels():
    cands = generate_candidates(keeps=(0.6, 0.8), schemes=("int4", "int8"), drop_blocks=(False, True))
    keys = [c.key for c in cands]
    assert keys[:3] == ["dense-int4-h4", "dense-int4-h8", "dense-int8"]
    # each keep ratio (largest first) × block removal × scheme; int4 structured with a 4-bit head
    assert keys[3:] == ["keep80-int4-h4", "keep80-int8", "keep80-drop-int4-h4", "keep80-drop-int8",
                        "keep60-int4-h4", "keep60-int8", "keep60-drop-int4-h4", "keep60-drop-int8"]
    assert len(set(keys)) == len(keys)
    assert not any(c.sparsity for c in cands)
    with_nm = generate_candidates(keeps=(0.6,), schemes=("int4",), drop_blocks=(False,), nm_kernels=True)
    assert [c.key for c in with_nm if c.sparsity] == ["2of4-wanda-int4-h4"]
    assert Candidate(keep=0.6).structure == Candidate(keep=0.6, scheme="int8").structure == "keep60"


@pytest.mark.parametrize("kwargs, message", [
    (dict(keeps=(1.2,)), "keep ratio 1.2"),
    (dict(keeps=(0.5, 0.5)), "repeat"),
    (dict(schemes=("fp8",)), "unknown quantisation 'fp8'"),
    (dict(schemes=()), "no quantisation scheme"),
    (dict(nm_kernels=True, nm_patterns=("5:4",)), "5:4"),
])
def test_candidate_errors(kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        generate_candidates(**kwargs)


def test_shipped_cpu_profiles_declare_no_nm_kernels():
    from edgeprune.profiling.devices import devices_dir

    profiles = sorted(devices_dir().glob("*.toml"))
    assert profiles and all(load_device(p).nm_kernels is False for p in profiles)


# --- budgets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"decode_ms": -1}, "must be positive"),
    ({"memory_mb": 0}, "must be positive"),
    ({"speed": 3}, "unknown budget key 'speed'"),
    ({"size_mb": "big"}, "is not a number"),
])
def test_budget_errors(values, message):
    with pytest.raises(EdgepruneError, match=message):
        parse_budget(values)


def test_budget_comes_from_the_profile_and_flags_replace_it():
    phone = load_device("phone-arm-big4")  # memory 512, p90 400, decode 50
    dec = resolve_budget({"decode_ms": 20}, phone, is_decoder=True)
    assert dec.limits() == {"decode_ms": 20, "ttft_ms": 400, "memory_mb": 512}
    enc = resolve_budget({}, phone, is_decoder=False)
    assert enc.limits() == {"latency_ms": 400, "memory_mb": 512}
    with pytest.raises(EdgepruneError, match="does not apply to an encoder"):
        resolve_budget({"decode_ms": 5}, phone, is_decoder=False)
    with pytest.raises(EdgepruneError, match="no budget given"):
        resolve_budget({}, load_device("this-host"), is_decoder=True)
    b = Budget(decode_ms=10, size_mb=100)
    assert b.misses({"decode_ms": 12, "size_mb": 50}) == {"decode_ms": pytest.approx(1.2)}
    assert b.misses({"size_mb": 50}) == {"decode_ms": float("inf")}  # a figure not measured cannot pass


@pytest.mark.parametrize("args, message", [
    (["--max-decode-ms", "-2"], "must be positive"),
    (["--max-memory-mb", "0"], "must be positive"),
    (["--max-latency-ms", "5"], "does not apply to a decoder"),
    ([], "no budget given"),
    (["--max-decode-ms", "5", "--keep", "0.5,x"], "not a comma-separated list"),
    (["--max-decode-ms", "5", "--drop-blocks", "maybe"], "--drop-blocks 'maybe'"),
    (["--max-decode-ms", "5", "--device", "no-such-device"], "no-such-device"),
])
def test_fit_cli_bad_input_is_one_line_and_writes_nothing(args, message, tiny_llama_dir, tmp_path):
    device = ["--device", "this-host"] if "--device" not in args else []
    result = runner.invoke(app, ["fit", str(tiny_llama_dir), *device, "--out", str(tmp_path / "fit"), *args])
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert not (tmp_path / "fit" / "model").exists() and not (tmp_path / "fit" / "report.json").exists()


def test_fit_refuses_an_out_folder_that_is_not_a_fit_folder(tiny_llama_dir, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EdgepruneError, match="not a fit folder"):
        fit(str(tiny_llama_dir), "this-host", tmp_path / "other", FitConfig(budget=Budget(decode_ms=5)))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# --- the choice rule on synthetic measurements ------------------------------------------------------------


def _entry(key_keep: float, scheme: str, predicted: dict, measured: dict | None = None) -> Entry:
    return Entry(Candidate(keep=key_keep, scheme=scheme), predicted=predicted, measured=measured or {})


def test_choice_is_the_best_measured_quality_that_meets_every_limit():
    budget = Budget(decode_ms=8, memory_mb=300)
    fast_bad = _entry(0.5, "int4", {}, {"decode_ms": 6, "memory_mb": 200, "quality": 30})
    fast_good = _entry(0.7, "int4", {}, {"decode_ms": 7.9, "memory_mb": 290, "quality": 20})
    best_but_slow = _entry(1.0, "int4", {}, {"decode_ms": 9, "memory_mb": 250, "quality": 12})
    too_big = _entry(0.7, "int8", {}, {"decode_ms": 5, "memory_mb": 400, "quality": 15})
    predicted_only = _entry(0.6, "int4", {"decode_ms": 6, "memory_mb": 100, "quality": 1})  # never chosen unmeasured
    entries = [fast_bad, fast_good, best_but_slow, too_big, predicted_only]
    assert choose(entries, budget) is fast_good
    assert choose(entries, Budget(decode_ms=5.5)) is too_big
    assert choose(entries, Budget(decode_ms=1)) is None
    entry, misses, how = closest(entries, Budget(decode_ms=1))
    assert entry is too_big and how == "measured" and misses == {"decode_ms": 5}
    message = str(no_fit_error(entries, Budget(decode_ms=1)))
    assert "closest: structured 70% + int8" in message and "5.00×" in message and "\n" not in message


def test_profile_rounds_combine_as_medians_and_timings_as_ratios_to_the_reference():
    from edgeprune.fit.workflow import combine_rounds

    def run(decode, memory, ok=True):
        return {"figures": {"decode_ms": decode, "ttft_ms": 2 * decode, "memory_mb": memory, "size_mb": 50.0}, "ok": ok, "reason": None if ok else "oom"}

    alone = combine_rounds([run(10, 300), run(14, 310), run(11, 305)])
    assert alone["figures"] == {"decode_ms": 11, "ttft_ms": 22, "memory_mb": 305, "size_mb": 50.0}
    # a slow second round slows both the candidate and the reference: the ratio holds, so the figure does too
    paired = combine_rounds([run(6, 200), run(12, 200), run(6.6, 200)], [run(10, 300), run(20, 300), run(11, 300)],
                            {"decode_ms": 10.5, "ttft_ms": 21.0})
    assert paired["figures"]["decode_ms"] == pytest.approx(0.6 * 10.5) and paired["figures"]["ttft_ms"] == pytest.approx(0.6 * 21.0)
    assert paired["figures"]["memory_mb"] == 200  # not a timing: its own median
    assert paired["rounds"][1]["decode_ms"] == 12 and paired["reference_rounds"][1]["decode_ms"] == 20
    # timed side by side in one process: the median per-turn ratio sets the timing it covers; the rest keep the rounds
    side = combine_rounds([run(6, 200), run(12, 200), run(6.6, 200)], [run(10, 300), run(20, 300), run(11, 300)],
                          {"decode_ms": 10.5, "ttft_ms": 21.0}, {"decode_ms": ([5.0, 9.0, 5.6, 5.2], [10.0, 10.0, 11.0, 10.0])})
    assert side["figures"]["decode_ms"] == pytest.approx((0.52 + 0.5090909) / 2 * 10.5)  # median of 0.5, 0.9, 0.509, 0.52
    assert side["figures"]["ttft_ms"] == pytest.approx(0.6 * 21.0)
    assert side["side_by_side"]["decode_ms"]["turns"][1] == 9.0 and paired["side_by_side"] is None
    assert combine_rounds([run(6, 200), run(0, 0, ok=False)])["ok"] is False  # one failed round fails the candidate
    with pytest.raises(EdgepruneError, match="rounds"):
        FitConfig(rounds=0)
    with pytest.raises(EdgepruneError, match="side_by_side"):
        FitConfig(side_by_side=-1)


def test_shortlist_takes_the_predicted_front_near_the_budget_and_skips_what_cannot_beat_the_choice():
    budget = Budget(decode_ms=10)
    a = _entry(0.8, "int4", {"decode_ms": 9, "memory_mb": 100, "size_mb": 50, "quality": 14})
    b = _entry(0.7, "int4", {"decode_ms": 8, "memory_mb": 100, "size_mb": 50, "quality": 16})
    dominated = _entry(0.6, "int8", {"decode_ms": 9.5, "memory_mb": 120, "size_mb": 60, "quality": 17})
    near = _entry(0.9, "int4", {"decode_ms": 11, "memory_mb": 100, "size_mb": 50, "quality": 12})  # 10% over: within the margin
    far = _entry(0.95, "int4", {"decode_ms": 13, "memory_mb": 100, "size_mb": 50, "quality": 11})
    entries = [a, b, dominated, near, far]
    keys = ("decode_ms", "memory_mb", "size_mb")
    assert set(map(id, pareto_front([a, b, dominated], ("quality", *keys)))) == {id(a), id(b)}
    assert shortlist(entries, budget, 0.15, 3, keys) == [near, a, b]
    assert shortlist(entries, budget, 0.15, 1, keys) == [near]
    # once a measured candidate meets the budget at quality 15, only what is predicted to beat it is left
    measured = _entry(1.0, "int4", {}, {"decode_ms": 9, "quality": 15})
    assert shortlist(entries + [measured], budget, 0.15, 5, keys) == [near, a]


def test_report_pareto_points_mark_the_front_the_budget_and_the_choice():
    data = {"model": "m", "device": "d", "threads": 2, "budget": {"decode_ms": 8}, "quality_metric": "perplexity", "chosen": "b",
            "rounds": 1, "seconds": 3.0, "measured_all": False, "shortlist_choice": "b", "entries": [
                {"key": "a", "label": "A", "measured": {"decode_ms": 10, "quality": 11, "memory_mb": 300}, "predicted": {},
                 "meets_budget": False, "misses": {"decode_ms": 1.25}, "basis": "measured", "shortlisted": False,
                 "candidate": {"keep": 1.0, "sparsity": None}},
                {"key": "b", "label": "B", "measured": {"decode_ms": 7, "quality": 14, "memory_mb": 200},
                 "predicted": {"decode_ms": 7.5, "quality": 15}, "meets_budget": True, "misses": {}, "basis": "model",
                 "shortlisted": True, "candidate": {"keep": 0.6, "sparsity": None}},
                {"key": "c", "label": "C", "measured": {"decode_ms": 7.5, "quality": 16, "memory_mb": 250}, "predicted": {"quality": 15},
                 "meets_budget": True, "misses": {}, "basis": "model", "shortlisted": True, "candidate": {"keep": 0.5, "sparsity": None}},
                {"key": "d", "label": "D", "measured": {}, "predicted": {"decode_ms": 5, "quality": 40}, "meets_budget": False,
                 "misses": {}, "basis": "model", "shortlisted": False, "candidate": {"keep": 0.4, "sparsity": None}}]}
    points = {p["key"]: p for p in pareto_points(data)}
    assert set(points) == {"a", "b", "c"}  # only measured candidates are drawn
    assert points["a"]["pareto"] and points["b"]["pareto"] and not points["c"]["pareto"]  # c: slower, worse, bigger than b
    assert points["b"]["chosen"] and not points["a"]["meets_budget"]
    headers, rows = candidate_table(data)
    assert rows[1][0].startswith("★ ") and rows[0][-1].startswith("FAIL decode ×1.25") and rows[3][-1] == "not measured"
    assert "0.25" not in rows[1][headers.index("pred./meas. speed")] and rows[1][headers.index("pred./meas. speed")] == "1.07"
    assert "Pruning pays here" in to_markdown(data)
    assert "<img" in to_html(data)


# --- a whole run on a tiny model --------------------------------------------------------------------------


TINY = FitConfig(
    keeps=(0.5,), schemes=("int4",), drop_blocks=(False,), seqlen=32, proxy_windows=2, eval_windows=4,
    structured=StructuredConfig(calib=CalibConfig(samples=4, seqlen=32), search_samples=2, search_seqlen=32, population=4, generations=2),
    quantize=QuantizeConfig(calib=CalibConfig(samples=4, seqlen=32)),
    workload=Workload(prompt_lengths=(16,), decode_tokens=4, op_profile=False), rounds=2, side_by_side=4,
)


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("fit-llama")
    make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=96,
                    intermediate_size=256, initializer_range=0.2, max_position_embeddings=1024).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_device(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit-device") / "tiny-host.toml"
    path.write_text('name = "tiny-host"\nintra_op_threads = 1\nwarmup = 1\nruns = 3\n')
    return path


def test_fit_end_to_end_caches_resumes_and_fails_loudly(gqa_dir, tiny_device, tmp_path, monkeypatch):
    import dataclasses

    import edgeprune.fit.workflow as workflow

    out = tmp_path / "fit"
    # Ctrl-C in the middle (while the structured candidate is being made): finished stages stay, nothing else is written
    real_structured = workflow._Fit.torch_model

    def interrupted(self, c):
        if c.keep < 1:
            raise KeyboardInterrupt
        return real_structured(self, c)

    monkeypatch.setattr(workflow._Fit, "torch_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(str(gqa_dir), tiny_device, out, dataclasses.replace(TINY, budget=Budget(decode_ms=1e6)))
    finished = {p.name for p in (out / "cache").iterdir() if (p / "meta.json").is_file()}
    assert {"onnx-dense", "quant-dense-int4-h4", "profile-tiny-host-dense-int4-h4"} <= finished
    assert not (out / "model").exists() and not (out / "report.json").exists()
    assert not [p for p in (out / "cache").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(workflow._Fit, "torch_model", real_structured)

    logs: list[str] = []
    report = fit(str(gqa_dir), tiny_device, out, dataclasses.replace(TINY, budget=Budget(decode_ms=1e6), measure_all=True), log=logs.append)
    assert not any(line.startswith(("onnx-dense", "profile-tiny-host-dense")) for line in logs)  # resumed: the dense stages were not redone
    assert any(line.startswith("torch-keep50") for line in logs)
    keys = {e.candidate.key for e in report.entries}
    assert keys == {"dense-int4-h4", "dense-int4-h8", "keep50-int4-h4"}
    assert all(e.measured.get("decode_ms") and e.measured.get("quality") for e in report.entries)
    pruned = report.entry("keep50-int4-h4")
    assert pruned.predicted["decode_ms"] > 0 and pruned.predicted["size_mb"] < report.entry("dense-int4-h4").measured["size_mb"]
    assert report.chosen == min(report.entries, key=lambda e: e.measured["quality"]).candidate.key  # the loose budget: best quality
    shipped = out / "model"
    assert (shipped / "model.onnx").is_file() and json.loads((shipped / "fit.json").read_text())["chosen"] == report.chosen
    data = json.loads((out / "report.json").read_text())
    assert data["chosen"] == report.chosen and len(data["entries"]) == 3 and (out / "report.html").read_text().count("<img") == 1
    # every timing from 2 alternating rounds; the pruned candidate's relative to dense int4, profiled again beside it
    assert data["profile_rounds"] == 2
    stored = json.loads((out / "cache" / "profile-tiny-host-keep50-int4-h4" / "meta.json").read_text())["result"]
    assert len(stored["rounds"]) == 2 and len(stored["reference_rounds"]) == 2
    reference = report.entry("dense-int4-h4").measured["decode_ms"]
    ttft = [r["ttft_ms"] / ref["ttft_ms"] for r, ref in zip(stored["rounds"], stored["reference_rounds"])]
    assert pruned.measured["ttft_ms"] == pytest.approx(sum(ttft) / 2 * report.entry("dense-int4-h4").measured["ttft_ms"])  # median of two
    # decode: timed beside the reference in one process, side_by_side turns each; the median per-turn ratio
    side = stored["side_by_side"]["decode_ms"]
    assert len(side["turns"]) == len(side["reference_turns"]) == TINY.side_by_side
    assert pruned.measured["decode_ms"] == pytest.approx(
        statistics.median(m / r for m, r in zip(side["turns"], side["reference_turns"])) * reference)

    # a re-run with another budget measures nothing again; the choice follows the new budget
    fastest = min(report.entries, key=lambda e: e.measured["decode_ms"])
    logs.clear()
    again = fit(str(gqa_dir), tiny_device, out, dataclasses.replace(TINY, budget=Budget(decode_ms=fastest.measured["decode_ms"] * 1.0001),
                                                                     measure_all=True), log=logs.append)
    assert logs == [] or all(line.startswith(("round", "predicting")) for line in logs), logs
    assert again.entry(again.chosen).measured["decode_ms"] <= fastest.measured["decode_ms"] * 1.0001

    # nothing can meet 1 µs/token: one line naming the closest candidate, exit 2, the previous model left as it was
    before = (shipped / "fit.json").read_text()
    result = runner.invoke(app, ["fit", str(gqa_dir), "--device", str(tiny_device), "--out", str(out), "--max-decode-ms", "0.001",
                                 "--keep", "", "--schemes", "int4"])  # dense int4 only (the CLI's default configs: stages made anew)
    assert result.exit_code == 2
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]  # progress lines come before it on stderr
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    line = errors[0]
    assert "no candidate meets the budget" in line and "closest:" in line and "loosen the budget" in line
    assert (shipped / "fit.json").read_text() == before


def test_fit_is_a_recipe_step_whose_folder_is_the_chosen_model(gqa_dir, tiny_device, tmp_path):
    from edgeprune.recipes import run_recipe

    recipe = tmp_path / "fit.toml"
    recipe.write_text(f"""
[recipe]
name = "tiny-fit"
model = "{gqa_dir}"
devices = ["{tiny_device}"]
baseline = false

[fit]
keeps = []
schemes = ["int4"]
seqlen = 32
proxy_windows = 2
eval_windows = 2
budget = {{ decode_ms = 1e6, size_mb = 1e6 }}
quantize = {{ calib = {{ samples = 4, seqlen = 32 }} }}
workload = {{ prompt_lengths = [16], decode_tokens = 4, op_profile = false }}

[eval]
seqlen = 32
max_windows = 2

[report]
""")
    result = run_recipe(recipe, tmp_path / "run")
    step = next(p for p in (tmp_path / "run").iterdir() if p.name.endswith("-fit"))
    assert (step / "model.onnx").is_file() and (step / "fit-report" / "report.html").is_file()
    meta = json.loads((step / "meta.json").read_text())
    assert meta["outputs"]["chosen"].startswith("dense + int4") and meta["outputs"]["candidates"] == 2
    assert (tmp_path / "run" / "fit-cache" / "cache").is_dir()
    assert result is not None
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe.read_text().replace("decode_ms = 1e6", "speed = 3"))
    with pytest.raises(EdgepruneError, match="speed"):
        run_recipe(bad, tmp_path / "run-bad")
    assert not (tmp_path / "run-bad").exists()


def test_relative_limits_are_multiples_of_the_reference_figures():
    from edgeprune.fit.budget import parse_limit

    assert parse_limit("0.8x", "--max-decode-ms") == (0.8, True) and parse_limit("12", "--max-decode-ms") == (12.0, False)
    with pytest.raises(EdgepruneError, match="'fast' is not a number"):
        parse_limit("fast", "--max-decode-ms")
    b = Budget(decode_ms=0.8, size_mb=90, relative=("decode_ms",))
    assert "0.8× dense int4" in b.describe()
    assert b.absolute({"decode_ms": 10.0, "size_mb": 80}, "dense").limits() == {"decode_ms": pytest.approx(8.0), "size_mb": 90}
    with pytest.raises(EdgepruneError, match="relative but has no limit"):
        Budget(relative=("decode_ms",))
    with pytest.raises(EdgepruneError, match="has no decode figure"):
        b.absolute({}, "dense")
    assert parse_budget({"decode_ms": 0.8, "relative": ["decode_ms"]}).relative == ("decode_ms",)


def test_the_shipped_fit_recipe_runs_on_a_tiny_model(gqa_dir, tiny_device, tmp_path):
    from edgeprune.recipes import load_recipe, recipes_dir, run_recipe

    recipe = recipes_dir() / "smollm2-135m-fit-phone.toml"
    fit_step = load_recipe(recipe).step("fit").config
    assert fit_step.budget.relative == ("decode_ms",) and fit_step.budget.decode_ms == 0.8
    sets = [f"recipe.model={json.dumps(str(gqa_dir))}", "fit.keeps=[]", "fit.schemes=[\"int4\"]", "fit.seqlen=32",
            "fit.proxy_windows=2", "fit.eval_windows=2", "fit.quantize.calib.samples=4", "fit.quantize.calib.seqlen=32",
            "fit.workload.prompt_lengths=[16]", "fit.workload.decode_tokens=4", "fit.budget.decode_ms=100000"]
    result = run_recipe(recipe, tmp_path / "run", devices=[tiny_device], sets=sets)
    step = next(s for s in result.steps if s.kind == "fit")
    assert (tmp_path / "run" / step.folder / "model.onnx").is_file()
    assert "dense int4" in json.loads((tmp_path / "run" / step.folder / "fit-report" / "report.json").read_text())["budget_rule"]


def test_fit_an_encoder_on_latency_per_sentence_and_cosine(tiny_bert_dir, tiny_device, tmp_path):
    import dataclasses

    config = dataclasses.replace(TINY, schemes=("int8",), budget=Budget(latency_ms=1e6, memory_mb=1e6), measure_all=True,
                                 workload=Workload(seq_lengths=(16,), op_profile=False))
    report = fit(str(tiny_bert_dir), tiny_device, tmp_path / "fit", config)
    assert report.quality_metric == "embedding_cosine"
    assert {e.candidate.key for e in report.entries} == {"dense-int8", "keep50-int8"}
    for e in report.entries:
        assert e.measured["latency_ms"] > 0 and 0 <= e.measured["quality"] < 1  # 1 - cosine against the dense model
        assert "decode_ms" not in e.measured
    pruned = report.entry("keep50-int8")
    assert pruned.predicted["latency_ms"] > 0 and pruned.predicted["size_mb"] < report.entry("dense-int8").measured["size_mb"]
    assert "cosine" in (tmp_path / "fit" / "report.md").read_text()
    with pytest.raises(EdgepruneError, match="does not apply to an encoder"):
        fit(str(tiny_bert_dir), tiny_device, tmp_path / "fit", dataclasses.replace(config, budget=Budget(decode_ms=3)))
