"""Profiling results as dataclasses with a schema version: what was measured, never how it is shown.

``Latency.from_values([...ms])`` summarises samples; ``Report.to_dict()`` / ``Report.from_dict()`` round-trip report.json,
and edgeprune.report renders a Report to Markdown and HTML.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import typing
from dataclasses import dataclass, field

from edgeprune.metadata import PROFILE_SCHEMA_VERSION as SCHEMA_VERSION


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Latency:
    """Latency samples in milliseconds and their summary; cv = sd / mean (the run's stability)."""

    count: int
    mean: float
    sd: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    cv: float
    samples: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_values(cls, values_ms: typing.Sequence[float]) -> Latency:
        if not values_ms:
            raise ValueError("no latency samples")
        values = sorted(float(v) for v in values_ms)
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(
            count=len(values), mean=mean, sd=sd, min=values[0], max=values[-1],
            p50=_percentile(values, 50), p90=_percentile(values, 90), p95=_percentile(values, 95), p99=_percentile(values, 99),
            cv=sd / mean if mean > 0 else 0.0, samples=[round(float(v), 4) for v in values_ms],
        )


@dataclass
class DecoderResult:
    """One prompt length through the merged decoder graph: prefill (time to first token), then decode with the KV cache."""

    prompt_tokens: int
    new_tokens: int
    prefill: Latency  # ms per prefill of prompt_tokens = time to first token
    decode: Latency  # ms per generated token (one step with the cache)
    prefill_tokens_per_s: float = 0.0
    decode_ms_per_token: float = 0.0
    decode_tokens_per_s: float = 0.0
    # greedy token ids of the first timed sequence (the prefill's token, then one per decode step); its prompt is the
    # same random ids in both backends, so their tokens can be compared
    tokens: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.prefill_tokens_per_s and self.prefill.mean > 0:
            self.prefill_tokens_per_s = self.prompt_tokens / (self.prefill.mean / 1000)
        if not self.decode_ms_per_token:
            self.decode_ms_per_token = self.decode.mean
        if not self.decode_tokens_per_s and self.decode.mean > 0:
            self.decode_tokens_per_s = 1000 / self.decode.mean


@dataclass
class EncoderResult:
    """One input shape through an encoder (or any graph without a KV cache)."""

    batch_size: int
    seq_len: int
    latency: Latency
    sequences_per_s: float = 0.0

    def __post_init__(self):
        if not self.sequences_per_s and self.latency.mean > 0:
            self.sequences_per_s = self.batch_size / (self.latency.mean / 1000)


@dataclass
class Memory:
    """Resident memory in MiB. Peaks are sampled from outside the measured process (psutil, the parent); the child's own
    high-water mark (VmHWM, which is ru_maxrss of the exec'd image) is the cross-check. ru_maxrss itself is kept too, but it
    survives fork + exec, so it shows the parent's size when the parent is larger (e.g. under pytest with torch loaded)."""

    peak_load_mb: float  # process start → session created (includes Python and ORT imports)
    peak_run_mb: float  # first inference → last timed run
    baseline_mb: float = 0.0  # the child's RSS after importing ORT, before the session (the interpreter's share)
    hwm_load_mb: float = 0.0  # child's VmHWM right after the session was created
    hwm_run_mb: float = 0.0  # child's VmHWM after the timed runs
    ru_maxrss_load_mb: float = 0.0  # child's getrusage ru_maxrss at the same two points
    ru_maxrss_run_mb: float = 0.0
    samples: int = 0
    interval_ms: float = 0.0

    _derived = ("peak_mb", "agreement")

    @property
    def peak_mb(self) -> float:
        return max(self.peak_load_mb, self.peak_run_mb)

    @property
    def agreement(self) -> float | None:
        """Sampled peak / the child's VmHWM (1.0 = the sampler saw the true peak; below 1 it missed a short spike)."""
        return self.peak_mb / self.hwm_run_mb if self.hwm_run_mb else None


@dataclass
class OpStat:
    op_type: str
    count: int  # kernel executions in the profiled runs
    nodes: int  # distinct graph nodes of this type that ran
    total_ms: float
    percent: float  # of the profiled runs' wall time (model_run events)


@dataclass
class NodeStat:
    name: str
    op_type: str
    count: int
    total_ms: float
    percent: float


@dataclass
class OpProfile:
    """ORT's own profiler (enable_profiling) over a separate, untimed session, aggregated by op type."""

    ops: list[OpStat]
    top_nodes: list[NodeStat]
    run_ms: float  # sum of model_run events
    kernel_ms: float  # sum of node kernel times (the rest is framework overhead between kernels)
    runs: int  # model_run events in the trace
    trace_file: str  # raw Chrome-trace JSON (opens in https://ui.perfetto.dev), relative to the report folder


@dataclass
class Budget:
    name: str  # memory_budget_mb, latency_p90_ms_budget, decode_ms_per_token_budget
    measured: float
    budget: float
    what: str  # which figure was judged, in words

    _derived = ("passed",)

    @property
    def passed(self) -> bool:
        return self.measured <= self.budget


@dataclass
class RunResult:
    """One variant at one thread count, measured in its own fresh process."""

    threads: int
    status: str  # "ok" or "failed"
    reason: str = ""  # why it failed (memory limit, crash, timeout)
    pid: int = 0
    cores: list[int] = field(default_factory=list)  # CPU affinity the process actually had
    ort: dict = field(default_factory=dict)  # session settings used: providers, optimisation level, arena, mem pattern, threads
    session_ms: float = 0.0  # InferenceSession creation (graph load + optimisation)
    first_inference_ms: float = 0.0  # the very first run (before warm-up)
    warmup: int = 0
    wall_s: float = 0.0  # the child process's whole life
    decoder: list[DecoderResult] = field(default_factory=list)
    encoder: list[EncoderResult] = field(default_factory=list)
    memory: Memory | None = None
    op_profile: OpProfile | None = None
    budgets: list[Budget] = field(default_factory=list)
    repeats: list[dict] = field(default_factory=list)  # --strict: headline figures of each repeat
    unstable: list[str] = field(default_factory=list)  # --strict: figures whose repeat medians differ > 5%

    _derived = ("headline",)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def headline(self) -> dict[str, float]:
        """The figures compared across variants and repeats (lower is better for all of them)."""
        out: dict[str, float] = {}
        if self.decoder:
            d = self.decoder[0]
            out |= {f"ttft_p50_ms@{d.prompt_tokens}": d.prefill.p50, f"decode_p50_ms@{d.prompt_tokens}": d.decode.p50}
        if self.encoder:
            e = self.encoder[0]
            out[f"latency_p50_ms@{e.batch_size}x{e.seq_len}"] = e.latency.p50
        return out


@dataclass
class VariantResult:
    name: str
    graph: str  # the .onnx file measured
    kind: str  # decoder (KV cache), encoder, or graph (other inputs)
    size_bytes: int  # graph + external data on disk
    files: dict[str, int] = field(default_factory=dict)
    quantization: str = "none"  # none | int8 | int4, read from the graph's operators
    quality: dict = field(default_factory=dict)  # from the folder's edgeprune.json, when it has any
    runs: list[RunResult] = field(default_factory=list)
    # Measured on a device over ssh: its address ("target") and CPU, cores, RAM, OS, Python, onnxruntime as read there.
    # Empty: measured on this host (Report.host).
    remote: dict = field(default_factory=dict)
    backend: str = "ort"  # decoders: "ort" (a Python loop over an InferenceSession) or "genai" (ORT GenAI's generator)


def with_backend(name: str, backend: str) -> str:
    """A variant's name in a report that measures it with both backends, side by side: "NAME (ort)", "NAME (genai)"."""
    return f"{name} ({backend})"


@dataclass
class Report:
    device: dict  # the DeviceProfile as given
    host: dict  # where it actually ran: CPU, cores, memory, ORT version, load average
    variants: list[VariantResult]
    notes: list[str] = field(default_factory=list)  # clamps, provider fallbacks, anything that differs from the profile
    strict: bool = False
    created: str = ""
    workload: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        if data.get("schema_version") != SCHEMA_VERSION:
            from edgeprune.errors import EdgepruneError

            raise EdgepruneError(f"report schema version {data.get('schema_version')} is not {SCHEMA_VERSION}",
                                 "re-run edgeprune profile with this version")
        return from_dict(cls, data)


def _to_dict(obj):
    if dataclasses.is_dataclass(obj):
        out = {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for name in getattr(obj, "_derived", ()):  # properties worth reading in report.json; ignored when loading
            out[name] = _to_dict(getattr(obj, name))
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return round(obj, 6)
    return obj


def from_dict(cls, data):
    """Rebuild a (nested) result dataclass from its to_dict() form."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _build(hints[f.name], data[f.name])
    return cls(**kwargs)


def _build(tp, value):
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [from_dict(args[0], v) for v in value]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    return value
