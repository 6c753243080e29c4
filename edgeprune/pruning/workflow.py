"""What ``edgeprune prune`` runs: :func:`prune` checks everything it can before the weights load, runs one
registered method on a model and writes a HF folder.

Flow: model + calibration → per-block statistics → masks (+ optional weight
updates) → zeros in the weights → ``save_pretrained`` + ``edgeprune.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edgeprune.data import CalibConfig, calibration_batch
from edgeprune.errors import EdgepruneError
from edgeprune.pruning.engine import Pruner, PruneReport, prune_model, resolve_specs
from edgeprune.pruning.hidden import HiddenPolicy, parse_hidden_memory, policy_for
from edgeprune.pruning.registry import PRUNERS
from edgeprune.sparsity import parse_sparsity


@dataclass(frozen=True)
class PruneConfig:
    """Everything ``edgeprune prune`` takes, as the Python API and recipes take it."""

    method: str = "attention"
    sparsity: str = "2:4"
    calib: CalibConfig = field(default_factory=CalibConfig)
    device: str = "cpu"
    overrides: dict[str, str] = field(default_factory=dict)  # glob on layer name → "dense" or a sparsity
    options: dict[str, Any] = field(default_factory=dict)  # method hyperparameters
    batch_size: int = 8
    permute: bool = False  # N:M: reorder input channels first (exactly absorbed) to keep more important weights
    stream: str = "auto"  # on: read/write one block at a time (memory ≈ one block); auto: when the model is over half of free RAM
    dtype: str = "auto"  # storage dtype of the output: auto (the checkpoint's), fp32, bf16 or fp16; the math is fp32
    hidden_memory: str = "auto"  # GiB the calibration hidden states may take before they spill to a mapped file; auto: ¼ of available


STREAM_MODES = ("auto", "on", "off")


def make_pruner(method: str, options: dict[str, Any] | None = None) -> Pruner:
    cls = PRUNERS.get(method)
    options = dict(options or {})
    if cls.Config is None:
        if options:
            raise EdgepruneError(f"method '{method}' takes no options (got {', '.join(options)})", "drop the options")
        return cls()
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EdgepruneError(f"unknown option '{unknown[0]}' for method '{method}'", f"known options: {', '.join(sorted(known))}")
    return cls(cls.Config(**options))


def _copy_extra_files(src: Path | None, dst: Path) -> None:
    """Carry over files save_pretrained does not write (e.g. sentence-transformers pooling config)."""
    if src is None or not src.is_dir():
        return
    for item in src.iterdir():
        target = dst / item.name
        if target.exists() or item.suffix in (".safetensors", ".bin", ".gguf", ".pt") or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, target)
        elif item.suffix in (".json", ".txt", ".md", ".model"):
            shutil.copy2(item, target)


def check_prune(model: str, out: str | Path, config: PruneConfig, overwrite: bool):
    """Every check a prune can make before the weights load: the settings, --out, the calibration text, then the
    architecture and every layer's width against the pattern on a weightless skeleton. Returns (spec, pruner, device)."""
    from edgeprune.data import check_text
    from edgeprune.io import check_out_dir
    from edgeprune.models.loading import model_skeleton
    from edgeprune.runtime import resolve_device
    from edgeprune.specs import resolve_spec

    from edgeprune.models.streaming import parse_storage_dtype

    spec = parse_sparsity(config.sparsity)
    pruner = make_pruner(config.method, config.options)
    parse_storage_dtype(config.dtype)
    parse_hidden_memory(config.hidden_memory)
    if config.stream not in STREAM_MODES:
        raise EdgepruneError(f"unknown --stream '{config.stream}'", "use auto, on or off")
    device = resolve_device(config.device)
    resolve_spec(model)
    check_out_dir(out, overwrite)
    check_text(config.calib.source, "calib", config.calib.tokens)
    skeleton = model_skeleton(model)
    if skeleton is not None:
        resolve_specs(skeleton[1], skeleton[0], spec, config.overrides)
    return spec, pruner, device


def prune(
    model: str,
    out: str | Path,
    config: PruneConfig = PruneConfig(),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PruneReport:
    """Prune ``model`` (folder, .gguf, Hub id or bundled alias) and write a Hugging Face folder to ``out``."""
    from edgeprune.models.loading import load_model

    spec, pruner, device = check_prune(model, out, config, overwrite)
    if _streams(model, config):
        return _prune_streamed(model, out, config, overwrite, progress, spec, pruner, device)
    loaded = load_model(model, device=device)
    calib_ids = calibration_batch(loaded.tokenizer, config.calib, loaded.model)
    report = prune_model(
        loaded.model, loaded.adapter, pruner, spec, calib_ids, config.overrides, config.batch_size, device, progress,
        permute=config.permute, hidden_policy=_hidden_policy(config, out, loaded.path),
    )
    save_pruned(loaded, report, out, config, device, int(calib_ids.numel()), overwrite)
    return report


def _hidden_policy(config: PruneConfig, out: str | Path, source: Path | None) -> HiddenPolicy:
    """Calibration hidden states are kept in the dtype of the model at ``source`` (16-bit: bf16); beyond
    ``--hidden-memory`` they spill next to the output (not to /tmp, often in RAM)."""
    return policy_for(source, Path(out).absolute().parent, parse_hidden_memory(config.hidden_memory))


def _streams(model: str, config: PruneConfig) -> bool:
    """Whether this prune reads and writes one block at a time (``--stream``; auto: the model's fp32 weights would
    take more than half of the memory free now). A model that neither streams nor fits in memory is refused here."""
    import psutil

    from edgeprune.data.domains import SELF
    from edgeprune.data.sources import parse_sources
    from edgeprune.models.loading import stream_source
    from edgeprune.models.streaming import Checkpoint

    free = psutil.virtual_memory().available
    self_calib = any(part.source == SELF for part in parse_sources(config.calib.source))
    if self_calib and config.stream == "on":
        raise EdgepruneError("--calib self samples from the whole model, which --stream on never holds",
                             "use another --calib (e.g. pydoc), or --stream off")
    folder = stream_source(model) if config.stream != "off" and not self_calib else None
    if config.stream == "on" and folder is None:
        raise EdgepruneError(f"'{model}' cannot be streamed: it is not a folder of safetensors weights with equal "
                             "blocks", "download it to a folder first, or pass --stream off")
    if folder is not None:
        checkpoint = Checkpoint(folder)
        fp32_bytes = checkpoint.nbytes() * 32 // torch.finfo(checkpoint.storage_dtype()).bits
        if config.stream == "on" or fp32_bytes > free // 2:
            return True
    _check_fits(model, free)
    return False


def _check_fits(model: str, free: int) -> None:
    """Loading the model whole needs its fp32 weights in memory: refuse, naming the fix, when they are more than free."""
    from edgeprune.models.loading import model_skeleton

    skeleton = model_skeleton(model)
    if skeleton is None:
        return
    need = sum(p.numel() for p in skeleton[0].parameters()) * 4
    if need > free:
        raise EdgepruneError(
            f"'{model}' needs {need / 2**30:.1f} GiB in fp32 to load whole and {free / 2**30:.1f} GiB is free",
            "save it as safetensors (save_pretrained(..., safe_serialization=True)) and pass --stream on, which holds one "
            "block at a time")


def _prune_streamed(model, out, config: PruneConfig, overwrite, progress, spec, pruner, device) -> PruneReport:
    """Prune one block at a time: each block is read, pruned, written to a partial folder next to ``out`` and
    released. The partial folder becomes ``out`` when everything is written; if the run stops (disk full, Ctrl-C),
    the same command resumes after the last block written."""
    import hashlib
    import os

    from edgeprune import __version__
    from edgeprune.io import check_out_dir
    from edgeprune.models.loading import load_streamed
    from edgeprune.models.streaming import parse_storage_dtype
    from edgeprune.progress import status

    out = check_out_dir(out, overwrite)
    loaded, stream = load_streamed(model, device, parse_storage_dtype(config.dtype))
    calib_ids = calibration_batch(loaded.tokenizer, config.calib)
    files = sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in set(stream.checkpoint.files.values()))
    stream.key = hashlib.blake2b(repr((__version__, files, dataclasses.asdict(config), str(stream.storage), device,
                                       calib_ids.tolist())).encode(), digest_size=16).hexdigest()
    partial = out.parent / f".{out.name}.partial"
    try:
        partial.mkdir(parents=True, exist_ok=True)
        start = stream.resume(partial)
        if start:
            status(f"resuming {out} after block {start - 1} (written by a stopped run)")
        report = prune_model(
            loaded.model, loaded.adapter, pruner, spec, calib_ids, config.overrides, config.batch_size, device, progress,
            permute=config.permute, stream=stream, hidden_policy=_hidden_policy(config, out, stream.checkpoint.folder),
        )
        status(f"writing {out}")
        stream.finish()
        loaded.tokenizer.save_pretrained(partial)
        _copy_extra_files(stream.checkpoint.folder, partial)
        _write_prune_metadata(partial, loaded, report, config, device, int(calib_ids.numel()), stream.storage, streamed=True)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(partial, out)
    except OSError as exc:
        raise EdgepruneError(f"writing '{out}' failed: {exc.strerror or exc} (the blocks written so far are kept in "
                             f"{partial.name})", "free disk space, then run the same command again: it resumes") from None
    except KeyboardInterrupt:
        stopped = EdgepruneError(f"interrupted; '{out}' was not written, the blocks finished so far are kept in "
                                 f"{partial.name}", "run the same command again: it resumes")
        stopped.exit_code = 130
        raise stopped from None
    return report


def save_pruned(loaded, report: PruneReport, out, config: PruneConfig, device: str, calib_tokens: int, overwrite: bool, extra: dict | None = None) -> None:
    """Write the pruned model as a Hugging Face folder with ``edgeprune.json``, atomically."""
    from edgeprune.io import atomic_dir
    from edgeprune.progress import status
    from edgeprune.structured.layout import LAYOUT_KEY, save_layout_folder

    status(f"writing {out}")
    storage = _storage_dtype(loaded, config)
    with atomic_dir(out, overwrite) as tmp:
        model = loaded.model.to("cpu").to(storage)
        if hasattr(loaded.model.config, LAYOUT_KEY):  # blocks of different sizes: the folder needs modeling_edgeprune.py
            save_layout_folder(model, loaded.adapter, loaded.tokenizer, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)
        _copy_extra_files(loaded.path if loaded.gguf_file is None else None, tmp)
        _write_prune_metadata(tmp, loaded, report, config, device, calib_tokens, storage, streamed=False, extra=extra)


def _storage_dtype(loaded, config: PruneConfig):
    """``--dtype``, or for auto the dtype of the checkpoint the model came from (fp32 for GGUF and the Hub)."""
    from edgeprune.models.streaming import model_dtype, parse_storage_dtype

    chosen = parse_storage_dtype(config.dtype)
    return chosen if chosen is not None else model_dtype(loaded.path)


def _write_prune_metadata(folder, loaded, report: PruneReport, config: PruneConfig, device: str, calib_tokens: int,
                          storage, streamed: bool, extra: dict | None = None) -> None:
    from edgeprune import __version__
    from edgeprune.metadata import write_metadata
    from edgeprune.models.streaming import DTYPE_NAMES

    meta = {
        "edgeprune_version": __version__,
        "source_model": loaded.source,
        "architecture": loaded.adapter.family,
        "task": loaded.adapter.task,
        "method": report.method,
        "sparsity": report.sparsity,
        "settings": report.settings,
        "overrides": dict(config.overrides),
        "permute": config.permute,
        "device": device,
        "calibration": dataclasses.asdict(config.calib) | {"tokens": calib_tokens},
        "seconds": round(report.seconds, 2),
        "overall_sparsity": round(report.overall_sparsity, 6),
        "storage_dtype": DTYPE_NAMES[storage],
        "streamed": streamed,
        "layers": [dataclasses.asdict(layer) for layer in report.layers],
        "attention_error": report.attention_error,
        "diagnostics": report.diagnostics,
        "permutations": report.permutations,
    } | (extra or {})
    write_metadata(folder, meta)
