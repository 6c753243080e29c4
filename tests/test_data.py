"""Text sources: a file of any name is plain text (.jsonl excepted), and bad files are one-line errors."""

from __future__ import annotations

import json
import math

import pytest

import edgeprune
from edgeprune.data import check_text, load_text
from edgeprune.errors import EdgepruneError

BODY = "GNU GENERAL PUBLIC LICENSE\n\n  Version 3, 29 June 2007 {not json}\n\nTerms and conditions.\n"


@pytest.mark.parametrize("name", ["GPL-3", "notes.md", "c.txt", "archive.json"])
def test_a_file_of_any_name_is_read_as_plain_text(tmp_path, name):
    (tmp_path / name).write_text(BODY, encoding="utf-8")
    assert load_text(str(tmp_path / name), "eval") == BODY
    check_text(str(tmp_path / name), "eval", len(BODY.encode()), "--text")


def test_jsonl_is_the_one_suffix_parsed(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("one", "two")) + "\n\n")
    assert load_text(str(tmp_path / "c.jsonl"), "eval") == "one\n\ntwo"


@pytest.mark.parametrize("name, content, message", [
    ("LICENSE", None, "not found"),
    ("EMPTY", " \n\n", "is empty"),
    ("BLOB", b"\xff\xfe\x00binary", "is not UTF-8 text"),
])
def test_missing_empty_or_binary_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(EdgepruneError, match=message) as caught:
        load_text(str(path), "eval")
    assert "\n" not in str(caught.value)


def test_eval_reads_a_text_file_without_suffix(tiny_llama_dir, tmp_path):
    from edgeprune.data import pydoc_text

    licence = tmp_path / "COPYING"
    licence.write_text(pydoc_text("eval")[:4000])
    result = edgeprune.evaluate(str(tiny_llama_dir), text=str(licence), seqlen=32, max_windows=2, attention=False)
    assert result.text == str(licence) and result.tokens == 64 and math.isfinite(result.perplexity)


# --- several evaluation texts, the offline domain suite ---------------------------------------------------------------

def test_suite_is_four_offline_domains_none_of_them_calibration_text():
    from edgeprune.data import SUITE, load_text, pydoc_text, split_texts

    assert split_texts("suite") == list(SUITE) == ["pydoc", "licences", "docstrings", "self"]
    assert split_texts(["pydoc,docstrings", "suite"]) == ["pydoc", "docstrings", "licences", "self"]  # repeats dropped
    calib = {" ".join(p.split()) for p in pydoc_text("calib").split("\n\n")}
    for name, must_contain in (("licences", "Redistribution and use in source and binary forms"),
                               ("docstrings", "Command-line parsing library")):
        text = load_text(name, "eval")
        assert 40_000 < len(text) <= 60_000 and must_contain in text
        assert text == load_text(name, "calib")  # a named domain is one text, fixed by the installed packages
        assert not any(" ".join(p.split()) in calib for p in text.split("\n\n")), name


def test_licences_without_torch_metadata_is_a_one_line_error(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(EdgepruneError, match="pip install --force-reinstall --no-deps torch") as caught:
        load_text("licences", "eval")
    assert "\n" not in str(caught.value)


def test_evaluate_several_texts_reports_each_domain_and_the_geometric_mean(tiny_llama_dir, tmp_path):
    from edgeprune.data import pydoc_text

    notes = tmp_path / "notes.txt"
    notes.write_text(pydoc_text("calib")[:3000])
    single = edgeprune.evaluate(str(tiny_llama_dir), text="docstrings", seqlen=32, max_windows=2, attention=False)
    result = edgeprune.evaluate(str(tiny_llama_dir), text=["pydoc,docstrings", str(notes)], seqlen=32, max_windows=2,
                                attention=False)
    assert [d["text"] for d in result.domains] == ["pydoc", "docstrings", str(notes)]
    assert result.domains[1]["perplexity"] == pytest.approx(single.perplexity)
    ppl = [d["perplexity"] for d in result.domains]
    assert len(set(ppl)) == 3 and all(d["tokens"] == 64 for d in result.domains)
    assert result.geomean_perplexity == pytest.approx(math.exp(sum(map(math.log, ppl)) / 3))
    assert result.perplexity == result.geomean_perplexity and result.tokens == 192
    assert "domains" not in json.loads(single.to_json()) and "geomean_perplexity" not in json.loads(single.to_json())


@pytest.fixture
def short_self_text(monkeypatch):
    """The ``self`` domain at 4 x 48 tokens instead of 16 x 512: enough for two 32-token windows, and quick to sample."""
    import edgeprune.data.domains as domains

    monkeypatch.setattr(domains, "SELF_EVAL_SAMPLES", 4)
    monkeypatch.setattr(domains, "SELF_EVAL_SEQLEN", 48)


def test_eval_suite_on_the_command_line(tiny_llama_dir, tmp_path, short_self_text):
    """--text suite: the four domains, ``self`` sampled from the dense model's "eval" seed stream."""
    from typer.testing import CliRunner

    from conftest import error_line
    from edgeprune.cli import app

    js = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(tiny_llama_dir), "--text", "suite", "--seqlen", "32", "--max-windows", "2",
                                      "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert [d["text"] for d in data["domains"]] == ["pydoc", "licences", "docstrings", "self"]
    assert all(d["perplexity"] > 1 and d["tokens"] == 64 for d in data["domains"])
    assert data["geomean_perplexity"] == pytest.approx(math.exp(sum(math.log(d["perplexity"]) for d in data["domains"]) / 4))
    bad = CliRunner().invoke(app, ["eval", str(tiny_llama_dir), "--text", "pydoc,,docstrings"])
    assert bad.exit_code == 2 and "empty entry" in error_line(bad)


def test_encoder_suite_reports_cosine_per_domain(tiny_bert_dir, tiny_llama_dir, monkeypatch, short_self_text):
    """An encoder cannot generate: its ``self`` text comes from a decoder (the bundled one; here the tiny Llama)."""
    import edgeprune.data.generated as generated

    monkeypatch.setattr(generated, "ENCODER_GENERATOR", str(tiny_llama_dir))
    result = edgeprune.evaluate(str(tiny_bert_dir), text="suite", reference=str(tiny_bert_dir), attention=False)
    assert [d["text"] for d in result.domains] == ["pydoc", "licences", "docstrings", "self"]
    assert all(d["embedding_cosine"] == pytest.approx(1.0, abs=1e-5) and d["sentences"] > 0 for d in result.domains)
    assert result.perplexity is None and result.embedding_cosine == pytest.approx(1.0, abs=1e-5)


# --- calibration sources: self, and mixes with shares ----------------------------------------------------------------

@pytest.mark.parametrize("spec, counts", [
    ("pydoc+self", [4, 4]),
    ("pydoc:0.5+self:0.25+NOTES:0.25", [4, 2, 2]),
    ("pydoc:0.5+self+NOTES", [4, 2, 2]),
    ("pydoc+self+NOTES", [3, 3, 2]),  # largest remainder, ties to the first
])
def test_mixed_sources_split_the_samples_by_share(tmp_path, spec, counts):
    from edgeprune.data import allot, parse_sources

    (tmp_path / "notes.txt").write_text(BODY)
    spec = spec.replace("NOTES", str(tmp_path / "notes.txt"))
    parts = parse_sources(spec)
    assert math.isclose(sum(p.share for p in parts), 1) and allot(parts, 8) == counts


def _calib_error_cases(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n")
    (tmp_path / "notes.txt").write_text(BODY * 400)
    empty, notes = tmp_path / "empty.txt", tmp_path / "notes.txt"
    return {
        "unknown source": ("pydoc+wikipedia:0.5", "unknown calibration source 'wikipedia'"),
        "shares below 1": ("pydoc:0.5+self:0.25", "add up to 0.75, not 1"),
        "shares above 1": (f"pydoc:0.75+{notes}:0.5", "add up to 1.25, not 1"),
        "nothing left": ("pydoc:1+self", "leaving nothing for self"),
        "a share out of range": ("pydoc:1.5+self", "not in (0, 1]"),
        "a source twice": ("pydoc+self+pydoc", "appears twice"),
        "a share too small for the samples": ("pydoc:0.99+self:0.01", "gets none of the 4 samples"),
        "an empty file": (f"pydoc+{empty}", "is empty"),
    }


@pytest.mark.parametrize("case", ["unknown source", "shares below 1", "shares above 1", "nothing left", "a share out of range",
                                  "a source twice", "a share too small for the samples", "an empty file"])
def test_bad_calibration_mix_is_one_line_exit_2_and_nothing_written(tiny_llama_dir, tmp_path, monkeypatch, case):
    """Reported before any model loads (the mix is parsed and each file read first), exit 2, no output folder."""
    from typer.testing import CliRunner

    import edgeprune.models.loading as loading
    from conftest import error_line, no_leftovers
    from edgeprune.cli import app

    spec, needle = _calib_error_cases(tmp_path)[case]
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model loaded before the bad --calib was reported"))
    result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda", "--calib", spec, "--samples", "4",
                                      "--seqlen", "32", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert needle in error_line(result)
    no_leftovers(tmp_path)


def test_self_calibration_is_seeded_and_cached(tiny_llama_dir, monkeypatch, edgeprune_cache):
    """Same seed → same tokens, read from the cache the second time (nothing is sampled); another seed, or the
    evaluation stream, gives other tokens; the cache file is written whole (no temporary file left)."""
    import torch

    import edgeprune.data.generated as generated
    from edgeprune.data import CalibConfig, calibration_batch
    from edgeprune.models.loading import load_model

    lm = load_model(str(tiny_llama_dir))
    config = CalibConfig("self", samples=3, seqlen=24, seed=7)
    first = calibration_batch(lm.tokenizer, config, lm.model)
    assert first.shape == (3, 24) and first.dtype == torch.long
    assert (first[:, 0] == lm.tokenizer.bos_token_id).all()  # every sequence starts at BOS ...
    specials = set(generated.special_ids(lm.tokenizer))
    assert not specials & set(first[:, 1:].flatten().tolist())  # ... and is one document: no special token after it
    files = sorted((edgeprune_cache / "self-generated").glob(f"{generated.weights_hash(lm.model)}-calib-seed7-3x24-*.pt"))
    assert len(files) == 1 and not list((edgeprune_cache / "self-generated").glob(".*"))

    monkeypatch.setattr(generated, "sample_sequences", lambda *a, **k: pytest.fail("sampled again instead of reading the cache"))
    assert torch.equal(calibration_batch(lm.tokenizer, config, lm.model), first)
    monkeypatch.undo()

    files[0].unlink()  # the same seed samples the same tokens again, without the cache
    assert torch.equal(calibration_batch(lm.tokenizer, config, lm.model), first)
    other = calibration_batch(lm.tokenizer, CalibConfig("self", samples=3, seqlen=24, seed=8), lm.model)
    held = generated.self_generated_ids(lm.model, lm.tokenizer, 3, 24, seed=7, purpose="eval")
    assert not torch.equal(other, first) and not torch.equal(held, first)

    files[0].write_bytes(b"not a torch file")  # a damaged cache file is sampled again, not trusted
    assert torch.equal(calibration_batch(lm.tokenizer, config, lm.model), first)


def test_prune_with_self_and_a_mix(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    (tmp_path / "notes.txt").write_text(BODY * 400)
    for spec in ("self", f"pydoc:0.5+self:0.25+{tmp_path / 'notes.txt'}:0.25"):
        out = tmp_path / f"out-{len(spec)}"
        result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda", "--calib", spec, "--samples", "4",
                                          "--seqlen", "32", "--out", str(out)])
        assert result.exit_code == 0, result.output
        meta = json.loads((out / "edgeprune.json").read_text())
        assert meta["calibration"]["source"] == spec and meta["calibration"]["tokens"] == 128


def test_self_calibration_of_an_encoder_uses_a_decoders_text(tiny_bert_dir, tiny_llama_dir, monkeypatch):
    import edgeprune.data.generated as generated
    from edgeprune.data import CalibConfig, calibration_batch
    from edgeprune.models.loading import load_model

    monkeypatch.setattr(generated, "ENCODER_GENERATOR", str(tiny_llama_dir))
    bert = load_model(str(tiny_bert_dir))
    ids = calibration_batch(bert.tokenizer, CalibConfig("self", samples=4, seqlen=32), bert.model)
    assert ids.shape == (4, 32) and int(ids.max()) < len(bert.tokenizer)


def test_exported_folder_evaluates_the_same_domains_through_onnx_runtime(tiny_onnx, tiny_llama_dir, short_self_text):
    """The ``self`` text of an exported folder is sampled by the dense PyTorch model its edgeprune.json names."""
    onnx_dir, _ = tiny_onnx
    ort = edgeprune.evaluate(str(onnx_dir), text="pydoc,self", seqlen=32, max_windows=2)
    torch_ = edgeprune.evaluate(str(tiny_llama_dir), text="pydoc,self", seqlen=32, max_windows=2, attention=False)
    assert [d["text"] for d in ort.domains] == ["pydoc", "self"]
    for a, b in zip(ort.domains, torch_.domains):
        assert a["tokens"] == b["tokens"] and a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-4)
