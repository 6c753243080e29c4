"""Packed N:M storage: one safetensors container holding a pruned model's N:M layers compactly.

``edgeprune pack DIR --out model.nm.safetensors`` keeps only the N slots of each group
of M (values + bit-packed positions); ``edgeprune unpack`` turns it back into a loadable
Hugging Face folder. The layout below is also in docs/packed-format.md.

Layout, schema version 1
========================

The container is an ordinary safetensors file. Its header ``__metadata__`` holds two
strings: ``edgeprune.packed`` (the manifest, JSON) and ``edgeprune.sha256``. Tensors:

``nm/<key>/values``
    The kept values of the N:M weight ``<key>`` (a state-dict key such as
    ``model.layers.0.mlp.up_proj.weight``, shape ``[rows, cols]``), shape
    ``[rows, cols / M * N]``: group ``g`` of row ``r`` fills columns ``g*N .. g*N+N-1``.
    Dtype F32, F16 or BF16 (``--values``), or I8 with ``--values int8``.
``nm/<key>/scales``
    int8 only: F32 ``[rows]``, one symmetric scale per output channel,
    ``scale = max |kept value in the row| / 127`` and ``value = code * scale``.
``nm/<key>/indices``
    U8, the position (0..M-1) of every kept value inside its group, in the same
    row-major order as ``values``, bit-packed with ``b = ceil(log2 M)`` bits each:
    position ``k`` occupies stream bits ``k*b .. k*b+b-1`` (least significant bit
    first), and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``. The last byte is
    zero-padded; the length is ``ceil(rows * cols / M * N * b / 8)`` bytes. For 2:4 that
    is 2 bits per kept value: byte = ``i0 | i1 << 2 | i2 << 4 | i3 << 6``.
    Every group stores exactly N slots with strictly ascending positions; a group with
    fewer than N non-zeros fills its spare slots with zero-valued positions (lowest
    first), so slots may hold an exact zero.
``dense/<key>``
    Every other weight (embeddings, norms, biases, layers kept dense), as in the source
    or cast with ``--dense fp16|bf16|fp32``.
``file/<relative path>``
    U8 bytes of each non-weight file of the folder (config, tokenizer, edgeprune.json, ...).

Manifest (JSON): ``format`` = ``"edgeprune-packed-nm"``, ``schema_version`` = 1, ``pattern``,
``n``, ``m``, ``index_bits``, ``values``, ``dense``, ``tensors`` (state-dict key →
``{"kind": "nm"|"dense", "dtype", "shape", "shard"}``: the source dtype, shape and shard file),
``shards`` (shard file → its safetensors metadata), ``files`` (relative path → byte count),
``sizes`` (the :class:`PackReport` size figures) and ``edgeprune_version``.

``edgeprune.sha256`` is the hex sha256 of the UTF-8 manifest string followed by, for every
tensor in sorted name order, ``name`` as UTF-8, one NUL byte and the tensor's raw
little-endian bytes. Readers reject other schema versions, a checksum mismatch, tensors
missing or extra, wrong dtypes or shapes, positions ``>= M`` or not strictly ascending.

Exactness: kept values stored in the layer's own dtype (or wider) come back bit-exact;
positions outside the kept slots come back as +0.0 (a pruned weight saved as -0.0 by
``w * mask`` compares equal and computes the same, but its sign bit is not kept).
With ``--values fp16|bf16|int8`` (or a narrower ``--dense``) unpack restores the rounded
values, cast back to the source dtype.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.metadata import PACKED_SCHEMA_VERSION as SCHEMA_VERSION
from edgeprune.metadata import read_metadata
from edgeprune.sparsity.patterns import NMReport, check_nm, parse_sparsity, to_nm

__all__ = ["PackReport", "SCHEMA_VERSION", "pack", "unpack", "check_folder", "pack_bits", "unpack_bits"]

FORMAT = "edgeprune-packed-nm"
MANIFEST_KEY = "edgeprune.packed"
CHECKSUM_KEY = "edgeprune.sha256"

_VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DENSE_CHOICES = ("keep", "fp32", "fp16", "bf16")
_DTYPE_NAMES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_SKIPPED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx")
_MAX_HEADER = 100_000_000  # the safetensors reference limit


@dataclass(frozen=True)
class PackReport:
    """What ``pack`` wrote, with size ratios against dense fp32 / fp16 tensors (headers excluded)."""

    schema_version: int
    pattern: str
    values: str
    dense: str
    layers_packed: int
    tensors_dense: int  # every other weight tensor, stored dense
    linear_params: int  # weights in the packed N:M layers
    linear_bytes: int  # their packed values + positions (+ int8 scales)
    linear_ratio_fp32: float  # linear_bytes / (4 * linear_params)
    linear_ratio_fp16: float  # linear_bytes / (2 * linear_params)
    model_params: int  # every weight tensor element
    model_bytes: int  # every stored weight tensor (packed + dense), without the carried files
    model_ratio_fp32: float  # model_bytes / the same model as dense fp32
    model_ratio_fp16: float
    files_bytes: int  # config, tokenizer and other carried files
    signed_zeros_dropped: int  # pruned -0.0 weights that unpack as +0.0
    file_bytes: int = 0  # the container on disk (known after writing)
    seconds: float = 0.0
    skipped_files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- bit packing


def index_bits(m: int) -> int:
    """Bits per stored position: ceil(log2 M)."""
    return max(1, math.ceil(math.log2(m)))


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) into a uint8 stream, ``bits`` each, least significant bit first."""
    flat = values.reshape(-1).to(torch.uint8)
    stream = ((flat.unsqueeze(1) >> torch.arange(bits, dtype=torch.uint8)) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` integers, as int64."""
    stream = ((packed.reshape(-1).unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    chunks = stream[: count * bits].reshape(count, bits).to(torch.int64)
    return (chunks << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


# ---------------------------------------------------------------------------- one layer


def _packed_shapes(shape: tuple[int, int], n: int, m: int) -> tuple[tuple[int, int], int]:
    rows, cols = shape
    kept = rows * (cols // m) * n
    return (rows, cols // m * n), math.ceil(kept * index_bits(m) / 8)


def pack_layer(weight: torch.Tensor, n: int, m: int, values: str, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """Split an N:M weight into kept values (+ int8 scales) and packed positions; also count dropped -0.0."""
    rows, cols = weight.shape
    groups = weight.reshape(-1, m)
    nonzero = groups != 0
    counts = nonzero.sum(dim=1)
    if bool((counts > n).any()):
        first = int(torch.nonzero(counts > n)[0])
        row, group = divmod(first, cols // m)
        raise EdgepruneError(
            f"layer {name} is not {n}:{m}: row {row}, group {group} (inputs {group * m}..{group * m + m - 1}) "
            f"has {int(counts[first])} non-zeros",
            f"prune it with --sparsity {n}:{m}, pack with the pattern it was pruned to, or check it with `edgeprune check`",
        )
    signed_zero = torch.signbit(groups) & ~nonzero
    # Slot choice: every non-zero, then -0.0 (so its sign survives), then +0.0; ties to the lower position.
    keep = to_nm(nonzero.to(torch.int8) * 2 + signed_zero.to(torch.int8), n, m)
    dropped_signed = int((signed_zero & ~keep).sum())
    positions = torch.arange(m).expand_as(keep)[keep]  # row-major, so ascending inside each group
    kept = groups[keep].reshape(rows, cols // m * n)
    out = {"indices": pack_bits(positions, index_bits(m))}
    if values == "int8":
        wide = kept.float()
        scales = wide.abs().amax(dim=1) / 127
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        out["values"] = torch.round(wide / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        out["scales"] = scales
    else:
        target = _VALUE_DTYPES[values]
        cast = kept.to(target)
        if bool((torch.isinf(cast) & torch.isfinite(kept)).any()):
            raise EdgepruneError(
                f"layer {name} has values beyond the {values} range", "pack with --values bf16 or fp32"
            )
        out["values"] = cast
    return out, dropped_signed


def unpack_layer(parts: dict[str, torch.Tensor], shape: tuple[int, int], dtype: torch.dtype, n: int, m: int, name: str) -> torch.Tensor:
    """Rebuild the dense weight from its packed parts, checking the positions first."""
    rows, cols = shape
    kept = parts["values"]
    count = kept.numel()
    positions = unpack_bits(parts["indices"], index_bits(m), count).reshape(-1, n)
    if bool((positions >= m).any()) or (n > 1 and bool((positions[:, 1:] <= positions[:, :-1]).any())):
        raise EdgepruneError(f"packed file is corrupt: positions of {name} are out of range or repeated", "re-create it with `edgeprune pack`")
    if kept.dtype == torch.int8:
        scales = parts["scales"]
        wide = kept.to(torch.float32) * scales[:, None]
    else:
        wide = kept
    groups = torch.zeros(rows * (cols // m), m, dtype=dtype)
    groups.scatter_(1, positions, wide.reshape(-1, n).to(dtype))
    return groups.reshape(rows, cols)


# ---------------------------------------------------------------------------- the source folder


def _shards(model_dir: Path) -> list[str]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (KeyError, ValueError, AttributeError) as exc:
            raise EdgepruneError(f"{index} is not a valid safetensors index ({exc})", "re-save the model") from None
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not shards:
        raise EdgepruneError(
            f"'{model_dir}' has no safetensors weights",
            "pack reads folders written by `edgeprune prune` (or save_pretrained(..., safe_serialization=True))",
        )
    return shards


def _nm_layer_keys(model_dir: Path) -> tuple[list[str], set[str]]:
    """State-dict keys of the prunable linears (from the architecture adapter), and those edgeprune kept dense."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from edgeprune.models import adapter_for_model_type

    if not (model_dir / "config.json").exists():
        raise EdgepruneError(f"'{model_dir}' is not a model folder (no config.json)", "pass a folder written by `edgeprune prune`")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read {model_dir / 'config.json'}: {str(exc).splitlines()[0]}", "re-save the model") from None
    adapter = adapter_for_model_type(config.model_type)
    model_cls = AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel
    with torch.device("meta"):
        skeleton = model_cls.from_config(config)
    names = list(adapter.prunable_linears(skeleton))
    kept_dense: set[str] = set()
    meta = read_metadata(model_dir, strict=False)
    if meta is not None:
        try:
            pruned = {layer["name"] for layer in meta.get("layers", [])}
        except (TypeError, KeyError):
            pruned = None
        if pruned:
            kept_dense = {f"{name}.weight" for name in names if name not in pruned}
    return [f"{name}.weight" for name in names], kept_dense


def _carried_files(model_dir: Path, shards: list[str]) -> tuple[dict[str, bytes], list[str]]:
    files, skipped = {}, []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(model_dir).parts):
            continue
        if rel in shards:
            continue
        if path.suffix in _SKIPPED_SUFFIXES or path.suffix == ".safetensors":
            skipped.append(rel)
            continue
        files[rel] = path.read_bytes()
    return files, skipped


# ---------------------------------------------------------------------------- checksum


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _checksum(manifest_text: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(manifest_text.encode())
    for name in sorted(tensors):
        digest.update(name.encode() + b"\0")
        digest.update(_tensor_bytes(tensors[name]))
    return digest.hexdigest()


# ---------------------------------------------------------------------------- pack


def pack(
    model_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    pattern: str = "2:4",
    values: str = "fp16",
    dense: str = "keep",
    overwrite: bool = False,
) -> PackReport:
    """Pack the N:M layers of a pruned HF folder (kept values + positions) into one safetensors container."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from edgeprune import __version__
    from edgeprune.io import atomic_file

    start = time.perf_counter()
    spec = parse_sparsity(pattern)
    if not spec.is_nm:
        raise EdgepruneError(f"pattern '{pattern}' is not N:M", "use --pattern 2:4, 4:8 or another N:M with 0 < N < M")
    n, m = spec.n, spec.m
    if m > 256:
        raise EdgepruneError(f"M={m} is too large for the packed format", "use M <= 256 (positions are stored in at most 8 bits)")
    if values not in (*_VALUE_DTYPES, "int8"):
        raise EdgepruneError(f"unknown value storage '{values}'", "use --values fp32, fp16, bf16 or int8")
    if dense not in _DENSE_CHOICES:
        raise EdgepruneError(f"unknown dense storage '{dense}'", "use --dense keep, fp32, fp16 or bf16")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EdgepruneError(f"model folder '{model_dir}' not found", "pass a folder written by `edgeprune prune`")
    out_file = Path(out_file)
    if out_file.exists() and not overwrite:
        raise EdgepruneError(f"output '{out_file}' already exists", "pass --overwrite or choose another --out")

    shards = _shards(model_dir)
    nm_keys, kept_dense = _nm_layer_keys(model_dir)
    files, skipped = _carried_files(model_dir, shards)

    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    shard_meta: dict[str, dict] = {}
    sources: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = model_dir / shard
        if not path.exists():
            raise EdgepruneError(f"weight shard '{path}' is missing", "re-save the model")
        try:
            with safe_open(path, framework="pt") as handle:
                shard_meta[shard] = handle.metadata() or {}
                for key in handle.keys():
                    sources[key] = handle.get_tensor(key)
                    entries[key] = {"shard": shard}
        except Exception as exc:  # safetensors raises its own error types for unreadable files
            raise EdgepruneError(f"cannot read weights '{path}': {str(exc).splitlines()[0]}", "re-save the model") from None

    missing = [k for k in nm_keys if k not in sources]
    if missing:
        raise EdgepruneError(f"weight '{missing[0]}' is not in the safetensors files of '{model_dir}'", "re-save the model with save_pretrained")

    # Check every layer first, so the error names the first offending layer in model order.
    targets = [k for k in nm_keys if k not in kept_dense]
    for key in targets:
        weight = sources[key]
        name = key.removesuffix(".weight")
        if weight.dim() != 2 or weight.shape[1] % m:
            raise EdgepruneError(
                f"layer {name} has {weight.shape[-1]} input features, not divisible by M={m}", "pack with another pattern"
            )
        if not weight.is_floating_point():
            raise EdgepruneError(f"layer {name} is stored as {weight.dtype}, not a float type", "pack the float model")
        worst = int((weight.reshape(-1, m) != 0).sum(dim=1).max())
        if worst > n:
            pack_layer(weight, n, m, values, name)  # raises with the exact row and group

    linear_params = linear_bytes = signed_dropped = 0
    target_set = set(targets)
    for key, tensor in sources.items():
        entries[key].update(dtype=_DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), shape=list(tensor.shape))
        if tensor.dtype not in _DTYPE_NAMES:
            raise EdgepruneError(f"weight '{key}' has unsupported dtype {tensor.dtype}", "save the model in float32/16")
        if key in target_set:
            parts, dropped = pack_layer(tensor, n, m, values, key.removesuffix(".weight"))
            signed_dropped += dropped
            for part, value in parts.items():
                stored[f"nm/{key}/{part}"] = value
                linear_bytes += value.numel() * value.element_size()
            linear_params += tensor.numel()
            entries[key]["kind"] = "nm"
        else:
            if dense != "keep" and tensor.is_floating_point():
                tensor = tensor.to(_VALUE_DTYPES[dense])
            stored[f"dense/{key}"] = tensor.contiguous()
            entries[key]["kind"] = "dense"
    for rel, data in files.items():
        stored[f"file/{rel}"] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    model_params = sum(t.numel() for t in sources.values())
    float_params = sum(t.numel() for t in sources.values() if t.is_floating_point())
    other_bytes = sum(t.numel() * t.element_size() for t in sources.values() if not t.is_floating_point())
    model_bytes = sum(v.numel() * v.element_size() for k, v in stored.items() if not k.startswith("file/"))
    sizes = dict(
        linear_params=linear_params,
        linear_bytes=linear_bytes,
        linear_ratio_fp32=_ratio(linear_bytes, 4 * linear_params),
        linear_ratio_fp16=_ratio(linear_bytes, 2 * linear_params),
        model_params=model_params,
        model_bytes=model_bytes,
        model_ratio_fp32=_ratio(model_bytes, 4 * float_params + other_bytes),
        model_ratio_fp16=_ratio(model_bytes, 2 * float_params + other_bytes),
        files_bytes=sum(len(d) for d in files.values()),
        signed_zeros_dropped=signed_dropped,
    )
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "pattern": f"{n}:{m}",
        "n": n,
        "m": m,
        "index_bits": index_bits(m),
        "values": values,
        "dense": dense,
        "tensors": entries,
        "shards": shard_meta,
        "files": {rel: len(data) for rel, data in files.items()},
        "sizes": sizes,
        "edgeprune_version": __version__,
    }
    manifest_text = json.dumps(manifest, sort_keys=True)
    metadata = {MANIFEST_KEY: manifest_text, CHECKSUM_KEY: _checksum(manifest_text, stored)}
    with atomic_file(out_file, overwrite) as tmp:
        save_file(stored, str(tmp), metadata=metadata)
    return PackReport(
        schema_version=SCHEMA_VERSION,
        pattern=f"{n}:{m}",
        values=values,
        dense=dense,
        layers_packed=len(targets),
        tensors_dense=len(sources) - len(targets),
        file_bytes=out_file.stat().st_size,
        seconds=round(time.perf_counter() - start, 3),
        skipped_files=skipped,
        **sizes,
    )


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


# ---------------------------------------------------------------------------- unpack


def _corrupt(problem: str) -> EdgepruneError:
    return EdgepruneError(f"packed file is corrupt: {problem}", "re-create it with `edgeprune pack`")


def _read_header(path: Path) -> dict:
    """Parse and bounds-check the safetensors header ourselves, so a bad file gives a clear message."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _corrupt(f"'{path}' is truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            raise _corrupt(f"'{path}' is truncated or not a safetensors file (header of {length} bytes, file of {size})")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(f"the header of '{path}' is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt("the header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            end = max(end, int(stop))
            if not 0 <= int(begin) <= int(stop):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise _corrupt(f"tensor '{name}' has bad offsets") from None
    if 8 + length + end != size:
        raise _corrupt(f"'{path}' is truncated or has trailing bytes ({size} bytes, header promises {8 + length + end})")
    return header


def _read_manifest(header: dict) -> tuple[dict, str, str]:
    metadata = header.get("__metadata__") or {}
    text, checksum = metadata.get(MANIFEST_KEY), metadata.get(CHECKSUM_KEY)
    if text is None:
        raise EdgepruneError("not an edgeprune packed file (no edgeprune.packed manifest)", "pass a file written by `edgeprune pack`")
    try:
        manifest = json.loads(text)
    except ValueError:
        raise _corrupt("the manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgepruneError("not an edgeprune packed file (unknown format)", "pass a file written by `edgeprune pack`")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgepruneError(
            f"packed file has schema version {version}; this edgeprune reads version {SCHEMA_VERSION}",
            "unpack it with the edgeprune version that wrote it, or re-pack the model",
        )
    if not isinstance(checksum, str):
        raise _corrupt("the checksum is missing")
    return manifest, text, checksum


def _expected(manifest: dict) -> dict[str, tuple[str, list[int]]]:
    """Every tensor the manifest implies: name → (safetensors dtype, shape)."""
    n, m = manifest["n"], manifest["m"]
    st_names = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
                "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
    values = manifest["values"]
    dense = manifest["dense"]
    out = {}
    for key, entry in manifest["tensors"].items():
        shape = [int(s) for s in entry["shape"]]
        if entry["kind"] == "nm":
            if len(shape) != 2 or shape[1] % m:
                raise _corrupt(f"layer {key} has shape {shape}, not a matrix with a multiple of {m} columns")
            value_shape, index_bytes = _packed_shapes((shape[0], shape[1]), n, m)
            out[f"nm/{key}/values"] = ({"int8": "I8", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}[values], list(value_shape))
            out[f"nm/{key}/indices"] = ("U8", [index_bytes])
            if values == "int8":
                out[f"nm/{key}/scales"] = ("F32", [shape[0]])
        elif entry["kind"] == "dense":
            dtype = entry["dtype"]
            floating = dtype in ("float32", "float16", "bfloat16", "float64")
            stored = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dense] if dense != "keep" and floating else dtype
            out[f"dense/{key}"] = (st_names[stored], shape)
        else:
            raise _corrupt(f"tensor {key} has unknown kind {entry['kind']!r}")
    for rel, count in manifest["files"].items():
        out[f"file/{rel}"] = ("U8", [int(count)])
    return out


def _safe_relpath(rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts or rel.startswith(("/", "\\")):
        raise _corrupt(f"carried file name '{rel}' escapes the output folder")
    return path


def unpack(file: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Restore a Hugging Face folder (weights, config, tokenizer) from a packed file; returns the manifest."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from edgeprune.io import atomic_dir, check_out_dir

    file = Path(file)
    if not file.is_file():
        raise EdgepruneError(f"packed file '{file}' not found", "pass a file written by `edgeprune pack`")
    check_out_dir(out_dir, overwrite)
    header = _read_header(file)
    manifest, manifest_text, checksum = _read_manifest(header)
    try:
        n, m = int(manifest["n"]), int(manifest["m"])
        if not 0 < n < m <= 256 or manifest["values"] not in (*_VALUE_DTYPES, "int8"):
            raise ValueError(f"pattern {n}:{m} / values {manifest['values']!r}")
        expected = _expected(manifest)
        for key, entry in manifest["tensors"].items():
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"unknown dtype {entry['dtype']!r} for {key}")
    except EdgepruneError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _corrupt(f"the manifest is incomplete ({exc})") from None

    present = {name: (info.get("dtype"), info.get("shape")) for name, info in header.items() if name != "__metadata__"}
    for name, (dtype, shape) in expected.items():
        if name not in present:
            raise _corrupt(f"tensor '{name}' is missing")
        if present[name] != (dtype, shape):
            raise _corrupt(f"tensor '{name}' is {present[name][0]} {present[name][1]}, expected {dtype} {shape}")
    extra = sorted(set(present) - set(expected))
    if extra:
        raise _corrupt(f"unexpected tensor '{extra[0]}'")

    try:
        with safe_open(file, framework="pt") as handle:
            stored = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors' own error types
        raise _corrupt(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if _checksum(manifest_text, stored) != checksum:
        raise _corrupt("sha256 checksum mismatch")

    shards: dict[str, dict[str, torch.Tensor]] = {}
    for key, entry in manifest["tensors"].items():
        dtype = _DTYPES[entry["dtype"]]
        if entry["kind"] == "nm":
            parts = {p: stored[f"nm/{key}/{p}"] for p in ("values", "indices", "scales") if f"nm/{key}/{p}" in stored}
            tensor = unpack_layer(parts, tuple(entry["shape"]), dtype, n, m, key.removesuffix(".weight"))
        else:
            tensor = stored[f"dense/{key}"].to(dtype)
        shards.setdefault(entry["shard"], {})[key] = tensor
    shard_meta = manifest.get("shards", {})

    with atomic_dir(out_dir, overwrite) as tmp:
        for rel in manifest["files"]:
            target = tmp / _safe_relpath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(stored[f"file/{rel}"].numpy().tobytes())
        for shard, tensors in shards.items():
            target = tmp / _safe_relpath(shard)
            target.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(target), metadata=shard_meta.get(shard) or None)
    return manifest


def read_manifest(file: str | os.PathLike) -> dict:
    """The manifest of a packed file (header only; the payload is not read or checked)."""
    manifest, _, _ = _read_manifest(_read_header(Path(file)))
    return manifest


# ---------------------------------------------------------------------------- check


def check_folder(model_dir: str | os.PathLike, pattern: str = "2:4") -> list[NMReport]:
    """Per prunable linear of a model folder: N:M groups and violations, read straight from the safetensors files."""
    from safetensors import safe_open

    spec = parse_sparsity(pattern)
    if not spec.is_nm:
        raise EdgepruneError(f"pattern '{pattern}' is not N:M", "use --pattern 2:4, 4:8 or another N:M with 0 < N < M")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EdgepruneError(f"model folder '{model_dir}' not found", "pass a folder written by `edgeprune prune`")
    keys, _ = _nm_layer_keys(model_dir)
    wanted = set(keys)
    weights: dict[str, torch.Tensor] = {}
    for shard in _shards(model_dir):
        with safe_open(model_dir / shard, framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    weights[key] = handle.get_tensor(key)
    missing = [k for k in keys if k not in weights]
    if missing:
        raise EdgepruneError(f"weight '{missing[0]}' is not in the safetensors files of '{model_dir}'", "re-save the model")
    # check_nm reads only ``.weight``; plain holders avoid building nn.Linear modules.
    layers = {key.removesuffix(".weight"): SimpleNamespace(weight=weights[key]) for key in keys}
    return check_nm(None, spec.n, spec.m, layers=layers)
