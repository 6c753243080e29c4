"""Recipes: every recipe in export/ runs end to end on tiny models; caching, resume after a kill, strict
validation with file:line errors, --set, the run report, and the `run` command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import error_line, terminal_sigint
from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.recipes import _label, load_recipe, recipes_dir, run_recipe
from edgeprune.report.run import reproduce_command, same_precision_sentence, speedup_note, summary_by_metric, summary_table
from edgeprune.report.tables import fmt

runner = CliRunner()
# A [fit] recipe searches many candidates: tests/test_fit.py runs the shipped one on a tiny model with a small candidate set.
RECIPES = sorted(p for p in recipes_dir().glob("*.toml") if load_recipe(p).step("fit") is None)

# Tiny-model settings: few calibration tokens, short prompts, few timed runs.
TINY_SETS = {
    "prune": ["prune.calib.samples=4", "prune.calib.seqlen=32"],
    "nm": ["nm.calib.samples=4", "nm.calib.seqlen=32"],
    "structured": ["structured.calib.samples=4", "structured.calib.seqlen=32", "structured.search_samples=2",
                   "structured.search_seqlen=32", "structured.population=4", "structured.generations=1"],
    "eval": ["eval.seqlen=32", "eval.max_windows=2"],
    "profile": ["profile.warmup=1", "profile.runs=2", "profile.workload.prompt_lengths=[8]", "profile.workload.decode_tokens=2",
                "profile.workload.seq_lengths=[8]"],
}


@pytest.fixture(scope="module")
def tiny_device(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "tiny-host.toml"
    path.write_text('name = "tiny-host"\nintra_op_threads = 1\nwarmup = 1\nruns = 2\nmemory_budget_mb = 100000\n')
    return path


def _tiny_sets(recipe: Path, model: Path) -> list[str]:
    steps = load_recipe(recipe).steps
    return [f"recipe.model={json.dumps(str(model))}"] + [s for step in steps for s in TINY_SETS.get(step.kind, [])]


def _digests(run: Path) -> dict[str, str]:
    """Hashes of every model artefact (weights and graphs) in a run folder, by path relative to it."""
    out = {}
    for f in sorted(run.rglob("*")):
        if f.is_file() and (f.suffix in (".onnx", ".safetensors") or f.name.endswith(".onnx_data")):
            out[str(f.relative_to(run))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_on_a_tiny_model(recipe, tiny_llama_dir, tiny_bert_dir, tiny_device, tmp_path):
    model = tiny_bert_dir if "minilm" in recipe.stem else tiny_llama_dir
    out = tmp_path / "run"
    result = run_recipe(recipe, out, devices=[tiny_device], sets=_tiny_sets(recipe, model))
    loaded = load_recipe(recipe)
    kinds = [s.kind for s in loaded.steps]
    # every step folder has its config and meta.json; the dense baseline was exported and evaluated too
    for step in result.steps:
        meta = json.loads((out / step.folder / "meta.json").read_text())
        assert meta["key"] == step.key and meta["seconds"] >= 0
        assert json.loads((out / step.folder / "step.json").read_text())["step"] == step.kind
    assert any(s.folder.endswith("dense-export") for s in result.steps)
    summary = json.loads((out / "run.json").read_text())
    prunes = bool({"prune", "nm", "structured"} & set(kinds))
    # a pruned and quantised variant is also compared with the dense model quantised the same way
    same_precision = [f"dense {loaded.step('quantize').config.scheme}"] if prunes and "quantize" in kinds else []
    assert list(summary["variants"]) == ["dense"] + same_precision + [_label(loaded)]
    for name, entry in summary["variants"].items():
        q = entry["quality"]
        assert (q.get("perplexity") or q.get("embedding_cosine")) > 0, name
        assert entry["onnx_bytes"] > 0
    profile = summary["profiles"]["tiny-host"]
    assert [v["name"] for v in profile["variants"]] == list(summary["variants"])
    assert all(r["status"] == "ok" for v in profile["variants"] for r in v["runs"])
    # the report carries quality, the recipe text, versions and host; the HTML has the plots
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "dense" in md and loaded.name in md and "torch" in md and "onnxruntime" in md
    assert ("the unpruned model at the same precision" in md) == prunes
    assert html.count("<img") >= 2 and html.rstrip().endswith("</html>")
    if "quantize" in kinds:
        scheme = loaded.step("quantize").config.scheme
        variant = summary["variants"][_label(loaded)]
        meta = json.loads((out / variant["model"] / "edgeprune.json").read_text())
        assert meta["export"]["quantized"]["scheme"] == scheme and meta["export"]["quantized"]["zeros_preserved"]
    # a second run reuses every step and changes nothing
    before = _digests(out)
    again = run_recipe(recipe, out, devices=[tiny_device], sets=_tiny_sets(recipe, model))
    assert again.ran == [] and len(again.reused) == len(result.steps)
    assert _digests(out) == before


def test_a_changed_setting_reruns_only_the_steps_after_it(tiny_llama_dir, tiny_device, tmp_path):
    recipe = recipes_dir() / "smollm2-135m-2of4-attention-int4.toml"
    sets = _tiny_sets(recipe, tiny_llama_dir)
    first = run_recipe(recipe, tmp_path / "run", devices=[tiny_device], sets=sets)
    second = run_recipe(recipe, tmp_path / "run", devices=[tiny_device], sets=sets + ["quantize.block_size=16"])
    reused = set(second.reused)
    assert {s.folder for s in first.steps if s.branch == "dense" or s.kind in ("prune", "export")} <= reused
    assert any(f.endswith("quantize") for f in second.ran) and any(f.endswith("report") for f in second.ran)
    assert "07-dense-int4-quantize" in second.ran and "08-dense-int4-eval" in second.ran  # quantised like the variant


@pytest.fixture(scope="module")
def int4_run(tiny_llama_dir, tiny_device, tmp_path_factory):
    """The demo's recipe (2:4 attention + int4) run once on the tiny Llama."""
    recipe = recipes_dir() / "smollm2-135m-2of4-attention-int4.toml"
    sets = _tiny_sets(recipe, tiny_llama_dir)
    return run_recipe(recipe, tmp_path_factory.mktemp("int4") / "run", devices=[tiny_device], sets=sets), recipe, sets


def test_pruned_int4_is_compared_with_dense_int4_with_its_own_eval_and_profile(int4_run, tiny_device):
    result, recipe, sets = int4_run
    out, summary = result.out, result.summary
    assert list(summary["variants"]) == ["dense", "dense int4", "attention 2:4 + int4"]
    assert [e["role"] for e in summary["variants"].values()] == ["dense", "dense-quantized", "variant"]
    assert summary["same_precision"] == {"baseline": "dense int4", "variant": "attention 2:4 + int4"}
    folders = [s.folder for s in result.steps]
    assert folders == ["01-dense-export", "02-dense-eval", "03-prune", "04-export", "05-quantize", "06-eval",
                       "07-dense-int4-quantize", "08-dense-int4-eval", "09-profile", "10-report"]
    # the dense export quantised with the recipe's own QuantizeConfig, then evaluated with its [eval]
    def step(folder: str) -> dict:
        return json.loads((out / folder / "step.json").read_text())

    def meta(folder: str) -> dict:
        return json.loads((out / folder / "meta.json").read_text())

    assert step("07-dense-int4-quantize")["config"] == step("05-quantize")["config"]
    assert meta("07-dense-int4-quantize")["inputs"]["model"] == "01-dense-export"
    assert step("08-dense-int4-eval")["config"] == step("06-eval")["config"] == step("02-dense-eval")["config"]
    assert meta("08-dense-int4-eval")["inputs"]["model"] == "07-dense-int4-quantize"
    dense_int4 = summary["variants"]["dense int4"]
    assert dense_int4["model"] == "07-dense-int4-quantize" and dense_int4["onnx_bytes"] > 0
    assert dense_int4["quality"] == json.loads((out / "08-dense-int4-eval" / "eval.json").read_text())
    assert "07-dense-int4-quantize" in Path(dense_int4["quality"]["model"]).parts and dense_int4["quality"]["perplexity"] > 0
    assert dense_int4["quality"]["perplexity"] != summary["variants"]["dense"]["quality"]["perplexity"]
    exported = json.loads((out / "07-dense-int4-quantize" / "edgeprune.json").read_text())
    assert exported["export"]["quantized"]["scheme"] == "int4" and "pruning" not in exported
    # profiled next to the others, in the same report
    profile = summary["profiles"]["tiny-host"]
    assert [v["name"] for v in profile["variants"]] == list(summary["variants"])
    assert profile["variants"][1]["quantization"] == "int4" and all(r["status"] == "ok" for r in profile["variants"][1]["runs"])
    headers, rows = summary_table(summary)
    assert [r[0] for r in rows] == list(summary["variants"]) and "speed-up" in headers
    # re-running reuses it, like every other step
    again = run_recipe(recipe, out, devices=[tiny_device], sets=sets)
    assert again.ran == [] and {"07-dense-int4-quantize", "08-dense-int4-eval"} <= set(again.reused)


def _decode(summary: dict, name: str) -> float:
    variant = next(v for v in summary["profiles"]["tiny-host"]["variants"] if v["name"] == name)
    return variant["runs"][0]["decoder"][0]["decode_ms_per_token"]


def test_what_pruning_bought_at_the_same_precision_is_computed_from_the_numbers(int4_run):
    import copy
    from html import escape

    result, _, _ = int4_run
    summary = result.summary
    base, variant = summary["variants"]["dense int4"], summary["variants"]["attention 2:4 + int4"]
    bq, vq = base["quality"]["perplexity"], variant["quality"]["perplexity"]
    bs, vs = base["onnx_bytes"], variant["onnx_bytes"]
    bd, vd = _decode(summary, "dense int4"), _decode(summary, "attention 2:4 + int4")
    sentence = same_precision_sentence(summary)
    assert sentence.startswith("Against dense int4 (the unpruned model at the same precision), pruning changed ")
    assert f"perplexity {fmt(bq)} → {fmt(vq)} ({vq / bq:.2f}×)" in sentence
    assert f"ONNX size {fmt(bs / 2**20)} → {fmt(vs / 2**20)} MiB ({vs / bs:.2f}×)" in sentence
    assert f"decode {fmt(bd)} → {fmt(vd)} ms/token ({vd / bd:.2f}×)" in sentence and "on tiny-host (1 thread)." in sentence
    assert sentence in (result.out / "report.md").read_text() and escape(sentence) in (result.out / "report.html").read_text()

    def verdict(perplexity: float, size: int, decode: float) -> str:
        changed = copy.deepcopy(summary)
        changed["variants"]["attention 2:4 + int4"] |= {"quality": {"perplexity": perplexity}, "onnx_bytes": size}
        run = next(v for v in changed["profiles"]["tiny-host"]["variants"] if v["name"] == "attention 2:4 + int4")["runs"][0]
        run["decoder"][0]["decode_ms_per_token"] = decode
        text = same_precision_sentence(changed)
        assert f"perplexity {fmt(bq)} → {fmt(perplexity)}" in text and f"decode {fmt(bd)} → {fmt(decode)} ms/token" in text
        return text.split(": at this precision pruning ")[1]

    assert verdict(1.78 * bq, bs, bd) == "costs quality and buys no size or speed on tiny-host (1 thread)."
    assert verdict(bq, bs // 2, bd / 2) == "keeps quality and buys size and speed on tiny-host (1 thread)."
    assert verdict(0.9 * bq, bs, 1.5 * bd) == "improves quality, costs speed and buys no size on tiny-host (1 thread)."
    assert verdict(1.5 * bq, bs // 2, bd) == "costs quality and buys size but no speed on tiny-host (1 thread)."


def test_terminal_summary_is_not_cut_at_80_or_120_columns(int4_run):
    import io

    from rich.console import Console

    from edgeprune.cli import _print_summary

    result, _, _ = int4_run
    names, sections = summary_by_metric(result.summary)
    values = [cell for _, rows in sections for row in rows for cell in row if cell]
    assert names == list(result.summary["variants"]) and "speed-up" in values and len(values) > 20
    for width in (80, 120):
        console = Console(width=width, file=io.StringIO())
        _print_summary(result, console)
        text = console.file.getvalue()
        lines = text.splitlines()
        assert "…" not in text and max(len(line) for line in lines) <= width
        for value in values:  # every figure whole, on one line
            assert any(value in line for line in lines), (width, value)
        for name in names:  # headers may wrap between words, never inside one
            assert all(word in text for word in name.split()), (width, name)
        flat = " ".join(text.split())
        assert same_precision_sentence(result.summary) in flat and speedup_note(result.summary) in flat


def test_reproduce_command_resumes_the_same_run_folder(int4_run, tiny_device):
    import shlex

    result, recipe, sets = int4_run
    command = reproduce_command(result.summary)
    assert f"```\n{command}\n```" in (result.out / "report.md").read_text()
    args = shlex.split(command)
    assert args[:3] == ["edgeprune", "run", str(recipe)] and args[args.index("--out") + 1] == str(result.out)
    assert args[args.index("--device") + 1] == str(tiny_device.absolute())
    assert [args[i + 1] for i, a in enumerate(args) if a == "--set"] == sets
    cli = runner.invoke(app, args[1:])  # following it reuses every finished step instead of redoing them elsewhere
    assert cli.exit_code == 0, cli.output
    assert f"0 step(s) ran, {len(result.steps)} reused" in cli.output


def _run_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=terminal_sigint)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_during_export_resumes_with_identical_artefacts(sig, tiny_llama_dir, tiny_device, tmp_path):
    recipe = recipes_dir() / "smollm2-135m-2of4-attention-int4.toml"
    sets = _tiny_sets(recipe, tiny_llama_dir)
    reference = tmp_path / "reference"
    run_recipe(recipe, reference, devices=[tiny_device], sets=sets)

    out = tmp_path / "run"
    args = ["run", str(recipe), "--device", str(tiny_device), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    proc = _run_cli(args, tmp_path)
    deadline = time.time() + 300
    # the variant's export starts once the prune step is finished: its temporary folder appears
    while time.time() < deadline and not any(p.name.startswith(".") and "-export." in p.name for p in out.glob(".*")
                                             if (out / "03-prune" / "meta.json").is_file()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(60)
    assert not (out / "04-export" / "meta.json").exists()  # the export did not finish...
    assert not (out / "04-export").exists() or sig == signal.SIGKILL  # ...and Ctrl-C left nothing of it
    resumed = _run_cli(args, tmp_path)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert re.search(r"03-prune.*: reused", output) and re.search(r"01-dense-export.*: reused", output)
    assert re.search(r"04-export.*: done", output)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _digests(out) == _digests(reference)


# --- validation ------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


HEAD = '[recipe]\nname = "r"\nmodel = "smollm2-135m"\n\n'


@pytest.mark.parametrize("body,needle", [
    ('[prune]\nmethod = "wanda"\nsparsty = "2:4"\n', "r.toml:7: unknown key 'sparsty' in [prune]. did you mean sparsity?"),
    ('[prune]\ncalib = { source = "pydoc", sampels = 4 }\n', "r.toml:6: unknown key 'sampels' in [prune.calib]"),
    ('[prune.calib]\nseqlen = "long"\n', "r.toml:6: 'seqlen' must be an integer, not str"),
    ('[export]\n[quantise]\nscheme = "int4"\n', "r.toml:6: unknown step 'quantise'"),
    ('[export]\n[quantize]\nscheme = "int3"\n', "r.toml:7: unknown quantisation 'int3'"),
    ('[quantize]\nscheme = "int4"\n', "r.toml:5: step [quantize] needs an ONNX model, but the recipe's model is PyTorch"),
    ('[export]\n[prune]\n', "r.toml:6: step [prune] needs a PyTorch model, but [export] before it makes ONNX"),
    ('[profile]\n', "step [profile] needs an ONNX model"),
    ('[export]\n[profile]\nthreads = [0]\n', "r.toml:6: thread counts [0] must all be 1 or more"),
    ('', "the recipe has no steps"),
])
def test_bad_recipes_name_file_key_and_line(tmp_path, body, needle):
    path = _write(tmp_path, HEAD + body)
    with pytest.raises(EdgepruneError) as exc:
        load_recipe(path)
    assert needle in str(exc.value)


def test_recipe_header_errors(tmp_path):
    with pytest.raises(EdgepruneError, match=r"r.toml:2: unknown key 'nmae' in \[recipe\]"):
        load_recipe(_write(tmp_path, '[recipe]\nnmae = "r"\nname = "r"\nmodel = "m"\n[export]\n'))
    with pytest.raises(EdgepruneError, match=r"\[recipe\] has no 'model'"):
        load_recipe(_write(tmp_path, '[recipe]\nname = "r"\n[export]\n'))
    with pytest.raises(EdgepruneError, match="not valid TOML"):
        load_recipe(_write(tmp_path, '[recipe\nname = "r"\n'))
    with pytest.raises(EdgepruneError, match="recipe 'nope' not found.*smollm2-135m-dense-int4"):
        load_recipe("nope")


@pytest.mark.parametrize("assignment,needle", [
    ("prune.sparsty=0.5", "--set prune.sparsty=0.5: [prune] has no key 'sparsty'"),
    ("prune.calib.sampels=4", "[prune.calib] has no key 'sampels'"),
    ("nm.pattern=2:4", "the recipe has no [nm] step"),
    ("prnue.method=wanda", "unknown step 'prnue'"),
    ("sparsity", "is not KEY=VALUE"),
    ("prune=1", "name a step and a key"),
    ("prune.calib.samples=many", "'samples' must be an integer, not str"),
])
def test_bad_set_is_a_clear_error(assignment, needle):
    with pytest.raises(EdgepruneError) as exc:
        load_recipe("smollm2-135m-2of4-attention-int4", [assignment])
    assert needle in str(exc.value)


def test_set_overrides_values_and_free_form_tables():
    recipe = load_recipe("smollm2-135m-2of4-attention-int4", ["prune.sparsity=0.5", "prune.options.steps=3",
                                                              "profile.threads=[1, 2]", "quantize.symmetric=false"])
    prune = recipe.step("prune").config
    assert prune.sparsity == "0.5"
    assert prune.options == {"steps": 3}
    assert recipe.step("profile").config.threads == (1, 2)
    assert recipe.step("quantize").config.symmetric is False


def test_run_cli_errors_leave_no_run_folder(tmp_path):
    out = tmp_path / "run"
    bad = _write(tmp_path, HEAD + '[prune]\nmethdo = "wanda"\n')
    result = runner.invoke(app, ["run", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "r.toml:6: unknown key 'methdo' in [prune]" in error_line(result)
    assert not out.exists()
    result = runner.invoke(app, ["run", "smollm2-135m-dense-int4", "--device", "devices/nope.toml", "--out", str(out)])
    assert result.exit_code == 2 and "device profile 'devices/nope.toml' not found" in error_line(result)
    assert not out.exists()
    result = runner.invoke(app, ["run", "smollm2-135m-dense-int4", "--set", "export.atoll=1", "--out", str(out)])
    assert result.exit_code == 2 and "[export] has no key 'atoll'" in error_line(result)


def test_unwritable_out_is_a_clear_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = runner.invoke(app, ["run", "smollm2-135m-dense-int4", "--out", str(a_file / "run")])  # works as root too
    assert result.exit_code == 2 and "is a file, not a folder" in error_line(result)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            result = runner.invoke(app, ["run", "smollm2-135m-dense-int4", "--out", str(locked / "run")])
            assert result.exit_code == 2 and "cannot write to" in error_line(result)
    finally:
        locked.chmod(0o700)


def test_disk_full_during_a_step_leaves_no_half_written_step(tiny_llama_dir, tiny_device, tmp_path, monkeypatch):
    import errno

    from edgeprune import recipes

    recipe = recipes_dir() / "smollm2-135m-dense-int4.toml"
    sets = _tiny_sets(recipe, tiny_llama_dir)
    real = recipes.STEPS.get("quantize").run

    def full_disk(ctx, config, out):
        real(ctx, config, out)  # the step writes its files, then the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import dataclasses

    monkeypatch.setitem(recipes.STEPS._items, "quantize", dataclasses.replace(recipes.STEPS.get("quantize"), run=full_disk))
    out = tmp_path / "run"
    with pytest.raises(EdgepruneError, match="No space left on device"):
        run_recipe(recipe, out, devices=[tiny_device], sets=sets)
    assert (out / "01-dense-export" / "meta.json").is_file()  # finished steps are kept
    assert not (out / "03-quantize").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    result = run_recipe(recipe, out, devices=[tiny_device], sets=sets)
    assert "01-dense-export" in result.reused and "03-quantize" in result.ran
