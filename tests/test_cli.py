"""The CLI: happy paths, and every bad input gets a one-line error, exit code 2 and no partial output."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import error_line, no_leftovers
from edgeprune.cli import app

runner = CliRunner()
SMALL = ["--samples", "4", "--seqlen", "32"]








def test_prune_then_eval(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda", "--sparsity", "2:4", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    assert "50.0% sparsity" in result.stdout
    js = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(out), "--seqlen", "32", "--max-windows", "4", "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["perplexity"] > 1 and data["tokens"] == 128
    assert data["reference"] == str(tiny_llama_dir) and len(data["attention_error"]) == 2
    assert data["attention_error"][0] > 0


def test_eval_encoder_reports_cosine(tiny_bert_dir, tmp_path):
    out = tmp_path / "bert"
    assert runner.invoke(app, ["prune", str(tiny_bert_dir), "--method", "sparsegpt", "--sparsity", "0.5", "--out", str(out), *SMALL]).exit_code == 0
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 0.5 < data["embedding_cosine"] < 1.0 and data["sentences"] > 10


def test_list_shows_registries():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for word in ("attention", "wanda", "sparsegpt", "magnitude", "smollm2-135m", "minilm-l6", "llama", "bert"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sparsity", "1.5"], "outside (0, 1)"),
        (["--sparsity", "0"], "outside (0, 1)"),
        (["--sparsity", "3:2"], "0 < N < M"),
        (["--sparsity", "2:0"], "0 < N < M"),
        (["--sparsity", "2:7"], "not divisible by M=7"),
        (["--samples", "100000"], "too short"),
        (["--torch-device", "cuda"], "CUDA"),
        (["--method", "obs"], "unknown pruning method"),
        (["--calib", "no-such-file.txt"], "not found"),
    ],
)
def test_prune_bad_input(tiny_llama_dir, tmp_path, args, needle):
    if needle == "CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--out", str(tmp_path / "out"), *SMALL, *args])
    assert result.exit_code == 2, result.output
    assert needle in error_line(result)
    no_leftovers(tmp_path)


def test_missing_model(tmp_path):
    result = runner.invoke(app, ["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "does not exist" in error_line(result)
    no_leftovers(tmp_path)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["eval", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "not a model" in error_line(result)


def test_unsupported_architecture_lists_supported(gpt2_dir, tmp_path):
    result = runner.invoke(app, ["prune", str(gpt2_dir), "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 2
    line = error_line(result)
    assert "unsupported architecture 'gpt2'" in line and "llama" in line and "bert" in line
    no_leftovers(tmp_path)


def test_existing_out_needs_overwrite(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "magnitude", "--out", str(out), *SMALL])
    assert result.exit_code == 2 and "--overwrite" in error_line(result)
    assert (out / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "magnitude", "--out", str(out), "--overwrite", *SMALL])
    assert result.exit_code == 0 and (out / "edgeprune.json").exists() and not (out / "keep.txt").exists()


def test_failure_midway_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    import edgeprune.pruning.workflow as pruning

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pruning, "_copy_extra_files", boom)
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "magnitude", "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 2 and "No space left" in error_line(result)
    no_leftovers(tmp_path)


def test_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["eval", "someorg/some-model-that-is-not-cached"])
    assert result.exit_code == 2
    assert "Hugging Face Hub" in error_line(result)


def test_nm_conversion_refits_and_reports_gain_over_projection(tiny_llama_dir, tmp_path):
    unstructured = tmp_path / "u50"
    assert runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda", "--sparsity", "0.5", "--out", str(unstructured), *SMALL]).exit_code == 0
    out = tmp_path / "nm"
    result = runner.invoke(app, ["nm", str(unstructured), "--pattern", "2:4", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "edgeprune.json").read_text())
    conv = meta["conversion"]
    assert conv["pattern"] == "2:4" and conv["projection_perplexity"] > 0 and conv["refit_perplexity"] > 0
    assert meta["source_model"] == str(tiny_llama_dir)  # evaluation still compares with the dense model
    check = runner.invoke(app, ["check", str(out), "--pattern", "2:4"])
    assert check.exit_code == 0, check.output


@pytest.mark.parametrize("pattern,needle", [("4:2", "0 < N < M"), ("0:4", "0 < N < M"), ("2:3", "not divisible by M=3"), ("0.5", "not an N:M pattern")])
def test_nm_bad_patterns(tiny_llama_dir, tmp_path, pattern, needle):
    result = runner.invoke(app, ["nm", str(tiny_llama_dir), "--pattern", pattern, "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 2, result.output
    assert needle in error_line(result)
    no_leftovers(tmp_path)


def test_model_without_prunable_layers(tiny_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    src = tmp_path / "empty-llama"
    make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=0).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    result = runner.invoke(app, ["prune", str(src), "--method", "magnitude", "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 2 and "no prunable linear layers" in error_line(result)


def test_hf_dataset_unavailable_says_to_pass_calib(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--calib", "wikitext2", "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 2
    assert "--calib FILE" in error_line(result)
    no_leftovers(tmp_path)


def test_calibration_from_txt_and_jsonl_files(tiny_llama_dir, tmp_path):
    from edgeprune.data import pydoc_text

    body = pydoc_text("calib")[:60_000]
    (tmp_path / "c.txt").write_text(body)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": p}) for p in body.split("\n\n") if p.strip()))
    for name in ("c.txt", "c.jsonl"):
        out = tmp_path / f"out-{name}"
        result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda", "--calib", str(tmp_path / name), "--out", str(out), *SMALL])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "edgeprune.json").read_text())["calibration"]["source"] == str(tmp_path / name)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    result = runner.invoke(app, ["prune", str(tiny_llama_dir), "--calib", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o"), *SMALL])
    assert result.exit_code == 2 and "bad.jsonl:2" in error_line(result)


def test_calibration_is_seeded_and_eval_split_is_disjoint(tiny_tokenizer):
    import torch

    from edgeprune.data import CalibConfig, calibration_batch, pydoc_text

    a = calibration_batch(tiny_tokenizer, CalibConfig(samples=4, seqlen=32, seed=1))
    b = calibration_batch(tiny_tokenizer, CalibConfig(samples=4, seqlen=32, seed=1))
    c = calibration_batch(tiny_tokenizer, CalibConfig(samples=4, seqlen=32, seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    calib, held = pydoc_text("calib"), pydoc_text("eval")
    assert len(held) > 15_000 and len(calib) > 10 * len(held)
    held_paragraphs = {p for p in held.split("\n\n") if len(p) > 200}
    assert held_paragraphs and not any(p in calib for p in held_paragraphs)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any model's weights (or, with ``skeleton=False``, even its architecture) get loaded."""
    import edgeprune.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(loading, "load_model", refuse)
    return lambda: monkeypatch.setattr(loading, "model_skeleton", refuse)


def _fail_fast_cases(tmp_path, model):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "short.txt").write_text("A sentence or two is far too little text to calibrate on.")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "runs").mkdir()
    out = ["--out", str(tmp_path / "out")]
    return {
        "unwritable out": (["prune", model, "--out", "/proc/edgeprune-test/out", *SMALL], "cannot write to '/proc'", False),
        "out under a file": (["prune", model, "--out", str(tmp_path / "a-file" / "sub"), *SMALL], "is a file, not a folder", False),
        "zero samples": (["prune", model, *out, "--samples", "0"], "samples >= 1", False),
        "missing calib": (["prune", model, *out, *SMALL, "--calib", str(tmp_path / "nope.txt")], "not found", False),
        "short calib": (["prune", model, *out, *SMALL, "--calib", str(tmp_path / "short.txt")], "too short", False),
        "empty calib": (["prune", model, *out, *SMALL, "--calib", str(tmp_path / "empty.txt")], "is empty", False),
        "missing text": (["eval", model, "--text", str(tmp_path / "nope.txt")], "not found", False),
        "local path that is not there": (["eval", str(tmp_path / "runs" / "x")], "does not exist", False),
        "export out under a file": (["export", model, "--out", str(tmp_path / "a-file" / "sub")], "is a file", False),
        "run out under a file": (["run", "smollm2-135m-dense-int4", "--out", str(tmp_path / "a-file" / "sub")], "is a file", False),
        "threads": (["prune", model, *out, *SMALL, "--threads", "0"], "--threads 0", False),
        "width 2:7 (needs the architecture only)": (["prune", model, *out, *SMALL, "--sparsity", "2:7"], "not divisible by M=7", True),
    }


@pytest.mark.parametrize("case", ["unwritable out", "out under a file", "zero samples", "missing calib", "short calib", "empty calib",
                                  "missing text", "local path that is not there", "export out under a file", "run out under a file",
                                  "threads", "width 2:7 (needs the architecture only)"])
def test_bad_input_is_reported_before_the_model_loads(tiny_llama_dir, tmp_path, no_model_loads, case):
    import time

    args, needle, needs_architecture = _fail_fast_cases(tmp_path, str(tiny_llama_dir))[case]
    if not needs_architecture:
        no_model_loads()
    start = time.perf_counter()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in error_line(result)
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "out").exists()


def test_a_spec_that_looks_like_a_path_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    from edgeprune.errors import EdgepruneError
    from edgeprune.specs import resolve_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for spec in ("out/x", "./x", "/nonexistent/x", "x.gguf", "a/b/c", "~/no-such-model-folder"):
        with pytest.raises(EdgepruneError, match="does not exist"):
            resolve_spec(spec)
    with pytest.raises(EdgepruneError, match="not a local path.*HF_HUB_OFFLINE"):  # org/name, no folder 'HuggingFaceTB': the Hub
        resolve_spec("HuggingFaceTB/SmolLM2-135M")
    (tmp_path / "HuggingFaceTB").mkdir()
    with pytest.raises(EdgepruneError, match="does not exist"):  # ... unless a local folder makes it read as a path
        resolve_spec("HuggingFaceTB/SmolLM2-135M")


def test_a_hub_id_offline_is_one_quiet_line(tmp_path, monkeypatch):
    import time

    from edgeprune.specs import hub_unreachable

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_unreachable.cache_clear()
    try:
        start = time.perf_counter()
        result = runner.invoke(app, ["eval", "no-such-org/no-such-model"])
    finally:
        hub_unreachable.cache_clear()
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE" in error_line(result) and "not a local path" in error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 5


def test_version_and_help_text():
    from edgeprune import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"edgeprune {__version__}"
    helptext = runner.invoke(app, ["prune", "--help"], terminal_width=200).stdout
    assert "N:M" in helptext and "Ⓜ" not in helptext  # rich would read ':M:' as an emoji code
    assert "--torch-device" in helptext and "--threads" in helptext
    for command in ("export", "eval", "quantize"):
        assert "--threads" in runner.invoke(app, [command, "--help"], terminal_width=200).stdout


def test_threads_option_sets_the_thread_count(tiny_llama_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["eval", str(tiny_llama_dir), "--seqlen", "32", "--max-windows", "2", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _field_default(cls, path: str):
    import dataclasses

    value = cls()
    for name in path.split("."):
        value = getattr(value, name)
    return value if not dataclasses.is_dataclass(value) else None


@pytest.mark.parametrize("command, config, names", [
    ("prune", "edgeprune.pruning:PruneConfig", {"method": "method", "sparsity": "sparsity", "calib": "calib.source",
                                                 "samples": "calib.samples", "seqlen": "calib.seqlen", "seed": "calib.seed",
                                                 "torch_device": "device", "permute": "permute",
                                                 "stream": "stream", "dtype": "dtype", "hidden_memory": "hidden_memory"}),
    ("quantize", "edgeprune.onnx:QuantizeConfig", {"scheme": "scheme", "block_size": "block_size", "symmetric": "symmetric",
                                                   "samples": "calib.samples", "seqlen": "calib.seqlen",
                                                   "quantize_head": "head", "head_bits": "head_bits", "method": "method",
                                                   "calib": "calib.source", "act_order": "act_order", "damp": "damp",
                                                   "eight_bit_budget": "eight_bit_budget", "pack": "pack",
                                                   "accuracy_level": "accuracy_level"}),
    ("export", "edgeprune.onnx:QuantizeConfig", {"block_size": "block_size", "symmetric": "symmetric", "quantize_head": "head",
                                                 "int4_method": "method", "head_bits": "head_bits"}),
    ("export", "edgeprune.onnx:ExportConfig", {"pooling": "pooling", "verify": "verify", "ort_format": "ort_format", "fuse": "fuse"}),
    ("nm", "edgeprune.pruning.convert:NMConfig", {"pattern": "pattern", "method": "method", "calib": "calib.source",
                                                   "samples": "calib.samples", "seqlen": "calib.seqlen", "permute": "permute",
                                                   "compare": "compare"}),
    ("structured", "edgeprune.structured:StructuredConfig", {"score": "score", "search": "search", "reform": "reform",
                                                              "drop_blocks": "drop_blocks", "calib": "calib.source",
                                                              "samples": "calib.samples", "seqlen": "calib.seqlen",
                                                              "generations": "generations", "population": "population",
                                                              "seed": "seed"}),
    ("eval", "edgeprune.evaluation:EvalConfig", {"text": "text", "seqlen": "seqlen", "max_windows": "max_windows",
                                                  "torch_device": "device"}),
    ("profile", "edgeprune.profiling:ProfileConfig", {"backend": "backend", "strict": "strict", "warmup": "warmup",
                                                      "runs": "runs", "decode_tokens": "workload.decode_tokens",
                                                      "op_profile": "workload.op_profile"}),
    ("fit", "edgeprune.fit:FitConfig", {"shortlist": "shortlist", "measure_all": "measure_all", "threads": "threads",
                                        "rounds": "rounds", "side_by_side": "side_by_side", "eval_windows": "eval_windows"}),
])
def test_cli_defaults_are_the_config_defaults(command, config, names):
    """One setting, one default: each CLI option that sets a config field starts from that field's default."""
    import importlib

    import typer

    module, cls_name = config.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for option, field_path in names.items():
        assert option in params, f"{command} has no --{option.replace('_', '-')}"
        default = params[option].default
        if isinstance(default, (list, tuple)):  # a repeatable option (eval --text) joins its values with commas
            default = ",".join(default)
        assert default == _field_default(cls, field_path), f"{command} --{option} vs {cls_name}.{field_path}"
