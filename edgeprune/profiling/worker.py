"""The measuring process: one variant at one thread setting, in a fresh interpreter, so runs cannot pollute each other.

    python -m edgeprune.profiling.worker SPEC.json

It pins itself to the given cores, creates the ORT session, times the workload and writes RESULT.json.
It prints "@@phase NAME" lines so the parent's memory sampler can split peak RSS into load and run.
Only numpy and onnxruntime are imported here (no torch): the process's memory is the model's plus the runtime's.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _phase(name: str) -> None:
    print(f"@@phase {name}", flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _hwm_mb() -> float:
    """Peak RSS of this address space (VmHWM). Unlike ru_maxrss it starts afresh at exec: ru_maxrss survives fork + exec,
    so a child of a big parent (pytest with torch loaded) would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _maxrss_mb()


_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(bool)": "bool", "tensor(double)": "float64", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def _options(ort, spec: dict, profile_prefix: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[spec["graph_optimization"]])
    options.enable_cpu_mem_arena = spec["cpu_mem_arena"]
    options.enable_mem_pattern = spec["mem_pattern"]
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


class _Feeds:
    """Inputs for the graph: the merged decoder's ids/mask/positions/KV cache, an encoder's ids/mask/types,
    or zeros shaped by the graph's own inputs."""

    def __init__(self, np, sess, vocab: int):
        self.np = np
        self.inputs = sess.get_inputs()
        self.names = {i.name for i in self.inputs}
        self.past = [i for i in self.inputs if i.name.startswith("past_key_values.")]
        self.outputs = [o.name for o in sess.get_outputs()]
        self.rng = np.random.default_rng(0)
        self.vocab = vocab

    @property
    def is_decoder(self) -> bool:
        return bool(self.past) and "input_ids" in self.names

    def _ids(self, batch, seq):
        return self.rng.integers(0, self.vocab, size=(batch, seq), dtype=self.np.int64)

    def decoder(self, ids, past_len: int, past: dict | None):
        np = self.np
        batch, seq = ids.shape
        feeds = {"input_ids": ids, "attention_mask": np.ones((batch, past_len + seq), np.int64)}
        if "position_ids" in self.names:
            feeds["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), ids.shape).copy()
        if past is None:
            past = {}
            for i in self.past:
                heads, dim = i.shape[1], i.shape[3]
                past[i.name] = np.zeros((batch, heads, 0, dim), np.float16 if "float16" in i.type else np.float32)
        feeds.update(past)
        return feeds

    def step(self, sess, feeds):
        """Run one decoder step; return the next token (greedy) and the new cache."""
        out = dict(zip(self.outputs, sess.run(None, feeds)))
        nxt = out["logits"][:, -1].argmax(-1).astype(self.np.int64)[:, None]
        return nxt, {i.name: out[i.name.replace("past_key_values.", "present.")] for i in self.past}

    def encoder(self, batch: int, seq: int) -> dict:
        np = self.np
        feeds = {}
        for i in self.inputs:
            shape = [d if isinstance(d, int) else (batch if k == 0 else seq) for k, d in enumerate(i.shape)]
            dtype = np.dtype(_DTYPES.get(i.type, "float32"))
            if i.name == "input_ids":
                feeds[i.name] = self._ids(*shape[:2]).astype(dtype)
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones(shape, dtype)
            else:
                feeds[i.name] = np.zeros(shape, dtype)
        return feeds


def _timed(fn, warmup: int, runs: int, min_seconds: float) -> list[float]:
    for _ in range(warmup):
        fn()
    samples, start = [], time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
        if len(samples) >= 100 * runs:  # min_seconds on a very fast graph: enough is enough
            break
    return samples


def _decode_samples(sess, feeds: _Feeds, prompt: int, new_tokens: int, warmup: int, runs: int, min_seconds: float):
    """ms per generated token: sequences of new_tokens steps, each from a fresh prefill of `prompt` tokens."""
    def sequence(record: list | None, steps: int):
        ids = feeds._ids(1, prompt)
        nxt, past = feeds.step(sess, feeds.decoder(ids, 0, None))
        for t in range(steps):
            f = feeds.decoder(nxt, prompt + t, past)
            start = time.perf_counter()
            nxt, past = feeds.step(sess, f)
            if record is not None:
                record.append((time.perf_counter() - start) * 1000)

    if warmup:
        sequence(None, min(warmup, new_tokens))
    samples, start = [], time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        sequence(samples, new_tokens)
        if len(samples) >= 100 * max(runs, new_tokens):
            break
    return samples


def run(spec: dict) -> dict:
    start_wall = time.perf_counter()
    cores = spec["cores"]
    if cores:
        os.sched_setaffinity(0, cores)
    _phase("load")
    import numpy as np
    import onnxruntime as ort

    result = {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)), "baseline_mb": _rss_mb()}
    t = time.perf_counter()
    sess = ort.InferenceSession(spec["graph"], _options(ort, spec), providers=spec["providers"])
    result["session_ms"] = (time.perf_counter() - t) * 1000
    result["ru_maxrss_load_mb"], result["hwm_load_mb"] = _maxrss_mb(), _hwm_mb()
    result["ort"] = {
        "version": ort.__version__, "providers": sess.get_providers(), "graph_optimization": spec["graph_optimization"],
        "intra_op_threads": spec["threads"], "inter_op_threads": 1, "execution_mode": "sequential",
        "cpu_mem_arena": spec["cpu_mem_arena"], "mem_pattern": spec["mem_pattern"],
    }
    _phase("run")
    feeds = _Feeds(np, sess, spec["vocab"])
    warmup, runs, min_s = spec["warmup"], spec["runs"], spec["min_seconds"]
    result["decoder"], result["encoder"] = [], []
    if feeds.is_decoder:
        ids = feeds._ids(1, spec["prompt_lengths"][0])
        t = time.perf_counter()
        feeds.step(sess, feeds.decoder(ids, 0, None))
        result["first_inference_ms"] = (time.perf_counter() - t) * 1000
        for prompt in spec["prompt_lengths"]:
            ids = feeds._ids(1, prompt)
            prefill = _timed(lambda: feeds.step(sess, feeds.decoder(ids, 0, None)), warmup, runs, min_s)
            decode = _decode_samples(sess, feeds, prompt, spec["decode_tokens"], warmup, runs, min_s)
            result["decoder"].append({"prompt_tokens": prompt, "new_tokens": spec["decode_tokens"], "prefill": prefill, "decode": decode})
    else:
        first = True
        for batch in spec["batch_sizes"]:
            for seq in spec["seq_lengths"]:
                f = feeds.encoder(batch, seq)
                if first:
                    t = time.perf_counter()
                    sess.run(None, f)
                    result["first_inference_ms"] = (time.perf_counter() - t) * 1000
                    first = False
                samples = _timed(lambda: sess.run(None, f), warmup, runs, min_s)
                result["encoder"].append({"batch_size": batch, "seq_len": seq, "latency": samples})
    result["warmup"] = warmup
    result["ru_maxrss_run_mb"], result["hwm_run_mb"] = _maxrss_mb(), _hwm_mb()
    del sess

    if spec.get("trace_prefix"):
        # A separate session with ORT's profiler: its overhead must not touch the timings above. The timed
        # results are saved first, so a profiler session killed for memory does not lose them.
        result["wall_s"] = time.perf_counter() - start_wall
        _write(spec["result"], result)
        _phase("op_profile")
        sess = ort.InferenceSession(spec["graph"], _options(ort, spec, spec["trace_prefix"]), providers=spec["providers"])
        if feeds.is_decoder:
            prompt = spec["prompt_lengths"][0]
            nxt, past = feeds.step(sess, feeds.decoder(feeds._ids(1, prompt), 0, None))
            for t in range(spec["decode_tokens"]):
                nxt, past = feeds.step(sess, feeds.decoder(nxt, prompt + t, past))
        else:
            f = feeds.encoder(spec["batch_sizes"][0], spec["seq_lengths"][0])
            for _ in range(max(3, min(runs, 10))):
                sess.run(None, f)
        result["trace"] = sess.end_profiling()
    result["wall_s"] = time.perf_counter() - start_wall
    _phase("done")
    return result


def _write(path: str, result: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        spec = json.load(f)
    _write(spec["result"], run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
