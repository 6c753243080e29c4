"""Packed N:M storage: exact bit layout on hand-made tensors, round trips on tiny models, bad files and bad input."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import make_tiny_llama
from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.models import get_adapter
from edgeprune.sparsity import is_nm, to_nm
from edgeprune.sparsity.packed import (
    CHECKSUM_KEY,
    MANIFEST_KEY,
    _checksum,
    pack,
    pack_bits,
    pack_layer,
    read_manifest,
    unpack,
    unpack_bits,
    unpack_layer,
)

runner = CliRunner()


def _nm_folder(path, tokenizer, n=2, m=4, seed=0, hidden=64):
    """A tiny Llama whose prunable linears are N:M (w * mask, so pruned negatives are -0.0 as in `edgeprune prune`)."""
    model = make_tiny_llama(len(tokenizer), seed=seed, hidden_size=hidden, intermediate_size=2 * hidden)
    with torch.no_grad():
        for lin in get_adapter(model).prunable_linears(model).values():
            lin.weight.mul_(to_nm(lin.weight.abs(), n, m))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "edgeprune.json").write_text(json.dumps({"sparsity": f"{n}:{m}"}))
    return path


@pytest.fixture(scope="module")
def nm24_dir(tmp_path_factory, tiny_tokenizer):
    return _nm_folder(tmp_path_factory.mktemp("nm24"), tiny_tokenizer)


@pytest.fixture(scope="module")
def packed24(nm24_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "model.nm.safetensors"
    report = pack(nm24_dir, out, values="fp32")
    return out, report


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _nm_keys(folder_weights):
    return [k for k in folder_weights if k.endswith("_proj.weight")]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


# ---------------------------------------------------------------- exact layout on hand-made tensors


def test_two_of_four_positions_are_two_bits_lsb_first():
    w = torch.tensor([[0.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0, 6.0]])
    parts, _ = pack_layer(w, 2, 4, "fp32", "hand")
    assert parts["values"].tolist() == [[3.0, 4.0, 5.0, 6.0]]
    # positions 2, 3 | 0, 3 → 2 | 3<<2 | 0<<4 | 3<<6
    assert parts["indices"].tolist() == [2 | 3 << 2 | 0 << 4 | 3 << 6]
    assert torch.equal(unpack_layer(parts, (1, 8), torch.float32, 2, 4, "hand"), w)


def test_groups_with_fewer_than_n_nonzeros_keep_zero_slots():
    w = torch.tensor([[0.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0]])
    parts, _ = pack_layer(w, 2, 4, "fp32", "hand")
    # spare slots take the lowest zero positions; slots stay in ascending order
    assert parts["values"].tolist() == [[0.0, 7.0, 0.0, 0.0], [1.0, 0.0, 2.0, 3.0]]
    assert unpack_bits(parts["indices"], 2, 8).tolist() == [0, 3, 0, 1, 0, 1, 1, 2]
    assert torch.equal(unpack_layer(parts, (2, 8), torch.float32, 2, 4, "hand"), w)


def test_kept_negative_zero_keeps_its_sign_and_dropped_ones_are_counted():
    w = torch.tensor([[5.0, -0.0, 0.0, 0.0, -0.0, 2.0, 3.0, -0.0]])
    parts, dropped = pack_layer(w, 2, 4, "fp32", "hand")
    back = unpack_layer(parts, (1, 8), torch.float32, 2, 4, "hand")
    assert torch.signbit(back[0, 1])  # kept in a spare slot
    assert dropped == 2 and torch.equal(back, w)  # -0.0 == 0.0 for the dropped ones


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trips(bits):
    values = torch.randint(0, 2**bits, (101,), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-101 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 101), values)


def test_three_bit_positions_for_four_of_eight():
    w = torch.zeros(1, 8)
    w[0, [1, 2, 5, 7]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    parts, _ = pack_layer(w, 4, 8, "fp32", "hand")
    # 1 | 2<<3 | 5<<6 | 7<<9 over 12 bits → two bytes
    stream = 1 | 2 << 3 | 5 << 6 | 7 << 9
    assert parts["indices"].tolist() == [stream & 0xFF, stream >> 8]


# ---------------------------------------------------------------- round trips on tiny models


def test_fp32_round_trip_is_exact_and_loadable(nm24_dir, packed24, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file, report = packed24
    out = tmp_path / "out"
    unpack(file, out)
    src, back = _weights(nm24_dir), _weights(out)
    assert set(src) == set(back)
    for key in src:
        assert back[key].dtype == src[key].dtype and torch.equal(back[key], src[key]), key
        nonzero = src[key] != 0
        assert torch.equal(_bits(back[key][nonzero]), _bits(src[key][nonzero])), key
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "edgeprune.json"):
        assert (out / name).read_bytes() == (nm24_dir / name).read_bytes()
    assert report.layers_packed == 14 and report.signed_zeros_dropped > 0
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    model_src, model_back = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (nm24_dir, out))
    with torch.no_grad():
        assert torch.equal(model_src(ids).logits, model_back(ids).logits)
    assert AutoTokenizer.from_pretrained(out)("hello world").input_ids


def test_fp16_and_bf16_values_restore_the_rounded_values(nm24_dir, tmp_path):
    src = _weights(nm24_dir)
    for values, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        pack(nm24_dir, tmp_path / f"{values}.nm", values=values)
        unpack(tmp_path / f"{values}.nm", tmp_path / values)
        back = _weights(tmp_path / values)
        for key in src:
            expected = src[key].to(dtype).float() if key in _nm_keys(src) else src[key]
            assert back[key].dtype == torch.float32 and torch.equal(back[key], expected), key


def test_int8_error_is_within_half_a_scale(nm24_dir, tmp_path):
    report = pack(nm24_dir, tmp_path / "int8.nm", values="int8")
    unpack(tmp_path / "int8.nm", tmp_path / "out")
    src, back = _weights(nm24_dir), _weights(tmp_path / "out")
    for key in _nm_keys(src):
        scale = src[key].abs().amax(dim=1, keepdim=True) / 127
        assert ((back[key] - src[key]).abs() <= scale / 2 * (1 + 1e-5) + 1e-12).all(), key
        assert back[key][src[key] == 0].eq(0).all()
        assert is_nm(back[key], 2, 4)
    # 1 byte + 2 bits per kept value, plus one fp32 scale per row
    assert report.linear_bytes == sum(w.numel() // 2 + w.numel() // 8 + 4 * w.shape[0] for w in (src[k] for k in _nm_keys(src)))


@pytest.mark.parametrize("n,m,bits", [(4, 8, 3), (1, 4, 2)])
def test_other_patterns_round_trip(n, m, bits, tiny_tokenizer, tmp_path):
    folder = _nm_folder(tmp_path / "src", tiny_tokenizer, n, m, seed=n)
    report = pack(folder, tmp_path / "p.nm", pattern=f"{n}:{m}", values="fp32")
    manifest = read_manifest(tmp_path / "p.nm")
    assert (manifest["n"], manifest["m"], manifest["index_bits"]) == (n, m, bits)
    assert report.linear_ratio_fp32 == pytest.approx(n / m * (1 + bits / 32))
    unpack(tmp_path / "p.nm", tmp_path / "out")
    src, back = _weights(folder), _weights(tmp_path / "out")
    assert all(torch.equal(src[k], back[k]) for k in src)


def test_two_of_four_fp16_meets_the_size_target(nm24_dir, tmp_path):
    report = pack(nm24_dir, tmp_path / "p.nm", values="fp16")
    assert report.linear_ratio_fp16 <= 0.58
    assert report.linear_ratio_fp16 == pytest.approx(0.5625)
    assert report.linear_ratio_fp32 == pytest.approx(0.28125)
    assert read_manifest(tmp_path / "p.nm")["sizes"]["linear_ratio_fp16"] == report.linear_ratio_fp16
    assert report.model_ratio_fp32 < 1 and report.file_bytes == (tmp_path / "p.nm").stat().st_size


def test_dense_cast_applies_to_non_nm_tensors_only(nm24_dir, tmp_path):
    report = pack(nm24_dir, tmp_path / "p.nm", values="fp16", dense="fp16")
    assert report.model_ratio_fp16 < 0.7
    with safe_open(tmp_path / "p.nm", framework="pt") as f:
        assert f.get_tensor("dense/model.norm.weight").dtype == torch.float16
    unpack(tmp_path / "p.nm", tmp_path / "out")
    assert _weights(tmp_path / "out")["model.norm.weight"].dtype == torch.float32


# ---------------------------------------------------------------- bad input


def test_not_nm_model_names_the_first_offending_layer(tiny_llama_dir, tmp_path):
    with pytest.raises(EdgepruneError, match=r"layer model\.layers\.0\.self_attn\.q_proj is not 2:4: row 0"):
        pack(tiny_llama_dir, tmp_path / "p.nm")
    assert list(tmp_path.iterdir()) == []


def test_wrong_pattern_for_the_model_is_an_error(nm24_dir, tmp_path):
    with pytest.raises(EdgepruneError, match="q_proj is not 1:4"):
        pack(nm24_dir, tmp_path / "p.nm", pattern="1:4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pattern", ["4:2", "0:4", "2:2", "0.5", "x"])
def test_bad_patterns(nm24_dir, tmp_path, pattern):
    with pytest.raises(EdgepruneError):
        pack(nm24_dir, tmp_path / "p.nm", pattern=pattern)


def test_bad_values_and_missing_folder(nm24_dir, tmp_path):
    with pytest.raises(EdgepruneError, match="value storage"):
        pack(nm24_dir, tmp_path / "p.nm", values="int4")
    with pytest.raises(EdgepruneError, match="not found"):
        pack(tmp_path / "nope", tmp_path / "p.nm")
    with pytest.raises(EdgepruneError, match="already exists"):
        (tmp_path / "p.nm").write_bytes(b"x")
        pack(nm24_dir, tmp_path / "p.nm")


def _copy(packed24, tmp_path) -> bytearray:
    return bytearray(packed24[0].read_bytes())


def _unpack_fails(data: bytes, tmp_path, match: str):
    bad = tmp_path / "bad.nm"
    bad.write_bytes(data)
    with pytest.raises(EdgepruneError, match=match):
        unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_flipped_payload_byte_fails_the_checksum(packed24, tmp_path):
    data = _copy(packed24, tmp_path)
    data[-100] ^= 0x01
    _unpack_fails(bytes(data), tmp_path, "checksum mismatch")


@pytest.mark.parametrize("keep", [0, 5, 8, 200, -1])
def test_truncated_files_are_rejected(packed24, tmp_path, keep):
    data = _copy(packed24, tmp_path)
    _unpack_fails(bytes(data[:keep] if keep >= 0 else data[:-1]), tmp_path, "corrupt|truncated")


def test_garbage_and_foreign_files_are_rejected(tmp_path, nm24_dir):
    _unpack_fails(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 8, tmp_path, "not valid JSON")
    _unpack_fails((nm24_dir / "model.safetensors").read_bytes(), tmp_path, "not an edgeprune packed file")


def _rewrite(packed24, tmp_path, edit_manifest=None, edit_tensors=None, fix_checksum=True) -> bytes:
    with safe_open(packed24[0], framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta[MANIFEST_KEY])
    if edit_manifest:
        edit_manifest(manifest)
    if edit_tensors:
        edit_tensors(tensors)
    text = json.dumps(manifest, sort_keys=True)
    checksum = _checksum(text, tensors) if fix_checksum else meta[CHECKSUM_KEY]
    path = tmp_path / "rewritten.nm"
    save_file(tensors, str(path), metadata={MANIFEST_KEY: text, CHECKSUM_KEY: checksum})
    return path.read_bytes()


def test_other_schema_version_is_rejected(packed24, tmp_path):
    data = _rewrite(packed24, tmp_path, edit_manifest=lambda m: m.update(schema_version=2))
    _unpack_fails(data, tmp_path, "schema version 2; this edgeprune reads version 1")


def test_manifest_edit_without_checksum_update_is_caught(packed24, tmp_path):
    data = _rewrite(packed24, tmp_path, edit_manifest=lambda m: m.update(edgeprune_version="9.9"), fix_checksum=False)
    _unpack_fails(data, tmp_path, "checksum mismatch")


def test_repeated_positions_are_rejected_even_with_a_valid_checksum(packed24, tmp_path):
    def scramble(tensors):
        key = "nm/model.layers.0.mlp.up_proj.weight/indices"
        tensors[key] = torch.zeros_like(tensors[key])  # every slot says position 0

    _unpack_fails(_rewrite(packed24, tmp_path, edit_tensors=scramble), tmp_path, "positions of model.layers.0.mlp.up_proj")


def test_wrong_shapes_and_escaping_paths_are_rejected(packed24, tmp_path):
    def shrink(tensors):
        key = "nm/model.layers.1.mlp.down_proj.weight/values"
        tensors[key] = tensors[key][:, :-2].contiguous()

    _unpack_fails(_rewrite(packed24, tmp_path, edit_tensors=shrink), tmp_path, "down_proj.weight/values")

    def escape_manifest(manifest):
        manifest["files"]["../evil.json"] = manifest["files"].pop("config.json")

    def escape_tensors(tensors):
        tensors["file/../evil.json"] = tensors.pop("file/config.json")

    data = _rewrite(packed24, tmp_path, edit_manifest=escape_manifest, edit_tensors=escape_tensors)
    _unpack_fails(data, tmp_path, "escapes the output folder")
    assert not (tmp_path / "evil.json").exists()


def test_header_length_beyond_the_file(packed24, tmp_path):
    data = _copy(packed24, tmp_path)
    data[:8] = struct.pack("<Q", len(data))
    _unpack_fails(bytes(data), tmp_path, "truncated")


# ---------------------------------------------------------------- CLI


def test_cli_pack_unpack_check(nm24_dir, tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["pack", str(nm24_dir), "--out", str(tmp_path / "p.nm")])
    assert result.exit_code == 0, result.output
    assert "0.562x dense fp16" in result.output
    result = runner.invoke(app, ["unpack", str(tmp_path / "p.nm"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "config.json").exists()
    result = runner.invoke(app, ["check", str(nm24_dir), "--pattern", "2:4"])
    assert result.exit_code == 0 and "14/14 layers are 2:4" in result.output
    result = runner.invoke(app, ["check", str(tiny_llama_dir)])
    assert result.exit_code == 1 and "first offender: model.layers.0.self_attn.q_proj" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["pack", "{dense}", "--out", "{tmp}/p.nm"],
        ["pack", "{nm}", "--out", "{tmp}/p.nm", "--pattern", "4:2"],
        ["pack", "{nm}", "--out", "{tmp}/p.nm", "--pattern", "0:4"],
        ["unpack", "{tmp}/missing.nm", "--out", "{tmp}/out"],
        ["unpack", "{nm}/config.json", "--out", "{tmp}/out"],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, nm24_dir, tiny_llama_dir, tmp_path):
    argv = [a.format(dense=tiny_llama_dir, nm=nm24_dir, tmp=tmp_path) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "p.nm").exists() and not (tmp_path / "out").exists()


def test_bf16_model_with_bf16_values_is_exact_and_shards_are_kept(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    src = _nm_folder(tmp_path / "f32", tiny_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "src", max_shard_size="100KB")
    tiny_tokenizer.save_pretrained(tmp_path / "src")
    shards = sorted(p.name for p in (tmp_path / "src").glob("*.safetensors"))
    assert len(shards) > 1
    pack(tmp_path / "src", tmp_path / "p.nm", values="bf16")
    unpack(tmp_path / "p.nm", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    for shard in shards:
        a, b = load_file(str(tmp_path / "src" / shard)), load_file(str(tmp_path / "out" / shard))
        assert set(a) == set(b) and all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto").dtype == torch.bfloat16
