"""Tables shared by the Markdown and HTML reports: the side-by-side comparison (ratios against the first variant),
per-run details, memory, op breakdown. Plain lists of strings, so each renderer only decides the markup."""

from __future__ import annotations

from edgeprune.profiling.results import Report, RunResult, VariantResult

MiB = 2**20


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}×)"


def _figures(variant: VariantResult, run: RunResult) -> dict[str, float | None]:
    out: dict[str, float | None] = {"size_mb": variant.size_bytes / MiB, "peak_rss_mb": run.memory.peak_mb if run.memory else None}
    if run.decoder:
        d = run.decoder[0]
        out |= {"ttft_p50_ms": d.prefill.p50, "prefill_tok_s": d.prefill_tokens_per_s, "decode_ms_tok": d.decode_ms_per_token,
                "decode_tok_s": d.decode_tokens_per_s}
    if run.encoder:
        e = run.encoder[0]
        out |= {"latency_p50_ms": e.latency.p50, "latency_p90_ms": e.latency.p90, "seq_s": e.sequences_per_s}
    return out


_COLUMNS = [
    ("size_mb", "size MiB"), ("peak_rss_mb", "peak RSS MiB"), ("ttft_p50_ms", "TTFT p50 ms"), ("prefill_tok_s", "prefill tok/s"),
    ("decode_ms_tok", "decode ms/tok"), ("decode_tok_s", "decode tok/s"), ("latency_p50_ms", "latency p50 ms"),
    ("latency_p90_ms", "latency p90 ms"), ("seq_s", "seq/s"),
]


def comparison(report: Report) -> tuple[list[str], list[list[str]]]:
    """One row per variant × threads; each figure with its ratio to the first variant at the same thread count.
    Quality figures are in :func:`quality_rows`, so neither table is too wide to read. A decoder measured with both
    backends has two rows, NAME (ort) then NAME (genai), so the second's ratio reads as genai against ort."""
    rows, figures = [], []
    for v in report.variants:
        for run in v.runs:
            figures.append((v, run, _figures(v, run) if run.ok else {"size_mb": v.size_bytes / MiB}))
    used = [(k, label) for k, label in _COLUMNS if any(f.get(k) is not None for _, _, f in figures)]
    backends = any(v.backend != "ort" for v in report.variants)  # the column only when ORT GenAI measured something
    headers = ["variant"] + (["backend"] if backends else []) + ["threads", "status"] + [label for _, label in used] + ["budgets"]
    for v, run, f in figures:
        base = next((bf for bv, br, bf in figures if br.threads == run.threads and br.ok), None) if run.ok else None
        row = [v.name] + ([v.backend] if backends else []) + [str(run.threads), "ok" if run.ok else "FAILED"]
        for key, _ in used:
            value = f.get(key)
            row.append(fmt(value) + (_ratio(value, base.get(key)) if base and base is not f and value is not None else ""))
        row.append(budget_summary(run))
        rows.append(row)
    return headers, rows


# Column titles for the quality figures a variant's edgeprune.json gives (profiling._quality), in this order.
QUALITY_TITLES = {
    "method": "pruning method", "sparsity": "sparsity", "overall_sparsity": "overall sparsity",
    "perplexity": "perplexity", "embedding_cosine_mean": "cosine to dense (mean)",
    "embedding_cosine_min": "cosine to dense (min)",
    "greedy_tokens_identical": "greedy tokens same as PyTorch", "max_abs_diff_vs_torch": "max abs diff vs PyTorch",
    "greedy_tokens_same_as_ort": "greedy tokens same as the ort loop",
}


def column_title(key: str) -> str:
    """A column title for a result field: the known ones in words, any other without underscores."""
    return QUALITY_TITLES.get(key, key.replace("_", " "))


def quality_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """One row per variant: quantisation and the quality figures it carries (pruning, evaluation, agreement with PyTorch)."""
    present = {k for v in report.variants for k in v.quality if k != "quality_note"}  # the note goes in the text
    keys = [k for k in QUALITY_TITLES if k in present] + sorted(present - set(QUALITY_TITLES))
    if not keys:
        return [], []
    headers = ["variant", "quantisation"] + [column_title(k) for k in keys]
    return headers, [[v.name, v.quantization] + [_quality_cell(k, v.quality.get(k)) for k in keys] for v in report.variants]


def _quality_cell(key: str, value) -> str:
    return f"{value:.1%}" if key == "overall_sparsity" and isinstance(value, float) else fmt(value)


def divergence_note(report: Report) -> str | None:
    """Why a quantised graph's "greedy tokens same as PyTorch" and "max abs diff" look like failures, and are not."""
    quantised = [v for v in report.variants if v.quantization != "none"
                 and ("greedy_tokens_identical" in v.quality or "max_abs_diff_vs_torch" in v.quality)]
    if not quantised:
        return None
    names = ", ".join(v.name for v in quantised)
    return (f"{names}: a quantised graph is expected to differ from the PyTorch model it came from. Greedy decoding follows "
            "the same tokens for a while and then takes another path (\"greedy tokens same as PyTorch\" counts the identical "
            "prefix), and the outputs (logits; embeddings for encoders) differ by up to the \"max abs diff vs PyTorch\" shown; "
            "neither is a failure. "
            "Perplexity (or cosine to dense, for encoders) is the measure of quality to read.")


def budget_summary(run: RunResult) -> str:
    if not run.ok:
        return "–"
    if not run.budgets:
        return "none set"
    failed = [b for b in run.budgets if not b.passed]
    return "pass" if not failed else "FAIL: " + ", ".join(_BUDGET_NAMES.get(b.name, b.name.replace("_", " ")) for b in failed)


_BUDGET_NAMES = {"memory_budget_mb": "memory", "latency_p90_ms_budget": "p90 latency",
                 "decode_ms_per_token_budget": "decode ms/token"}


def run_details(variant: VariantResult, run: RunResult) -> tuple[list[str], list[list[str]]]:
    """Latency statistics of one run: one row per prompt length (prefill and decode) or input shape."""
    headers = ["measure", "n", "mean", "sd", "cv", "min", "p50", "p90", "p95", "p99", "throughput"]
    rows = []
    for d in run.decoder:
        for what, lat, tput in (("prefill", d.prefill, f"{d.prefill_tokens_per_s:,.0f} tok/s"),
                                ("decode", d.decode, f"{d.decode_tokens_per_s:.1f} tok/s")):
            label = f"{what} @ {d.prompt_tokens} prompt tokens" + (" (ms/token)" if what == "decode" else " (TTFT ms)")
            rows.append([label, str(lat.count)] + [fmt(x) for x in (lat.mean, lat.sd)] + [f"{lat.cv:.1%}"]
                        + [fmt(x) for x in (lat.min, lat.p50, lat.p90, lat.p95, lat.p99)] + [tput])
    for e in run.encoder:
        lat = e.latency
        rows.append([f"batch {e.batch_size} × {e.seq_len} tokens (ms)", str(lat.count)] + [fmt(x) for x in (lat.mean, lat.sd)]
                    + [f"{lat.cv:.1%}"] + [fmt(x) for x in (lat.min, lat.p50, lat.p90, lat.p95, lat.p99)]
                    + [f"{e.sequences_per_s:,.1f} seq/s"])
    return headers, rows


def memory_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "threads", "baseline (ORT imported)", "peak load", "peak run", "child VmHWM", "sampled ÷ VmHWM",
               "child max RSS (getrusage)", "samples", "budget"]
    rows = []
    budget = report.device.get("memory_budget_mb")
    for v in report.variants:
        for run in v.runs:
            m = run.memory
            if m is None:
                continue
            rows.append([v.name, str(run.threads), fmt(m.baseline_mb), fmt(m.peak_load_mb), fmt(m.peak_run_mb), fmt(m.hwm_run_mb),
                         f"{m.agreement:.2f}" if m.agreement else "–", fmt(m.ru_maxrss_run_mb), str(m.samples),
                         "–" if budget is None else ("pass" if m.peak_mb <= budget else "FAIL") + f" ({fmt(budget)})"])
    return headers, rows


def op_rows(run: RunResult, top: int = 12) -> tuple[list[str], list[list[str]]]:
    """The ``top`` op types by time, then the rest of the op types and the time outside any kernel, so the rows add
    up to 100% of the profiled run time."""
    headers = ["op type", "nodes", "calls", "total ms", "% of run"]
    p = run.op_profile
    if p is None:
        return headers, []
    rows = [[o.op_type, str(o.nodes), str(o.count), fmt(o.total_ms), f"{o.percent:.1f}"] for o in p.ops[:top]]
    rest = p.ops[top:]
    if rest:
        rows.append([f"other ({len(rest)} op types)", str(sum(o.nodes for o in rest)), str(sum(o.count for o in rest)),
                     fmt(sum(o.total_ms for o in rest)), f"{sum(o.percent for o in rest):.1f}"])
    outside = outside_kernels_percent(run)
    if outside > 0:
        rows.append(["outside kernels (ORT overhead)", "–", "–", fmt(p.run_ms - p.kernel_ms), f"{outside:.1f}"])
    return headers, rows


def outside_kernels_percent(run: RunResult) -> float:
    """The share of the profiled run time spent between kernels (scheduling, copies, framework), in %."""
    p = run.op_profile
    if p is None or p.run_ms <= 0:
        return 0.0
    return max(0.0, 100.0 - sum(o.percent for o in p.ops))


def node_rows(run: RunResult, top: int = 8) -> tuple[list[str], list[list[str]]]:
    headers = ["node", "op type", "calls", "total ms", "% of run"]
    p = run.op_profile
    if p is None:
        return headers, []
    return headers, [[n.name, n.op_type, str(n.count), fmt(n.total_ms), f"{n.percent:.1f}"] for n in p.top_nodes[:top]]


def _machine(h: dict) -> str:
    return (f"{h.get('cpu')} ({h.get('machine')}), {len(h.get('usable_cores', []))} usable of {h.get('logical_cores')} logical "
            f"cores, {fmt(h.get('memory_mb'))} MiB RAM, onnxruntime {h.get('onnxruntime')}, load average "
            f"{', '.join(f'{x:.2f}' for x in h.get('load_average_start', []))} at the start")


def where_it_ran(report: Report) -> str:
    """Which machine measured what: this host, and/or devices over ssh (each as read on the device itself)."""
    remotes = {v.remote["target"]: v.remote for v in report.variants if v.remote}
    local = [v.name for v in report.variants if not v.remote]
    parts = []
    if local or not remotes:
        parts.append(("Measured on this host: " if not remotes else f"{', '.join(local)} measured on this host: ")
                     + _machine(report.host) + ".")
    for target, h in remotes.items():
        names = [v.name for v in report.variants if v.remote.get("target") == target]
        parts.append(("Measured on " if not local else f"{', '.join(names)} measured on ") + f"{target} over ssh: "
                     + _machine(h) + f"; {h.get('system')}, Python {h.get('python')}, numpy {h.get('numpy')}.")
    machines = "this host's" if not remotes else "the device's" if not local else "those machines'"
    return " ".join(parts) + (f" The device profile '{report.device.get('name')}' is applied as constraints (threads, cores, "
                              f"memory limit) and budgets; the numbers are {machines} and are not scaled to the device.")
