"""Run one measurement in a fresh child process and turn what happened into a RunResult.

The supervising and memory sampling live in worker.py (``worker.measure``), so that a remote device runs exactly the
same code; here, the local call and ``run_result``, which reads the supervisor's facts (peaks per phase, exit code,
kill reason) and the child's own figures into a RunResult, for local and remote runs alike.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeprune.profiling import worker
from edgeprune.profiling.results import (
    DecoderResult, EncoderResult, Latency, Memory, RunResult,
)

# The worker as a plain file, as on a remote device: the child imports no edgeprune module, so its baseline RSS is
# the interpreter's and the runtime's only, here and there alike.
LOCAL_COMMAND = [sys.executable, worker.__file__]


@dataclass(frozen=True)
class Job:
    """One measurement to take, here or on a device: the worker's spec, and how to label and file its result."""

    spec: dict
    label: str  # progress line
    trace_name: str  # the ORT trace's file name under the report's traces/
    variant: int  # index into profile()'s variants
    threads: int


def measure(spec: dict, limit_mb: float | None, timeout_s: float, trace_dir: Path | None, trace_name: str) -> tuple[RunResult, Path | None]:
    """Run the worker on ``spec`` in a fresh interpreter here; return its RunResult and the raw ORT trace (if profiled)."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        outcome = worker.measure(dict(spec, op_profile=trace_dir is not None), LOCAL_COMMAND, tmp, limit_mb, timeout_s)
        result = run_result(outcome, spec, limit_mb, timeout_s)
        trace = None
        raw_trace = (outcome["result"] or {}).get("trace")
        if trace_dir is not None and raw_trace and Path(raw_trace).is_file():
            trace_dir.mkdir(parents=True, exist_ok=True)
            trace = trace_dir / trace_name
            Path(raw_trace).replace(trace)
        return result, trace


def run_result(outcome: dict, spec: dict, limit_mb: float | None, timeout_s: float) -> RunResult:
    """The RunResult of one supervised measurement (``worker.measure``'s facts): ok with every figure, or failed with why."""
    base = RunResult(threads=spec["threads"], status="failed", pid=outcome["pid"], cores=spec["cores"] or [], wall_s=outcome["wall_s"])
    phase = outcome["phase"]
    if outcome["killed_reason"]:
        base.reason = outcome["killed_reason"]
    elif outcome["timed_out"]:
        base.reason = f"did not finish within {timeout_s:.0f}s (phase {phase}); killed"
    elif outcome["stopped"]:
        base.reason = f"stopped during {phase}"
    elif outcome["returncode"] != 0:
        code = outcome["returncode"]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        last = outcome["stderr_tail"]
        base.reason = f"the measuring process {how} during {phase}" + (f": {last}" if last else "")
    raw = outcome["result"]
    if raw is None and not base.reason:
        base.reason = f"the measuring process exited during {phase} without writing its result"
    profiler_only = outcome["killed_reason"] and phase == "op_profile" and raw is not None
    if base.reason and not profiler_only:
        return base
    result = _from_worker(raw, spec, outcome)
    if profiler_only:  # the timed runs finished within the limit; only ORT's profiler session went over
        result.reason = f"op profile not taken: {outcome['killed_reason']}"
    if limit_mb is not None and result.memory.hwm_run_mb > limit_mb:
        # A spike between two samples: the child's own high-water mark still shows it.
        result.status = "failed"
        result.reason = (f"peak RSS {result.memory.hwm_run_mb:.0f} MiB (the child's VmHWM) is over the memory "
                         f"limit of {limit_mb:.0f} MiB")
    return result


def _from_worker(raw: dict, spec: dict, outcome: dict) -> RunResult:
    peaks = outcome["peaks"]
    memory = Memory(
        peak_load_mb=max(peaks.get("start", 0.0), peaks.get("load", 0.0)),
        peak_run_mb=peaks.get("run", 0.0), baseline_mb=raw["baseline_mb"],
        hwm_load_mb=raw["hwm_load_mb"], hwm_run_mb=raw["hwm_run_mb"],
        ru_maxrss_load_mb=raw["ru_maxrss_load_mb"], ru_maxrss_run_mb=raw["ru_maxrss_run_mb"],
        samples=outcome["samples"], interval_ms=outcome["interval_ms"],
    )
    return RunResult(
        threads=spec["threads"], status="ok", pid=raw["pid"], cores=raw["cores"], ort=raw["ort"],
        session_ms=raw["session_ms"], first_inference_ms=raw["first_inference_ms"], warmup=raw["warmup"], wall_s=raw["wall_s"],
        decoder=[DecoderResult(d["prompt_tokens"], d["new_tokens"], Latency.from_values(d["prefill"]), Latency.from_values(d["decode"]),
                               tokens=d.get("tokens") or []) for d in raw["decoder"]],
        encoder=[EncoderResult(e["batch_size"], e["seq_len"], Latency.from_values(e["latency"])) for e in raw["encoder"]],
        memory=memory,
    )
