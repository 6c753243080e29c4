"""Block-at-a-time pruning (``--stream on``): the same result as loading the model whole, one block in memory."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_tiny_bert, make_tiny_llama, make_tiny_qwen2
from edgeprune.cli import app
from edgeprune.data import CalibConfig
from edgeprune.pruning import PruneConfig, prune
from edgeprune.pruning.engine import prune_model
from edgeprune.pruning.wanda import WandaPruner

CALIB = CalibConfig("pydoc", 4, 64)


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _save(model, tokenizer, folder, dtype=torch.float32, shard="5GB"):
    model.to(dtype).save_pretrained(folder, max_shard_size=shard)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method, make", [("wanda", make_tiny_llama), ("sparsegpt", make_tiny_llama),
                                          ("attention", make_tiny_llama), ("sparsegpt", make_tiny_qwen2)])
def test_streamed_prune_equals_the_whole_model_prune(tiny_tokenizer, tmp_path, method, make):
    """A sharded checkpoint pruned block by block gives the same tensors, bit for bit, and a loadable folder
    (Qwen2: the q/k/v biases travel with their block)."""
    from transformers import AutoModelForCausalLM

    src = _save(make(len(tiny_tokenizer), num_hidden_layers=3), tiny_tokenizer, tmp_path / "src", shard="40KB")
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    prune(str(src), whole, PruneConfig(method=method, calib=CALIB, stream="off"))
    report = prune(str(src), streamed, PruneConfig(method=method, calib=CALIB, stream="on"))
    a, b = _tensors(whole), _tensors(streamed)
    biases = 3 * 3 if make is make_tiny_qwen2 else 0
    assert set(a) == set(b) and len(a) == 3 * 9 + 2 + biases  # tied head: written once, as the source has it
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert report.overall_sparsity == pytest.approx(0.5)
    meta = json.loads((streamed / "edgeprune.json").read_text())
    assert meta["streamed"] is True and meta["storage_dtype"] == "fp32"
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # one shard per block + the rest
    model = AutoModelForCausalLM.from_pretrained(streamed)
    ids = torch.tensor([[5, 9, 30, 7]])
    ref = AutoModelForCausalLM.from_pretrained(whole)
    assert torch.equal(model(ids).logits, ref(ids).logits)


def test_streamed_bert_and_bf16_storage(tiny_tokenizer, tmp_path):
    """An encoder in one bf16 file: auto keeps bf16 both ways (the same tensors); --dtype fp32 widens the output."""
    src = _save(make_tiny_bert(len(tiny_tokenizer)), tiny_tokenizer, tmp_path / "src", dtype=torch.bfloat16)
    prune(str(src), tmp_path / "whole", PruneConfig(method="wanda", calib=CALIB, stream="off"))
    prune(str(src), tmp_path / "streamed", PruneConfig(method="wanda", calib=CALIB, stream="on"))
    prune(str(src), tmp_path / "fp32", PruneConfig(method="wanda", calib=CALIB, stream="on", dtype="fp32"))
    a, b, c = (_tensors(tmp_path / n) for n in ("whole", "streamed", "fp32"))
    assert set(a) == set(b) == set(c)
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.bfloat16
        assert torch.equal(a[name], b[name]), name
        assert c[name].dtype == torch.float32 and torch.equal(c[name].to(torch.bfloat16), a[name]), name
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["torch_dtype"] == "float32"


class _OneBlockAtATime(WandaPruner):
    """Wanda that records, for every block it prunes, which blocks have real (non-meta) weights at that moment."""

    def __init__(self, model, adapter):
        super().__init__()
        self.model, self.adapter, self.seen = model, adapter, []

    def prune_block(self, ctx):
        live = [i for i, b in enumerate(self.adapter.blocks(self.model)) if any(p.device.type != "meta" for p in b.parameters())]
        stem = [n for n, p in self.model.named_parameters() if not n.startswith("model.layers.") and p.device.type != "meta"]
        self.seen.append((ctx.index, live, stem))
        return super().prune_block(ctx)


def test_streaming_holds_one_block_at_a_time(tiny_tokenizer, tmp_path):
    from edgeprune.models.loading import load_streamed
    from edgeprune.sparsity import parse_sparsity

    src = _save(make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=4), tiny_tokenizer, tmp_path / "src")
    loaded, stream = load_streamed(str(src))
    assert all(p.device.type == "meta" for p in loaded.model.parameters())
    stream.out = tmp_path / "out"
    stream.out.mkdir()
    pruner = _OneBlockAtATime(loaded.model, loaded.adapter)
    ids = torch.randint(4, len(tiny_tokenizer), (2, 32))
    prune_model(loaded.model, loaded.adapter, pruner, parse_sparsity("2:4"), ids, stream=stream)
    assert pruner.seen == [(i, [i], []) for i in range(4)]  # the embedding is released before block 0
    assert all(p.device.type == "meta" for p in loaded.model.parameters())
    assert len(list(stream.out.glob("model-*.safetensors"))) == 4  # the blocks; finish() adds the rest


def test_a_stopped_stream_leaves_no_output_and_resumes_exactly(tiny_tokenizer, tmp_path, monkeypatch):
    """The disk fills while block 2 is written: a one-line error, no --out, the blocks so far kept; the same command
    then prunes only the blocks left and writes what an uninterrupted run writes, bit for bit."""
    import errno

    import safetensors.torch

    src = _save(make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=4), tiny_tokenizer, tmp_path / "src")
    args = ["prune", str(src), "--method", "sparsegpt", "--samples", "4", "--seqlen", "64", "--stream", "on"]
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "whole")]).exit_code == 0

    real_save, pruned = safetensors.torch.save_file, []

    def disk_fills_at_block_2(tensors, path, metadata=None):
        if any(name.startswith("model.layers.2.") for name in tensors):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills_at_block_2)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No space left on device" in result.output and "run the same command again: it resumes" in result.output
    assert not out.exists()
    partial = tmp_path / ".out.partial"
    assert sorted(p.name for p in partial.glob("model-*.safetensors")) == ["model-00001-of-00005.safetensors",
                                                                         "model-00002-of-00005.safetensors"]

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    from edgeprune.pruning.sparsegpt import SparseGPTPruner

    real_prune = SparseGPTPruner.prune_block
    monkeypatch.setattr(SparseGPTPruner, "prune_block", lambda self, ctx: pruned.append(ctx.index) or real_prune(self, ctx))
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pruned == [2, 3] and not partial.exists()
    a, b = _tensors(tmp_path / "whole"), _tensors(out)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    meta_a, meta_b = (json.loads((d / "edgeprune.json").read_text()) for d in (tmp_path / "whole", out))
    assert meta_a["layers"] == meta_b["layers"] and meta_a["attention_error"] == meta_b["attention_error"]


def test_a_partial_folder_of_other_settings_is_not_resumed(tiny_tokenizer, tmp_path):
    src = _save(make_tiny_llama(len(tiny_tokenizer)), tiny_tokenizer, tmp_path / "src")
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "model-00001-of-00003.safetensors").write_bytes(b"left by a run with other settings")
    prune(str(src), tmp_path / "out", PruneConfig(method="wanda", calib=CALIB, stream="on"))
    ref = tmp_path / "ref"
    prune(str(src), ref, PruneConfig(method="wanda", calib=CALIB, stream="on"))
    a, b = _tensors(ref), _tensors(tmp_path / "out")
    assert all(torch.equal(a[n], b[n]) for n in a) and not partial.exists()


@pytest.mark.parametrize("args, message", [
    (["--stream", "maybe"], "unknown --stream 'maybe'"),
    (["--dtype", "int3"], "unknown --dtype 'int3'"),
    (["--stream", "on", "--calib", "self"], "--calib self samples from the whole model"),
])
def test_bad_stream_settings_are_one_line_errors(tiny_llama_dir, tmp_path, args, message):
    result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--out", str(tmp_path / "o"), "--method", "wanda", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_pickle_checkpoint_cannot_stream(tiny_tokenizer, tmp_path):
    src = tmp_path / "bin"
    make_tiny_llama(len(tiny_tokenizer)).save_pretrained(src, safe_serialization=False)
    tiny_tokenizer.save_pretrained(src)
    result = CliRunner().invoke(app, ["prune", str(src), "--out", str(tmp_path / "o"), "--method", "wanda", "--stream", "on"])
    assert result.exit_code == 2
    assert "cannot be streamed" in result.output and "--stream off" in result.output
    assert not (tmp_path / "o").exists()


def test_a_model_that_neither_streams_nor_fits_is_refused(tiny_tokenizer, tmp_path, monkeypatch):
    """A pickle checkpoint bigger than free memory: one line that names safetensors + --stream on, before loading."""
    import psutil

    src = tmp_path / "bin"
    make_tiny_llama(len(tiny_tokenizer)).save_pretrained(src, safe_serialization=False)
    tiny_tokenizer.save_pretrained(src)
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=10_000))
    result = CliRunner().invoke(app, ["prune", str(src), "--out", str(tmp_path / "o"), "--method", "wanda"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "needs 0.0 GiB in fp32 to load whole" in result.output and "--stream on" in result.output
    assert not (tmp_path / "o").exists()


def test_auto_streams_a_safetensors_model_larger_than_half_the_free_memory(tiny_llama_dir, tmp_path, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=100_000))
    prune(str(tiny_llama_dir), tmp_path / "o", PruneConfig(method="wanda", calib=CALIB))
    meta = json.loads((tmp_path / "o" / "edgeprune.json").read_text())
    assert meta["streamed"] is True


def test_an_interrupted_stream_says_it_resumes(tiny_tokenizer, tmp_path, monkeypatch):
    """Ctrl-C (or `kill`, which the CLI turns into the same) mid-run: exit 130, the partial folder kept, resumable."""
    import safetensors.torch

    src = _save(make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3), tiny_tokenizer, tmp_path / "src")
    real_save = safetensors.torch.save_file

    def interrupted(tensors, path, metadata=None):
        if any(name.startswith("model.layers.1.") for name in tensors):
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    args = ["prune", str(src), "--out", str(tmp_path / "out"), "--method", "wanda", "--samples", "4", "--seqlen", "64", "--stream", "on"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    assert "interrupted" in result.output and "run the same command again: it resumes" in result.output
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.partial" / "model-00001-of-00004.safetensors").is_file()
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert CliRunner().invoke(app, args).exit_code == 0 and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("stream", ["off", "on"])
def test_hidden_states_spilled_to_a_mapped_file_give_the_same_prune(tiny_tokenizer, tmp_path, monkeypatch, stream):
    """--hidden-memory 0: every buffer of hidden states between blocks is a mapping of an unlinked file next to --out
    (none left behind); the pruned tensors and the recorded attention errors are those of the in-memory run."""
    from edgeprune.pruning import hidden

    src = _save(make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=3), tiny_tokenizer, tmp_path / "src")
    in_memory, spilled = tmp_path / "in-memory", tmp_path / "spilled"
    prune(str(src), in_memory, PruneConfig(method="sparsegpt", calib=CALIB, stream=stream))
    maps = []
    real = hidden.mapped_tensor
    monkeypatch.setattr(hidden, "mapped_tensor", lambda shape, dtype, folder: maps.append((shape, folder)) or real(shape, dtype, folder))
    prune(str(src), spilled, PruneConfig(method="sparsegpt", calib=CALIB, stream=stream, hidden_memory="0"))
    assert len(maps) == 1 + 3 and {folder for _, folder in maps} == {tmp_path}  # the embedding + each block's outputs
    assert all(shape == (4, 64, 64) for shape, _ in maps)
    a, b = _tensors(in_memory), _tensors(spilled)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    meta_a, meta_b = (json.loads((d / "edgeprune.json").read_text()) for d in (in_memory, spilled))
    assert meta_a["attention_error"] == meta_b["attention_error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-memory", "spilled", "src"]


@pytest.mark.parametrize("stored, kept", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                          (torch.float16, torch.bfloat16)])
@pytest.mark.parametrize("stream", ["off", "on"])
def test_hidden_states_are_kept_in_the_model_dtype(tiny_tokenizer, tmp_path, monkeypatch, stored, kept, stream):
    """Between blocks the calibration hidden states take the checkpoint's dtype (fp16's as bf16, whose range is
    fp32's), whole or streamed, spilled or not; the blocks still compute in fp32."""
    from edgeprune.pruning import engine

    src = _save(make_tiny_llama(len(tiny_tokenizer), num_hidden_layers=2), tiny_tokenizer, tmp_path / "src", dtype=stored)
    buffers, computed = [], set()
    real_fill, real_cast = engine.fill, engine.as_block_input
    monkeypatch.setattr(engine, "fill", lambda *a: (lambda out: buffers.append(out.dtype) or out)(real_fill(*a)))
    monkeypatch.setattr(engine, "as_block_input", lambda x, block: (lambda y: computed.add(y.dtype) or y)(real_cast(x, block)))
    for memory in ("auto", "0"):
        prune(str(src), tmp_path / memory, PruneConfig(method="wanda", calib=CALIB, stream=stream, hidden_memory=memory))
    assert buffers == [kept] * 2 * 3 and computed == {torch.float32}  # embedding + 2 blocks' outputs, per run
    a, b = _tensors(tmp_path / "auto"), _tensors(tmp_path / "0")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_mapped_buffer_reads_back_and_leaves_no_file(tmp_path):
    from edgeprune.pruning.hidden import HiddenPolicy, fill

    policy = HiddenPolicy(budget=0, folder=tmp_path / "spill")
    chunks = [torch.randn(2, 5, 3, dtype=torch.bfloat16) for _ in range(3)]
    out = fill(iter(chunks), 6, policy)
    assert torch.equal(out, torch.cat(chunks)) and out.dtype == torch.bfloat16
    assert list((tmp_path / "spill").iterdir()) == []  # unlinked once mapped
    big = HiddenPolicy(budget=2 * 6 * 5 * 3 * 2, folder=tmp_path)
    assert not big.spills((6, 5, 3), torch.bfloat16) and big.spills((7, 5, 3), torch.bfloat16)


def test_no_room_for_spilled_hidden_states_is_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--out", str(tmp_path / "o"), "--method", "wanda",
                                      "--samples", "2", "--seqlen", "32", "--hidden-memory", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "no room for" in result.output and "No space left on device" in result.output and "--hidden-memory" in result.output
    assert not (tmp_path / "o").exists()


def test_a_bad_hidden_memory_is_one_line(tiny_llama_dir, tmp_path):
    result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--out", str(tmp_path / "o"), "--hidden-memory", "lots"])
    assert result.exit_code == 2 and "--hidden-memory 'lots' is not a size" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
