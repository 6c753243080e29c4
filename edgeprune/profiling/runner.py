"""Run one measurement in a fresh child process and watch its memory from outside.

The parent samples the child's RSS with psutil (split into load / run phases by the child's "@@phase" lines),
kills it when it crosses the memory limit, and turns any crash, kill or timeout into a failed RunResult with the reason.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeprune.profiling.results import (
    DecoderResult, EncoderResult, Latency, Memory, RunResult,
)

SAMPLE_INTERVAL_S = 0.005


class MemoryWatcher:
    """Samples a process's RSS from outside (a context manager); peaks per phase, optional hard limit."""

    def __init__(self, pid: int, limit_mb: float | None = None, interval_s: float = SAMPLE_INTERVAL_S):
        import psutil

        self.proc = psutil.Process(pid)
        self.limit_mb = limit_mb
        self.interval_s = interval_s
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self.killed_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                return
            self.samples += 1
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            if self.limit_mb is not None and rss > self.limit_mb and self.killed_reason is None:
                self.killed_reason = (f"RSS reached {rss:.0f} MiB during {self.phase}, over the memory limit of "
                                      f"{self.limit_mb:.0f} MiB; killed by the memory watcher")
                self.proc.kill()
                return
            time.sleep(self.interval_s)


def measure(spec: dict, limit_mb: float | None, timeout_s: float, trace_dir: Path | None, trace_name: str) -> tuple[RunResult, Path | None]:
    """Run the worker on ``spec`` in a fresh interpreter; return its RunResult and the raw ORT trace (if profiled)."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        tmp = Path(tmp)
        spec = dict(spec, result=str(tmp / "result.json"), trace_prefix=str(tmp / "ort") if trace_dir else None)
        (tmp / "spec.json").write_text(json.dumps(spec))
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "edgeprune.profiling.worker", str(tmp / "spec.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        stderr: list[str] = []
        err_thread = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        err_thread.start()
        timed_out = False
        with MemoryWatcher(proc.pid, limit_mb) as watcher:
            timer = threading.Timer(timeout_s, lambda: (proc.kill(), setattr(watcher, "timed_out", True)))
            timer.start()
            for line in proc.stdout:
                if line.startswith("@@phase "):
                    watcher.phase = line.split()[1]
            proc.wait()
            timer.cancel()
            timed_out = getattr(watcher, "timed_out", False)
        err_thread.join(timeout=5)
        base = RunResult(threads=spec["threads"], status="failed", pid=proc.pid, cores=spec["cores"] or [],
                         wall_s=time.perf_counter() - start)
        if watcher.killed_reason:
            base.reason = watcher.killed_reason
        elif timed_out:
            base.reason = f"did not finish within {timeout_s:.0f}s (phase {watcher.phase}); killed"
        elif proc.returncode != 0:
            last = next((l.strip() for l in reversed(stderr) if l.strip()), "")
            how = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
            base.reason = f"the measuring process {how} during {watcher.phase}" + (f": {last}" if last else "")
        saved = tmp / "result.json"
        profiler_only = watcher.killed_reason and watcher.phase == "op_profile" and saved.is_file()
        if base.reason and not profiler_only:
            return base, None
        raw = json.loads(saved.read_text())
        result = _from_worker(raw, spec, watcher)
        if profiler_only:  # the timed runs finished within the limit; only ORT's profiler session went over
            result.reason = f"op profile not taken: {watcher.killed_reason}"
        if limit_mb is not None and result.memory.hwm_run_mb > limit_mb:
            # A spike between two samples: the child's own high-water mark still shows it.
            result.status = "failed"
            result.reason = (f"peak RSS {result.memory.hwm_run_mb:.0f} MiB (the child's VmHWM) is over the memory "
                             f"limit of {limit_mb:.0f} MiB")
        trace = None
        if trace_dir is not None and raw.get("trace"):
            trace_dir.mkdir(parents=True, exist_ok=True)
            trace = trace_dir / trace_name
            Path(raw["trace"]).replace(trace)
        return result, trace


def _from_worker(raw: dict, spec: dict, watcher: MemoryWatcher) -> RunResult:
    memory = Memory(
        peak_load_mb=max(watcher.peaks.get("start", 0.0), watcher.peaks.get("load", 0.0)),
        peak_run_mb=watcher.peaks.get("run", 0.0), baseline_mb=raw["baseline_mb"],
        hwm_load_mb=raw["hwm_load_mb"], hwm_run_mb=raw["hwm_run_mb"],
        ru_maxrss_load_mb=raw["ru_maxrss_load_mb"], ru_maxrss_run_mb=raw["ru_maxrss_run_mb"],
        samples=watcher.samples, interval_ms=watcher.interval_s * 1000,
    )
    return RunResult(
        threads=spec["threads"], status="ok", pid=raw["pid"], cores=raw["cores"], ort=raw["ort"],
        session_ms=raw["session_ms"], first_inference_ms=raw["first_inference_ms"], warmup=raw["warmup"], wall_s=raw["wall_s"],
        decoder=[DecoderResult(d["prompt_tokens"], d["new_tokens"], Latency.from_values(d["prefill"]), Latency.from_values(d["decode"]))
                 for d in raw["decoder"]],
        encoder=[EncoderResult(e["batch_size"], e["seq_len"], Latency.from_values(e["latency"])) for e in raw["encoder"]],
        memory=memory,
    )
