"""Profiling exported ONNX graphs with ONNX Runtime under a device profile: each variant × thread count in its own
fresh process, latency (TTFT and decode with the KV cache for decoders), memory sampled from outside, ORT's op
profile, budgets as pass/fail, and a report folder (report.json, report.md, report.html).

    edgeprune profile out/smol-onnx out/smol-2of4-onnx --device devices/laptop-x86-4t.toml --threads 1,2 --out runs/smol
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from edgeprune.errors import EdgepruneError
from edgeprune.profiling.devices import DeviceProfile, load_device
from edgeprune.profiling.results import Budget, Report, RunResult, VariantResult

REPORT_DIR = Path("runs/profile")
STRICT_REPEATS = 3
STRICT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Workload:
    """What is run: prompt lengths and generated tokens for decoders; batch sizes × sequence lengths for encoders."""

    prompt_lengths: tuple[int, ...] = (128, 512)
    decode_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1,)
    seq_lengths: tuple[int, ...] = (128,)
    op_profile: bool = True  # a separate ORT-profiled session after the timed runs
    timeout_s: float = 1800.0  # per measuring process

    def __post_init__(self):
        for key in ("prompt_lengths", "batch_sizes", "seq_lengths"):
            values = getattr(self, key)
            if not values or any(v < 1 for v in values):
                raise EdgepruneError(f"{key.replace('_', ' ')} {list(values)} must be positive", f"pass e.g. --{key.replace('_', '-')} 128")
        if self.decode_tokens < 1:
            raise EdgepruneError(f"decode tokens {self.decode_tokens} must be at least 1", "pass e.g. --decode-tokens 32")


@dataclass(frozen=True)
class ProfileConfig:
    """How ``edgeprune profile`` measures, besides the device profile: as the Python API and recipes take it."""

    threads: tuple[int, ...] | None = None  # None: the profile's intra_op_threads, else every usable core
    strict: bool = False  # measure 3 times in fresh processes; flag medians that differ > 5%
    workload: Workload = Workload()
    warmup: int | None = None  # override the profile's warm-up runs
    runs: int | None = None  # override the profile's timed runs

    def __post_init__(self):
        if self.threads is not None and (not self.threads or any(t < 1 for t in self.threads)):
            raise EdgepruneError(f"thread counts {list(self.threads)} must all be 1 or more", "pass e.g. --threads 1,2,4")
        if self.warmup is not None and self.warmup < 0:
            raise EdgepruneError(f"warmup {self.warmup} must be 0 or more", "pass e.g. --warmup 10")
        if self.runs is not None and self.runs < 1:
            raise EdgepruneError(f"runs {self.runs} must be 1 or more", "pass e.g. --runs 30")

    def device(self, device: DeviceProfile) -> DeviceProfile:
        """``device`` with this config's warm-up and run counts, where set."""
        import dataclasses

        changes = {k: v for k, v in (("warmup", self.warmup), ("runs", self.runs)) if v is not None}
        return dataclasses.replace(device, **changes) if changes else device


@dataclass
class _Variant:
    name: str
    graph: Path
    kind: str
    size_bytes: int
    files: dict[str, int]
    quantization: str
    quality: dict
    vocab: int


def _require_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EdgepruneError(f"profiling needs onnx and onnxruntime ({exc.name} is missing)", "run: pip install 'edgeprune[onnx]'") from None


def _find_graph(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_file() and path.suffix in (".onnx", ".ort"):
        return path
    if not path.exists():
        raise EdgepruneError(f"ONNX folder '{path}' does not exist", "pass a folder written by edgeprune export")
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return path / "model.onnx"
        graphs = sorted(path.glob("*.onnx"))
        if len(graphs) == 1:
            return graphs[0]
        if graphs:
            raise EdgepruneError(f"'{path}' has {len(graphs)} graphs and no model.onnx", f"pass one of them, e.g. {graphs[0]}")
    raise EdgepruneError(f"'{path}' has no ONNX model (model.onnx)", "pass a folder written by edgeprune export, or a .onnx file")


def _inspect(graph: Path) -> tuple[str, set[str], dict[str, int], int]:
    """Kind of graph, its operator types, files on disk (graph + external data) and vocabulary size; corrupt → error."""
    import onnx

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-ish messages, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise EdgepruneError(f"'{graph}' is not a readable ONNX model ({first})", "re-export it with edgeprune export") from None
    if not model.graph.node:
        raise EdgepruneError(f"'{graph}' is not a readable ONNX model (its graph has no nodes)", "re-export it with edgeprune export")
    inputs = {i.name for i in model.graph.input}
    kind = "decoder" if "input_ids" in inputs and any(n.startswith("past_key_values.") for n in inputs) else \
        "encoder" if "input_ids" in inputs else "graph"
    files = {graph.name: graph.stat().st_size}
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in files:
                data = graph.parent / entry.value
                if not data.is_file():
                    raise EdgepruneError(f"'{graph}' needs external data '{entry.value}', which is missing", "copy the whole export folder")
                files[entry.value] = data.stat().st_size
    vocab = 100  # token ids are drawn below this; real tokens do not change the timing
    config = graph.parent / "config.json"
    try:
        vocab = int(json.loads(config.read_text()).get("vocab_size") or vocab) if config.is_file() else vocab
    except (ValueError, TypeError, AttributeError):
        pass
    ops = {n.op_type for n in model.graph.node}
    return kind, ops, files, vocab


def _quantization(ops: set[str]) -> str:
    if "MatMulNBits" in ops:
        return "int4"
    if ops & {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}:
        return "int8"
    return "none"


def _find_key(data, key: str):
    if isinstance(data, dict):
        if key in data and not isinstance(data[key], (dict, list)):
            return data[key]
        for v in data.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _quality(graph: Path, quant: str) -> dict:
    """Quality figures the folder's edgeprune.json carries (pruning, export verification, evaluation), if any."""
    meta_path = graph.parent / "edgeprune.json"
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return {}
    out = {}
    pruning = meta.get("pruning") or {}
    if pruning:
        out |= {"method": pruning.get("method"), "sparsity": pruning.get("sparsity"), "overall_sparsity": pruning.get("overall_sparsity")}
    for key in ("perplexity", "embedding_cosine_mean", "embedding_cosine_min"):
        value = _find_key({k: v for k, v in meta.items() if k != "export"} | {"evaluation": meta.get("evaluation")}, key)
        if isinstance(value, (int, float)):
            out[key] = value
    export = meta.get("export") or {}
    verify = export.get("verify") or {}
    quantized = export.get("quantized") or {}
    if quant != "none" and quantized.get("file") == graph.name and quantized.get("bytes") not in (None, graph.stat().st_size):
        out["quality_note"] = f"edgeprune.json describes a different {graph.name} (size differs); its quality figures are not used"
    elif quant != "none" and quantized.get("file") == graph.name:
        quality = quantized.get("quality") or {}
        if "max_abs_diff" in quality:
            out["max_abs_diff_vs_torch"] = quality["max_abs_diff"] if not isinstance(quality["max_abs_diff"], dict) \
                else max(quality["max_abs_diff"].values())
        if "greedy_tokens_identical_prefix" in quality:
            out["greedy_tokens_identical"] = f"{quality['greedy_tokens_identical_prefix']}/{quality.get('new_tokens')}"
    elif graph.name == "model.onnx" and verify:
        if verify.get("max_abs_diff"):
            out["max_abs_diff_vs_torch"] = max(verify["max_abs_diff"].values())
        if verify.get("tokens_identical") is not None:
            n = verify.get("new_tokens")
            out["greedy_tokens_identical"] = f"{n if verify['tokens_identical'] else 'not'}/{n}"
    return {k: v for k, v in out.items() if v is not None}


def _variants(onnx_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[_Variant]:
    out, names = [], set()
    for i, spec in enumerate(onnx_dirs):
        graph = _find_graph(spec)
        kind, ops, files, vocab = _inspect(graph)
        quant = _quantization(ops)
        name = graph.parent.name if graph.name == "model.onnx" else f"{graph.parent.name}/{graph.stem}"
        name = labels[i] if labels and i < len(labels) else name
        while name in names:
            name += "'"
        names.add(name)
        out.append(_Variant(name, graph.resolve(), kind, sum(files.values()), files, quant, _quality(graph, quant), vocab))
    return out


def _providers(device: DeviceProfile, notes: list[str]) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in device.execution_providers if p not in available]
    if missing and device.require_providers:
        raise EdgepruneError(f"execution provider {missing[0]} (device profile '{device.name}') is not installed in this "
                             f"onnxruntime; installed: {', '.join(available)}",
                             "install an onnxruntime build with it, or set require_providers = false to fall back to CPU")
    chosen = [p for p in device.execution_providers if p in available]
    if missing:
        fallback = chosen if "CPUExecutionProvider" in chosen else chosen + ["CPUExecutionProvider"]
        notes.append(f"execution provider(s) {', '.join(missing)} not installed in this onnxruntime; "
                     f"fell back to {' → '.join(fallback)}")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _cores(device: DeviceProfile, notes: list[str]) -> list[int] | None:
    """The profile's cores that exist here; clamped (and said so) when this host lacks some."""
    host = sorted(os.sched_getaffinity(0))
    if device.cores is None:
        return None
    wanted = list(device.cores)
    present = [c for c in wanted if c in host]
    if present == wanted:
        return wanted
    clamped = present or host[: len(wanted)]
    notes.append(f"the profile pins cores {wanted}, but this host only offers cores {host}; pinned to {clamped} instead")
    return clamped


def _host() -> dict:
    import onnxruntime as ort
    import psutil

    from edgeprune.runtime import cpu_name

    return {
        "cpu": cpu_name(), "machine": platform.machine(), "system": platform.platform(), "logical_cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)), "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(), "onnxruntime": ort.__version__, "load_average_start": list(os.getloadavg()),
    }


def _budgets(device: DeviceProfile, run: RunResult) -> list[Budget]:
    out = []
    if device.memory_budget_mb is not None and run.memory is not None:
        out.append(Budget("memory_budget_mb", run.memory.peak_mb, device.memory_budget_mb, "peak RSS (MiB), load or run"))
    if device.latency_p90_ms_budget is not None:
        if run.decoder:
            d = run.decoder[0]
            out.append(Budget("latency_p90_ms_budget", d.prefill.p90, device.latency_p90_ms_budget,
                              f"p90 time to first token at {d.prompt_tokens} prompt tokens (ms)"))
        elif run.encoder:
            e = run.encoder[0]
            out.append(Budget("latency_p90_ms_budget", e.latency.p90, device.latency_p90_ms_budget,
                              f"p90 latency at batch {e.batch_size} × {e.seq_len} tokens (ms)"))
    if device.decode_ms_per_token_budget is not None and run.decoder:
        worst = max(run.decoder, key=lambda d: d.decode_ms_per_token)
        out.append(Budget("decode_ms_per_token_budget", worst.decode_ms_per_token, device.decode_ms_per_token_budget,
                          f"mean decode ms/token after a {worst.prompt_tokens}-token prompt"))
    return out


def _strict(repeats: list[RunResult]) -> RunResult:
    """Three fresh measurements: keep the one with the median headline figure, flag figures whose medians differ > 5%."""
    ok = [r for r in repeats if r.ok]
    if not ok:
        return repeats[0]
    keys = list(ok[0].headline)
    primary_key = keys[0] if keys else None
    chosen = sorted(ok, key=lambda r: r.headline.get(primary_key, 0))[len(ok) // 2] if primary_key else ok[0]
    chosen.repeats = [{"pid": r.pid, "status": r.status, "reason": r.reason, **{k: round(v, 4) for k, v in r.headline.items()}}
                      for r in repeats]
    for key in keys:
        values = [r.headline[key] for r in ok if key in r.headline]
        median = statistics.median(values)
        spread = max(abs(v - median) for v in values) / median if median else 0.0
        if spread > STRICT_TOLERANCE:
            chosen.unstable.append(f"{key}: repeat medians {', '.join(f'{v:.3g}' for v in values)} differ by up to "
                                   f"{spread:.1%} (> {STRICT_TOLERANCE:.0%})")
    if len(ok) < len(repeats):
        chosen.unstable.append(f"{len(repeats) - len(ok)} of {len(repeats)} repeats failed")
    return chosen


def profile(
    onnx_dirs: Sequence[str | Path],
    device: DeviceProfile | str | Path,
    threads: Sequence[int] | None = None,
    out: str | Path = REPORT_DIR,
    strict: bool = False,
    workload: Workload = Workload(),
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    names: Sequence[str] | None = None,
) -> Report:
    """Measure each ONNX folder (or .onnx file) at each thread count under ``device``; write report.json/.md/.html to ``out``.

    ``names`` label the variants in the report (default: their folder names)."""
    from edgeprune.io import atomic_dir, check_out_dir
    from edgeprune.profiling.ops import summarize_trace
    from edgeprune.profiling.runner import measure
    from edgeprune.report import write_report

    _require_ort()
    if not isinstance(device, DeviceProfile):
        device = load_device(device)
    if not onnx_dirs:
        raise EdgepruneError("no ONNX folder given", "pass one or more folders written by edgeprune export")
    check_out_dir(out, overwrite)
    if threads is not None:
        threads = list(threads)
        if not threads or any(t < 1 for t in threads):
            raise EdgepruneError(f"thread counts {threads} must all be 1 or more", "pass e.g. --threads 1,2,4")
    variants = _variants(onnx_dirs, names)
    notes: list[str] = []
    providers = _providers(device, notes)
    cores = _cores(device, notes)
    usable = len(cores) if cores else len(os.sched_getaffinity(0))
    if threads is None:
        threads = [device.intra_op_threads or usable]
    if max(threads) > usable:
        notes.append(f"{max(threads)} threads run on {usable} usable core(s) here: oversubscribed, so slower than on the device")
    host = _host()
    report = Report(device=device.to_dict(), host=host, variants=[], notes=notes, strict=strict,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    workload={k: list(v) if isinstance(v, tuple) else v for k, v in workload.__dict__.items()})
    with atomic_dir(out, overwrite) as tmp:
        for v in variants:
            result = VariantResult(v.name, str(v.graph), v.kind, v.size_bytes, v.files, v.quantization, v.quality)
            if device.quantization != "none" and v.quantization != device.quantization:
                notes.append(f"{v.name} is {v.quantization if v.quantization != 'none' else 'not quantised'}; "
                             f"the profile's preset is {device.quantization}")
            for n in threads:
                spec = {
                    "graph": str(v.graph), "threads": n, "cores": cores, "providers": providers,
                    "graph_optimization": device.graph_optimization, "cpu_mem_arena": device.cpu_mem_arena,
                    "mem_pattern": device.mem_pattern, "warmup": device.warmup, "runs": device.runs,
                    "min_seconds": device.min_seconds, "vocab": v.vocab, "prompt_lengths": list(workload.prompt_lengths),
                    "decode_tokens": workload.decode_tokens, "batch_sizes": list(workload.batch_sizes),
                    "seq_lengths": list(workload.seq_lengths),
                }
                repeats = []
                for r in range(STRICT_REPEATS if strict else 1):
                    if progress:
                        progress(f"{v.name}: {n} thread(s)" + (f", repeat {r + 1}/{STRICT_REPEATS}" if strict else ""))
                    trace_name = f"{_slug(v.name)}-t{n}" + (f"-r{r + 1}" if strict else "") + ".json"
                    run, trace = measure(spec, device.memory_limit_mb, workload.timeout_s,
                                         tmp / "traces" if workload.op_profile else None, trace_name)
                    if trace is not None:
                        run.op_profile = summarize_trace(trace, f"traces/{trace_name}")
                    run.budgets = _budgets(device, run) if run.ok else []
                    if run.ok and run.reason:
                        notes.append(f"{v.name} @ {n} thread(s): {run.reason}")
                    if progress and not run.ok:
                        progress(f"  failed: {run.reason}")
                    repeats.append(run)
                result.runs.append(_strict(repeats) if strict else repeats[0])
            report.variants.append(result)
        report.host["load_average_end"] = list(os.getloadavg())
        write_report(report, tmp)
    return report


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


__all__ = ["DeviceProfile", "ProfileConfig", "REPORT_DIR", "Report", "Workload", "load_device", "profile"]
