"""The measuring process, and the supervisor that runs it: one variant at one thread setting in a fresh interpreter,
its memory sampled from outside, so runs cannot pollute each other.

    python edgeprune/profiling/worker.py SPEC.json     # one measurement (the child)

The child pins itself to the given cores, creates the ORT session, times the workload and writes RESULT.json; it prints
"@@phase NAME" lines so the supervisor (``measure``) can split peak RSS into load and run. A decoder is timed by one of
two backends: "ort", a Python loop over an InferenceSession that feeds the KV cache back, or "genai", ORT GenAI's
generator (og.Model on the folder's genai_config.json, the cache in one shared buffer), on the same prompts. This file
is also the runner that remote profiling copies to a device over ssh, so it needs only the standard library, numpy and
onnxruntime (onnxruntime_genai for the genai backend; no edgeprune, torch or psutil) and Python 3.9:

    python3 edgeprune_worker.py probe REQUEST_JSON     # versions, host, free space (run from stdin by the client)
    python3 edgeprune_worker.py batch RUN_DIR          # every job in RUN_DIR/jobs.json, results streamed to stdout
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

# The measuring child imports only the above (and numpy + onnxruntime): its baseline RSS is part of what is measured.
# The supervisor, probe and batch modes import the rest of what they need inside.

SAMPLE_INTERVAL_S = 0.005
MIN_PYTHON = (3, 9)


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


def _process_threads() -> int | None:
    """OS threads in this process (Linux): the intra-op pool shows here, so the thread count really set can be checked."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _prompt_ids(np, vocab: int, length: int, sequence: int):
    """The prompt of one timed sequence: random token ids drawn from (length, sequence) alone, so both backends, and
    every run, see the same prompts whatever else was drawn before. Real tokens do not change the timing."""
    return np.random.default_rng([length, sequence]).integers(0, vocab, size=(1, length), dtype=np.int64)


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

    def __init__(self, np, sess, vocab: int, graph: str | None = None):
        self.np = np
        self.graph = graph
        self.inputs = sess.get_inputs()
        self.names = {i.name for i in self.inputs}
        self.past = [i for i in self.inputs if i.name.startswith("past_key_values.")]
        self.outputs = [o.name for o in sess.get_outputs()]
        self.rng = np.random.default_rng(0)
        self.vocab = vocab

    @property
    def is_decoder(self) -> bool:
        return bool(self.past) and "input_ids" in self.names

    def kv_dims(self, i) -> tuple[int, int]:
        """KV heads and head size of a cache input; from the folder's genai_config.json when the graph names them
        symbolically (the GenAI model builder's ``kv_cache_dim``)."""
        heads, dim = i.shape[1], i.shape[3]
        if not (isinstance(heads, int) and isinstance(dim, int)) and self.graph:
            config = os.path.join(os.path.dirname(self.graph), "genai_config.json")
            if os.path.isfile(config):
                with open(config) as f:
                    decoder = json.load(f)["model"]["decoder"]
                heads = heads if isinstance(heads, int) else decoder["num_key_value_heads"]
                dim = dim if isinstance(dim, int) else decoder["head_size"]
        return heads, dim

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
                heads, dim = self.kv_dims(i)
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


def _timed(fn, warmup: int, runs: int, min_seconds: float, setup=None) -> list[float]:
    """ms per call of ``fn``; with ``setup``, each call is ``fn(setup())`` and only ``fn`` is timed."""
    def once() -> float:
        arg = (setup(),) if setup else ()
        t = time.perf_counter()
        fn(*arg)
        return (time.perf_counter() - t) * 1000

    for _ in range(warmup):
        once()
    samples, start = [], time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        samples.append(once())
        if len(samples) >= 100 * runs:  # min_seconds on a very fast graph: enough is enough
            break
    return samples


def _decode_samples(sequence, new_tokens: int, warmup: int, runs: int, min_seconds: float):
    """ms per generated token, and the tokens of the first timed sequence. ``sequence(index, record, steps)`` runs one
    sequence from the prompt ``index`` (prefill, untimed), then ``steps`` decode steps whose ms it appends to ``record``,
    and returns its greedy tokens (the prefill's first)."""
    if warmup:
        sequence(0, None, min(warmup, new_tokens))
    samples, tokens, start = [], None, time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        got = sequence(len(samples) // new_tokens, samples, new_tokens)
        tokens = got if tokens is None else tokens
        if len(samples) >= 100 * max(runs, new_tokens):
            break
    return samples, tokens


def _ort_sequence(sess, feeds: _Feeds, np, vocab: int, prompt: int):
    """One sequence through the ort loop: the graph's outputs fed back as the next step's KV cache inputs."""
    def sequence(index: int, record: list | None, steps: int) -> list[int]:
        nxt, past = feeds.step(sess, feeds.decoder(_prompt_ids(np, vocab, prompt, index), 0, None))
        tokens = [int(nxt[0, 0])]
        for t in range(steps):
            f = feeds.decoder(nxt, prompt + t, past)
            start = time.perf_counter()
            nxt, past = feeds.step(sess, f)
            if record is not None:
                record.append((time.perf_counter() - start) * 1000)
            tokens.append(int(nxt[0, 0]))
        return tokens

    return sequence


def run(spec: dict) -> dict:
    start_wall = time.perf_counter()
    cores = spec["cores"]
    if cores:
        os.sched_setaffinity(0, cores)
    _phase("load")
    if spec.get("backend", "ort") == "genai":
        return _run_genai(spec, start_wall)
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
        "cpu_mem_arena": spec["cpu_mem_arena"], "mem_pattern": spec["mem_pattern"], "process_threads": _process_threads(),
    }
    _phase("run")
    feeds = _Feeds(np, sess, spec["vocab"], spec["graph"])
    warmup, runs, min_s = spec["warmup"], spec["runs"], spec["min_seconds"]
    result["decoder"], result["encoder"] = [], []
    if feeds.is_decoder:
        ids = _prompt_ids(np, spec["vocab"], spec["prompt_lengths"][0], 0)
        t = time.perf_counter()
        feeds.step(sess, feeds.decoder(ids, 0, None))
        result["first_inference_ms"] = (time.perf_counter() - t) * 1000
        for prompt in spec["prompt_lengths"]:
            ids = _prompt_ids(np, spec["vocab"], prompt, 0)
            prefill = _timed(lambda: feeds.step(sess, feeds.decoder(ids, 0, None)), warmup, runs, min_s)
            sequence = _ort_sequence(sess, feeds, np, spec["vocab"], prompt)
            decode, tokens = _decode_samples(sequence, spec["decode_tokens"], warmup, runs, min_s)
            result["decoder"].append({"prompt_tokens": prompt, "new_tokens": spec["decode_tokens"], "prefill": prefill,
                                      "decode": decode, "tokens": tokens})
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
            _ort_sequence(sess, feeds, np, spec["vocab"], spec["prompt_lengths"][0])(0, None, spec["decode_tokens"])
        else:
            f = feeds.encoder(spec["batch_sizes"][0], spec["seq_lengths"][0])
            for _ in range(max(3, min(runs, 10))):
                sess.run(None, f)
        result["trace"] = sess.end_profiling()
    result["wall_s"] = time.perf_counter() - start_wall
    _phase("done")
    return result



def run_interleaved(spec: dict) -> dict:
    """Several graphs in one process, timed in turn: ``spec["sequences"]`` times, each graph runs one decode sequence
    (``decode_tokens`` steps after a ``prompt``-token prefill) or, for encoders, ``runs`` calls at ``batch`` × ``seq``;
    the order is reversed every other time. Per graph, the median ms/token (ms/call) of each of its turns. Graphs
    measured side by side like this see the same machine: what a noisy host does to one turn, it does to its
    neighbours, so their ratios hold where separate processes' absolute figures wander."""
    import statistics

    if spec["cores"]:
        os.sched_setaffinity(0, spec["cores"])
    _phase("load")
    import numpy as np
    import onnxruntime as ort

    sessions = [ort.InferenceSession(g, _options(ort, spec), providers=spec["providers"]) for g in spec["graphs"]]
    feeds = [_Feeds(np, sess, spec["vocab"], g) for sess, g in zip(sessions, spec["graphs"])]
    _phase("run")
    if all(f.is_decoder for f in feeds):
        turns = [_ort_sequence(sess, f, np, spec["vocab"], spec["prompt"]) for sess, f in zip(sessions, feeds)]

        def turn(i: int, index: int) -> float:
            record: list = []
            turns[i](index, record, spec["decode_tokens"])
            return statistics.median(record)
    elif not any(f.is_decoder for f in feeds):
        inputs = [f.encoder(spec["batch"], spec["seq"]) for f in feeds]

        def turn(i: int, index: int) -> float:
            return statistics.median(_timed(lambda: sessions[i].run(None, inputs[i]), 0, spec["runs"], 0.0))
    else:
        raise ValueError("interleaved graphs must all be decoders or all be encoders")
    for i in range(len(sessions)):  # warm-up: one turn each, untimed
        turn(i, 0)
    ms: list = [[] for _ in sessions]
    for index in range(spec["sequences"]):
        order = range(len(sessions)) if index % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            ms[i].append(turn(i, index + 1))
    _phase("done")
    return {"pid": os.getpid(), "ms": ms, "decoder": feeds[0].is_decoder}

class _Generator:
    """A decoder folder in ORT GenAI: og.Model with the spec's session options laid over its genai_config.json, and
    greedy sequences of a fixed length (min_length = max_length, so an end-of-text token does not stop one early)."""

    def __init__(self, og, np, spec: dict, profile_prefix: str | None = None):
        self.og, self.np, self.vocab = og, np, spec["vocab"]
        folder = os.path.dirname(spec["graph"])
        options = {
            "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1, "log_severity_level": 3,
            "graph_optimization_level": _LEVELS[spec["graph_optimization"]], "enable_cpu_mem_arena": spec["cpu_mem_arena"],
            "enable_mem_pattern": spec["mem_pattern"],
        }
        if profile_prefix:
            options["enable_profiling"] = profile_prefix
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        with open(os.path.join(folder, "genai_config.json")) as f:
            self.share_buffer = bool(json.load(f).get("search", {}).get("past_present_share_buffer"))

    def params(self, prompt: int, steps: int):
        """Search options for ``prompt`` tokens, the first token, then ``steps`` decode steps (as the ort loop takes)."""
        params = self.og.GeneratorParams(self.model)
        length = prompt + 1 + steps
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        return params

    def first_token(self, generator, ids) -> int:
        """Time to first token: append_tokens runs the prefill, the first generate_next_token picks from its logits."""
        generator.append_tokens(ids)
        generator.generate_next_token()
        return int(generator.get_next_tokens()[0])

    def sequence(self, prompt: int):
        def sequence(index: int, record: list | None, steps: int) -> list[int]:
            generator = self.og.Generator(self.model, self.params(prompt, steps))
            tokens = [self.first_token(generator, _prompt_ids(self.np, self.vocab, prompt, index).astype(self.np.int32))]
            for _ in range(steps):
                start = time.perf_counter()
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if record is not None:
                    record.append((time.perf_counter() - start) * 1000)
                tokens.append(token)
            return tokens

        return sequence


def _run_genai(spec: dict, start_wall: float) -> dict:
    """``run`` with ORT GenAI's generator instead of the ort loop: the same prompts, phases and figures."""
    from importlib.metadata import version

    import numpy as np
    import onnxruntime_genai as og

    result = {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)), "baseline_mb": _rss_mb()}
    t = time.perf_counter()
    gen = _Generator(og, np, spec)
    result["session_ms"] = (time.perf_counter() - t) * 1000
    result["ru_maxrss_load_mb"], result["hwm_load_mb"] = _maxrss_mb(), _hwm_mb()
    result["ort"] = {
        "backend": "genai", "version": version("onnxruntime"), "onnxruntime_genai": og.__version__,
        "providers": ["CPUExecutionProvider"], "graph_optimization": spec["graph_optimization"],
        "intra_op_threads": spec["threads"], "inter_op_threads": 1, "execution_mode": "sequential",
        "cpu_mem_arena": spec["cpu_mem_arena"], "mem_pattern": spec["mem_pattern"],
        "past_present_share_buffer": gen.share_buffer, "process_threads": _process_threads(),
    }
    _phase("run")
    warmup, runs, min_s, steps = spec["warmup"], spec["runs"], spec["min_seconds"], spec["decode_tokens"]
    result["decoder"], result["encoder"] = [], []
    first = spec["prompt_lengths"][0]
    generator = og.Generator(gen.model, gen.params(first, steps))
    t = time.perf_counter()
    gen.first_token(generator, _prompt_ids(np, spec["vocab"], first, 0).astype(np.int32))
    result["first_inference_ms"] = (time.perf_counter() - t) * 1000
    del generator
    for prompt in spec["prompt_lengths"]:
        ids = _prompt_ids(np, spec["vocab"], prompt, 0).astype(np.int32)
        params = gen.params(prompt, steps)
        prefill = _timed(lambda generator: gen.first_token(generator, ids), warmup, runs, min_s,
                         setup=lambda: og.Generator(gen.model, params))
        decode, tokens = _decode_samples(gen.sequence(prompt), steps, warmup, runs, min_s)
        result["decoder"].append({"prompt_tokens": prompt, "new_tokens": steps, "prefill": prefill, "decode": decode,
                                  "tokens": tokens})
    result["warmup"] = warmup
    result["ru_maxrss_run_mb"], result["hwm_run_mb"] = _maxrss_mb(), _hwm_mb()
    del gen, params  # the model goes with the last reference to it

    if spec.get("trace_prefix"):  # as in run(): a separate, profiled model after the timed results are saved
        import glob

        result["wall_s"] = time.perf_counter() - start_wall
        _write(spec["result"], result)
        _phase("op_profile")
        gen = _Generator(og, np, spec, spec["trace_prefix"])
        gen.sequence(first)(0, None, steps)
        del gen  # ORT writes the trace when the session ends
        traces = sorted(glob.glob(spec["trace_prefix"] + "*.json"), key=os.path.getmtime)
        result["trace"] = traces[-1] if traces else None
    result["wall_s"] = time.perf_counter() - start_wall
    _phase("done")
    return result


def _write(path: str, result: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: the kernel kills this child when its supervisor dies, so a killed (remote) runner leaves no measurement
    running behind it."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:  # the supervisor was gone before prctl
        os._exit(1)


# --- the supervisor: one child per measurement, memory sampled from outside -----------------------------------------


def _rss_of(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def measure(spec: dict, command: list, workdir: str, limit_mb: float | None, timeout_s: float,
            stop: threading.Event | None = None, interval_s: float = SAMPLE_INTERVAL_S) -> dict:
    """Run ``command + [SPEC.json]`` (the measuring child) in a fresh process; sample its RSS every ``interval_s`` per
    phase, kill it above ``limit_mb``, after ``timeout_s`` or when ``stop`` is set. Returns plain facts (edgeprune's
    runner turns them into a RunResult): peaks, samples, exit code, the last stderr line, the child's result if any."""
    import subprocess
    import threading

    spec = dict(spec, result=os.path.join(workdir, "result.json"), parent_pid=os.getpid(),
                trace_prefix=os.path.join(workdir, "ort") if spec.get("op_profile") else None)
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    start = time.perf_counter()
    proc = subprocess.Popen(list(command) + [spec_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1)
    state = {"phase": "start"}
    stderr: list = []
    peaks: dict = {}
    counts = {"samples": 0}
    lock = threading.Lock()

    def sample() -> float | None:
        rss = _rss_of(proc.pid)
        if rss is not None:
            with lock:
                counts["samples"] += 1
                peaks[state["phase"]] = max(peaks.get(state["phase"], 0.0), rss)
        return rss

    def read_phases():
        for line in proc.stdout:
            if line.startswith("@@phase "):
                state["phase"] = line.split()[1]
                sample()  # at least one sample per phase, however short (a tiny graph's timed runs take milliseconds)

    readers = [threading.Thread(target=read_phases, daemon=True),
               threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)]
    for t in readers:
        t.start()
    killed_reason, timed_out, stopped = None, False, False
    try:
        while proc.poll() is None:
            rss = sample()
            if rss is not None and limit_mb is not None and rss > limit_mb:
                killed_reason = (f"RSS reached {rss:.0f} MiB during {state['phase']}, over the memory limit of "
                                 f"{limit_mb:.0f} MiB; killed by the memory watcher")
                break
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                break
            if stop is not None and stop.is_set():
                stopped = True
                break
            time.sleep(interval_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for t in readers:
            t.join(timeout=5)
    result = None
    if os.path.isfile(spec["result"]):
        with open(spec["result"]) as f:
            result = json.load(f)
    return {
        "pid": proc.pid, "returncode": proc.returncode, "phase": state["phase"], "peaks": peaks, "samples": counts["samples"],
        "interval_ms": interval_s * 1000, "killed_reason": killed_reason, "timed_out": timed_out, "stopped": stopped,
        "stderr_tail": next((line.strip() for line in reversed(stderr) if line.strip()), ""),
        "wall_s": time.perf_counter() - start, "result": result,
    }


# --- the machine it runs on -------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo; arm boards name the board), else the architecture."""
    import platform

    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    for key in ("model name", "Model", "Hardware"):
        if found.get(key):
            return found[key]
    return platform.processor() or platform.machine()


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20)


def host_info() -> dict:
    """Where measurements run: CPU, cores, RAM, OS and runtime versions, read on the machine itself."""
    import platform

    import numpy
    import onnxruntime as ort

    return {
        "cpu": cpu_name(), "machine": platform.machine(), "system": platform.platform(), "logical_cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)), "memory_mb": _memory_mb(), "python": platform.python_version(),
        "onnxruntime": ort.__version__, "numpy": numpy.__version__, "providers": ort.get_available_providers(),
        "load_average_start": list(os.getloadavg()),
    }


# --- remote mode: the client sends this file over ssh -----------------------------------------------------------------


def _free_bytes(path: str) -> int:
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def probe(request: dict) -> dict:
    """What the client must know before sending anything: Python, numpy and onnxruntime versions (None when missing),
    the host, which models the cache already holds and the free space. Only when all is well (runtime present, room for
    the models not cached) does it create the run folder (RUN_DIR) that the client copies into."""
    import platform
    import tempfile

    out = {"python": platform.python_version(), "executable": sys.executable, "numpy": None, "onnxruntime": None}
    for name in ("numpy", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    if out["numpy"] is None or out["onnxruntime"] is None:
        return out
    out["host"] = host_info()
    root = os.path.abspath(os.path.expanduser(request["remote_dir"]))
    models = os.path.join(root, "models")
    out["remote_dir"] = root
    out["cached"] = [key for key in request["models"] if os.path.isdir(os.path.join(models, key))]
    out["needed_bytes"] = sum(size for key, size in request["models"].items() if key not in out["cached"])
    out["free_bytes"] = _free_bytes(root)
    if out["free_bytes"] < out["needed_bytes"] + request.get("margin_bytes", 0):
        return out
    os.makedirs(models, exist_ok=True)
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    out["run_dir"] = tempfile.mkdtemp(prefix="run-", dir=os.path.join(root, "runs"))
    return out


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def batch(run_dir: str) -> int:
    """Run every job of RUN_DIR/jobs.json, each in a fresh supervised child, and stream one "@@result JSON" line per
    finished measurement (ORT trace included, compressed), so a run killed midway loses nothing already measured.
    The client holds ssh's stdin open: EOF there means it is gone, and the runner stops. RUN_DIR is removed on every
    way out (done, error, SIGTERM/SIGHUP/SIGINT, lost client); only SIGKILL skips it, and then the client removes it."""
    import base64
    import shutil
    import signal
    import threading
    import zlib

    stop = threading.Event()

    def watch_stdin():  # os.read, not sys.stdin: a daemon thread inside a buffered read blocks interpreter shutdown
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop.set()

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        with open(os.path.join(run_dir, "jobs.json")) as f:
            plan = json.load(f)
        for key in plan["models"]:  # uploads become cache entries by rename (atomic); cached ones are marked as used
            cached = os.path.join(plan["models_dir"], key)
            upload = os.path.join(run_dir, "upload", key)
            if os.path.isdir(upload) and not os.path.isdir(cached):
                os.rename(upload, cached)
            os.utime(cached)
        command = [sys.executable, os.path.abspath(__file__)]
        for index, job in enumerate(plan["jobs"]):
            if stop.is_set():
                return 1
            _say(f"@@start {index}")
            work = os.path.join(run_dir, f"job-{index}")
            os.mkdir(work)
            outcome = measure(job["spec"], command, work, job["limit_mb"], job["timeout_s"], stop)
            if outcome["stopped"]:
                return 1
            trace = (outcome["result"] or {}).pop("trace", None)
            if trace and os.path.isfile(trace):
                with open(trace, "rb") as f:
                    outcome["trace_z"] = base64.b64encode(zlib.compress(f.read(), 6)).decode()
            _say("@@result " + json.dumps({"index": index, "outcome": outcome}))
            shutil.rmtree(work, ignore_errors=True)
        _say("@@end")
        return 0
    except BrokenPipeError:  # the client is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list) -> int:
    if argv and argv[0] == "probe":
        print("@@probe " + json.dumps(probe(json.loads(argv[1]))), flush=True)
        return 0
    if argv and argv[0] == "batch":
        return batch(argv[1])
    with open(argv[0]) as f:
        spec = json.load(f)
    _die_with_parent(spec.get("parent_pid"))
    _write(spec["result"], run_interleaved(spec) if spec.get("graphs") else run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
