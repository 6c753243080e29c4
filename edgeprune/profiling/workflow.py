"""What ``edgeprune profile`` runs: profiling exported ONNX graphs with ONNX Runtime under a device profile: each variant × thread count in its own
fresh process, latency (TTFT and decode with the KV cache for decoders), memory sampled from outside, ORT's op
profile, budgets as pass/fail, and a report folder (report.json, report.md, report.html). On this host, or on the
real device over ssh (remote.py) with the same worker, or both side by side. Decoders run in a Python loop over an
ORT session (backend "ort"), in ORT GenAI's generator (backend "genai"), or in both side by side.

    edgeprune profile out/smol-onnx out/smol-2of4-onnx --device devices/laptop-x86-4t.toml --threads 1,2 --out runs/smol
    edgeprune profile out/smol-int4 --device devices/edge-arm-2t.toml --remote ssh://pi@raspberrypi.local --also-local --out runs/pi
    edgeprune profile out/smol-int4 --device devices/this-host.toml --backend both --out runs/smol-genai
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgeprune.errors import EdgepruneError
from edgeprune.metadata import read_metadata
from edgeprune.profiling.devices import DeviceProfile, load_device
from edgeprune.profiling.remote import SshOptions
from edgeprune.profiling.results import Budget, Report, RunResult, VariantResult, with_backend

REPORT_DIR = Path("runs/profile")
STRICT_REPEATS = 3
STRICT_TOLERANCE = 0.05
WHERE = ("device", "local", "both")
#: how decoders are driven: "ort" a Python loop over an InferenceSession (the KV cache fed back as inputs), "genai"
#: ORT GenAI's generator loop (og.Model on the folder's genai_config.json, one shared KV buffer), "both" side by side
BACKENDS = ("ort", "genai", "both")


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
    backend: str = "ort"  # decoders: ort, genai or both (BACKENDS); encoders always run with ort

    def __post_init__(self):
        if self.threads is not None and (not self.threads or any(t < 1 for t in self.threads)):
            raise EdgepruneError(f"thread counts {list(self.threads)} must all be 1 or more", "pass e.g. --threads 1,2,4")
        _check_backend(self.backend)
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
    backend: str = "ort"


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise EdgepruneError(f"backend '{backend}' is unknown", f"use one of {', '.join(BACKENDS)}, e.g. --backend both")


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
    from edgeprune.onnx.graph import check_external_data

    files = {graph.name: graph.stat().st_size} | check_external_data(graph, model)
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
    meta = read_metadata(graph.parent, strict=False)
    if meta is None:
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


def _check_genai_folder(v: _Variant) -> None:
    """The genai backend runs what the folder's genai_config.json names: it must exist and name this graph."""
    from edgeprune.onnx.genai import GENAI_CONFIG

    path = v.graph.parent / GENAI_CONFIG
    fix = "re-export it with edgeprune export (or edgeprune quantize), which writes one, or profile with --backend ort"
    if not path.is_file():
        raise EdgepruneError(f"'{v.graph.parent}' has no {GENAI_CONFIG}, which the genai backend needs", fix)
    try:
        filename = json.loads(path.read_text())["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError):
        raise EdgepruneError(f"'{path}' is not a genai config (no model.decoder.filename)", fix) from None
    if filename != v.graph.name:
        raise EdgepruneError(f"'{path}' runs {filename}, not {v.graph.name}; the genai backend measures the graph it names",
                             f"profile {v.graph.name} with --backend ort, or pass the folder to measure {filename}")


def _with_backends(variants: list[_Variant], backend: str, notes: list[str]) -> list[_Variant]:
    """Each variant once per backend asked for: a decoder twice under "both" (NAME (ort), then NAME (genai), side by
    side in the tables), an encoder with the ort loop only (ORT GenAI runs decoders)."""
    import dataclasses

    out = []
    for v in variants:
        if v.kind != "decoder" and backend != "ort":
            if backend == "genai":
                raise EdgepruneError(f"{v.name} is an {v.kind}, and the genai backend (ORT GenAI) runs decoders only",
                                     "profile it with --backend ort (or --backend both, which measures encoders with ort)")
            notes.append(f"{v.name} is an {v.kind}: ORT GenAI runs decoders only, so it was measured with the ort backend alone")
            out.append(v)
            continue
        if backend != "ort":
            _check_genai_folder(v)
        if backend == "both":
            out += [dataclasses.replace(v, name=with_backend(v.name, b), backend=b) for b in ("ort", "genai")]
        else:
            out.append(dataclasses.replace(v, backend=backend))
    if any(v.backend == "genai" for v in out):
        import importlib.util

        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise EdgepruneError("the genai backend needs onnxruntime-genai, which is not installed",
                                 "run: pip install onnxruntime-genai, or profile with --backend ort")
    return out


def _compare_tokens(variants: list[VariantResult]) -> list[str]:
    """Whether the two backends generated the same greedy tokens from the same prompts (the ort and genai measurements
    of one graph sit next to each other): the genai variant's quality gets "greedy_tokens_same_as_ort" (the shortest
    identical prefix / tokens per sequence), and a note says where they part. They run the same graph, so a difference
    points at the loop, or at an end-of-text token, which the genai backend is told not to pick."""
    notes = []
    for ort, genai in zip(variants, variants[1:]):
        if (ort.backend, genai.backend) != ("ort", "genai") or ort.graph != genai.graph:
            continue
        prefixes = []
        for theirs, mine in zip(ort.runs, genai.runs):
            if not (theirs.ok and mine.ok):
                continue
            for a, b in zip(theirs.decoder, mine.decoder):
                if not (a.tokens and b.tokens):
                    continue
                same = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), min(len(a.tokens), len(b.tokens)))
                prefixes.append((same, len(b.tokens)))
                if same < len(b.tokens):
                    notes.append(f"{genai.name} @ {mine.threads} thread(s): after the {a.prompt_tokens}-token prompt its greedy "
                                 f"tokens leave the ort loop's at token {same + 1} of {len(b.tokens)}")
        if prefixes:
            genai.quality = {**genai.quality, "greedy_tokens_same_as_ort": "{}/{}".format(*min(prefixes))}
    return notes


def _providers(device: DeviceProfile, available: list[str], notes: list[str], on: str = "") -> list[str]:
    """The profile's execution providers that ``available`` (the measuring machine's onnxruntime) has, CPU last."""
    missing = [p for p in device.execution_providers if p not in available]
    if missing and device.require_providers:
        raise EdgepruneError(f"execution provider {missing[0]} (device profile '{device.name}') is not installed in "
                             f"{'the' if on else 'this'} onnxruntime{' on ' + on if on else ''}; installed: {', '.join(available)}",
                             "install an onnxruntime build with it, or set require_providers = false to fall back to CPU")
    chosen = [p for p in device.execution_providers if p in available]
    if missing:
        fallback = chosen if "CPUExecutionProvider" in chosen else chosen + ["CPUExecutionProvider"]
        notes.append(f"{_on(on)}execution provider(s) {', '.join(missing)} not installed in {'the' if on else 'this'} onnxruntime; "
                     f"fell back to {' → '.join(fallback)}")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _cores(device: DeviceProfile, host: list[int], notes: list[str], on: str = "") -> list[int] | None:
    """The profile's cores that exist on the measuring machine (``host``: its usable cores); clamped, and said so."""
    if device.cores is None:
        return None
    wanted = list(device.cores)
    present = [c for c in wanted if c in host]
    if present == wanted:
        return wanted
    clamped = present or host[: len(wanted)]
    notes.append(f"{_on(on)}the profile pins cores {wanted}, but {'the device' if on else 'this host'} only offers cores {host}; "
                 f"pinned to {clamped} instead")
    return clamped


def _on(on: str) -> str:
    return f"on {on}: " if on else ""


def _host() -> dict:
    from edgeprune.profiling.worker import host_info

    return host_info()


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
    where: str = "device",
    ssh: SshOptions = SshOptions(),
    backend: str = "ort",
) -> Report:
    """Measure each ONNX folder (or .onnx file) at each thread count under ``device``; write report.json/.md/.html to ``out``.

    ``names`` label the variants in the report (default: their folder names). ``where``: "device" measures where the
    device profile says, on its ``remote`` over ssh when it names one, else on this host; "local" on this host only
    (emulating the device); "both" on this host and on the remote, side by side in one report, the variants named
    NAME@local and NAME@HOST. ``ssh`` says how far to trust the device's host key. If the remote run stops early
    (connection lost, runner killed), the report is still written with what was measured, then RemoteRunLost is raised.
    ``backend`` (BACKENDS) drives decoders with the ort loop, ORT GenAI's generator (this host only; the folder needs
    its genai_config.json), or both, named NAME (ort) and NAME (genai); encoders always run with the ort loop."""
    from edgeprune.io import atomic_dir, check_out_dir
    from edgeprune.profiling.remote import RemoteRunLost, parse_target

    _require_ort()
    if not isinstance(device, DeviceProfile):
        device = load_device(device)
    if not onnx_dirs:
        raise EdgepruneError("no ONNX folder given", "pass one or more folders written by edgeprune export")
    if where not in WHERE:
        raise EdgepruneError(f"where '{where}' is unknown", f"use one of {', '.join(WHERE)}")
    _check_backend(backend)
    remote = parse_target(device.remote) if device.remote and where != "local" else None
    if remote is not None and backend != "ort":
        raise EdgepruneError(f"the {backend} backend measures on this host only, not on {remote}",
                             "pass --local to emulate the device here, or --backend ort to measure on it")
    if where == "both" and remote is None:
        raise EdgepruneError("measuring both here and on the device needs a remote device",
                             "pass --remote ssh://user@host, or set remote in the device profile")
    check_out_dir(out, overwrite)
    if threads is not None:
        threads = list(threads)
        if not threads or any(t < 1 for t in threads):
            raise EdgepruneError(f"thread counts {threads} must all be 1 or more", "pass e.g. --threads 1,2,4")
    notes: list[str] = []
    variants = _with_backends(_variants(onnx_dirs, names), backend, notes)
    for v in variants:
        if device.quantization != "none" and v.quantization != device.quantization:
            notes.append(f"{v.name} is {v.quantization if v.quantization != 'none' else 'not quantised'}; "
                         f"the profile's preset is {device.quantization}")
    here = remote is None or where == "both"
    report = Report(device=device.to_dict(), host=_host(), variants=[], notes=notes, strict=strict,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    workload={k: list(v) if isinstance(v, tuple) else v for k, v in workload.__dict__.items()})
    with atomic_dir(out, overwrite) as tmp, contextlib.ExitStack() as stack:
        trace_dir = tmp / "traces" if workload.op_profile else None
        session = None
        if remote is not None:  # checked first: a device that cannot measure fails before any time is spent here
            from edgeprune.profiling.remote import RemoteModel, RemoteSession, model_key

            session = stack.enter_context(RemoteSession(device, ssh, progress))
            models = {v.name: RemoteModel(v.graph.parent, v.files, model_key(v.graph.parent, v.files)) for v in variants}
            machine = session.connect(list({m.key: m for m in models.values()}.values()))
        if here:
            suffix = "@local" if remote else ""
            jobs = _jobs(variants, device, threads, strict, workload, report.host, notes, suffix)
            report.variants += _collect(variants, jobs, _measure_here(jobs, device, workload, trace_dir, progress), device,
                                        strict, suffix, {}, notes, progress)
            notes += _compare_tokens(report.variants)
        if session is not None:
            suffix = "@" + remote.host if here else ""
            jobs = _jobs(variants, device, threads, strict, workload, machine, notes, suffix, str(remote),
                         graph_of=lambda v: session.graph_path(models[v.name], v.graph.name))
            measured = _measure_remote(session, jobs, device, workload, trace_dir)
            report.variants += _collect(variants, jobs, measured, device, strict, suffix, machine, notes, progress)
            session.close()
            notes += session.notes
            if session.lost:
                notes.append(f"the remote run stopped early: {session.lost}; the measurements it did not finish are marked failed")
        report.host["load_average_end"] = list(os.getloadavg())
        from edgeprune.report.profile import write_report

        write_report(report, tmp)
    lost = session.lost if session is not None else None
    if lost:
        done = sum(r.ok for v in report.variants if v.remote for r in v.runs)
        total = sum(len(v.runs) for v in report.variants if v.remote)
        raise RemoteRunLost(f"{lost}; {done} of {total} remote measurements finished and are kept in {Path(out) / 'report.json'}",
                            "check the device (power, network, memory) and run again", report)
    return report



def interleaved(onnx_dirs: Sequence[str | Path], device: DeviceProfile | str | Path, threads: int | None = None,
                prompt: int = 128, decode_tokens: int = 32, seq_len: int = 128, sequences: int = 16, runs: int = 10,
                timeout_s: float = 1800.0) -> list[list[float]]:
    """Time several graphs side by side in one process on this host, under ``device``'s settings: ``sequences`` turns
    each, in alternating order; a decoder's turn is one ``decode_tokens``-step sequence after a ``prompt``-token
    prefill, an encoder's ``runs`` calls at 1 × ``seq_len``. Per graph, the median ms/token (ms/call) of each turn.

    For comparing graphs on a noisy host: per-turn ratios between neighbours cancel what the host does on the scale of
    seconds, which separate processes (:func:`profile`, seconds to minutes apart) cannot. Memory is not measured here
    (the graphs share the process): use :func:`profile` for that."""
    import tempfile

    from edgeprune.profiling.runner import LOCAL_COMMAND
    from edgeprune.profiling.worker import host_info, measure

    _require_ort()
    if not isinstance(device, DeviceProfile):
        device = load_device(device)
    variants = _variants(onnx_dirs)
    notes: list[str] = []
    machine = host_info()
    cores = _cores(device, machine["usable_cores"], notes)
    spec = {"graphs": [str(v.graph) for v in variants], "threads": threads or device.intra_op_threads or len(cores or machine["usable_cores"]),
            "cores": cores, "providers": _providers(device, machine["providers"], notes), "graph_optimization": device.graph_optimization,
            "cpu_mem_arena": device.cpu_mem_arena, "mem_pattern": device.mem_pattern, "vocab": min(v.vocab for v in variants),
            "prompt": prompt, "decode_tokens": decode_tokens, "batch": 1, "seq": seq_len, "sequences": sequences, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="edgeprune-interleaved-") as tmp:
        outcome = measure(spec, LOCAL_COMMAND, tmp, None, timeout_s)  # several sessions: not what the device holds
    if outcome["result"] is None:
        why = outcome["killed_reason"] or outcome["stderr_tail"] or f"exit code {outcome['returncode']}"
        raise EdgepruneError(f"the graphs could not be timed side by side on '{device.name}': {why}",
                             "choose a device profile they fit, or measure them one by one with edgeprune profile")
    return outcome["result"]["ms"]

def _jobs(variants: list[_Variant], device: DeviceProfile, threads: Sequence[int] | None, strict: bool, workload: Workload,
          machine: dict, notes: list[str], suffix: str, on: str = "", graph_of: Callable[[_Variant], str] | None = None) -> list:
    """Every measurement to take on one machine (``machine``: its host info), in order: variant × threads × repeat."""
    from edgeprune.profiling.runner import Job

    providers = _providers(device, machine["providers"], notes, on)
    cores = _cores(device, machine["usable_cores"], notes, on)
    usable = len(cores) if cores else len(machine["usable_cores"])
    threads = list(threads) if threads else [device.intra_op_threads or usable]
    if max(threads) > usable:
        notes.append(f"{_on(on)}{max(threads)} threads run on {usable} usable core(s) {'there' if on else 'here'}: oversubscribed"
                     + ("" if on else ", so slower than on the device"))
    jobs = []
    for i, v in enumerate(variants):
        for n in threads:
            spec = {
                "graph": graph_of(v) if graph_of else str(v.graph), "threads": n, "cores": cores, "providers": providers,
                "graph_optimization": device.graph_optimization, "cpu_mem_arena": device.cpu_mem_arena,
                "mem_pattern": device.mem_pattern, "warmup": device.warmup, "runs": device.runs,
                "min_seconds": device.min_seconds, "vocab": v.vocab, "prompt_lengths": list(workload.prompt_lengths),
                "decode_tokens": workload.decode_tokens, "batch_sizes": list(workload.batch_sizes),
                "seq_lengths": list(workload.seq_lengths), "backend": v.backend,
            }
            for r in range(STRICT_REPEATS if strict else 1):
                label = f"{v.name}{suffix}: {n} thread(s)" + (f", repeat {r + 1}/{STRICT_REPEATS}" if strict else "")
                trace_name = f"{_slug(v.name + suffix)}-t{n}" + (f"-r{r + 1}" if strict else "") + ".json"
                jobs.append(Job(spec, label, trace_name, i, n))
    return jobs


def _measure_here(jobs: list, device: DeviceProfile, workload: Workload, trace_dir: Path | None, progress) -> Iterator:
    from edgeprune.profiling.runner import measure

    for job in jobs:
        if progress:
            progress(job.label)
        run, trace = measure(job.spec, device.memory_limit_mb, workload.timeout_s, trace_dir, job.trace_name)
        yield job, run, trace


def _measure_remote(session, jobs: list, device: DeviceProfile, workload: Workload, trace_dir: Path | None) -> Iterator:
    from edgeprune.profiling.runner import run_result

    for index, outcome, trace in session.measure(jobs, device.memory_limit_mb, workload.timeout_s, trace_dir):
        job = jobs[index]
        if outcome is None:
            run = RunResult(threads=job.threads, status="failed", reason=f"not measured: {session.lost}")
        else:
            run = run_result(outcome, job.spec, device.memory_limit_mb, workload.timeout_s)
        yield job, run, trace


def _collect(variants: list[_Variant], jobs: list, measured: Iterator, device: DeviceProfile, strict: bool, suffix: str,
             remote: dict, notes: list[str], progress) -> list[VariantResult]:
    """Finish each measurement as it arrives (op profile, budgets, notes) and group them into VariantResults."""
    from edgeprune.profiling.ops import summarize_trace

    runs: dict[tuple[int, int], list[RunResult]] = {}
    for job, run, trace in measured:
        if trace is not None:
            run.op_profile = summarize_trace(trace, f"traces/{job.trace_name}")
        run.budgets = _budgets(device, run) if run.ok else []
        name = variants[job.variant].name + suffix
        if run.ok and run.reason:
            notes.append(f"{name} @ {job.threads} thread(s): {run.reason}")
        if progress and not run.ok:
            progress(f"  failed: {run.reason}")
        runs.setdefault((job.variant, job.threads), []).append(run)
    out = []
    for i, v in enumerate(variants):
        result = VariantResult(v.name + suffix, str(v.graph), v.kind, v.size_bytes, v.files, v.quantization, v.quality, remote=remote,
                               backend=v.backend)
        for n in dict.fromkeys(j.threads for j in jobs if j.variant == i):
            repeats = runs[(i, n)]
            result.runs.append(_strict(repeats) if strict else repeats[0])
        out.append(result)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)

