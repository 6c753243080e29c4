"""Report figures with matplotlib (Agg backend, nothing global touched): each returns PNG bytes, or None when
there is nothing to draw."""

from __future__ import annotations

import io
import textwrap

from edgeprune.profiling.results import Report
from edgeprune.report.tables import column_title, outside_kernels_percent


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), squeeze: bool = True):
    """A bare Figure (no pyplot): no global backend or figure registry is touched."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from edgeprune.errors import EdgepruneError

        raise EdgepruneError("the HTML report needs matplotlib", "run: pip install matplotlib") from None
    fig = Figure(figsize=figsize, layout="constrained")  # room for every label, none cut at the edge
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _tick(v, r) -> str:
    """A variant's axis label: its name wrapped to short lines (no rotation, so nothing runs off the figure), then threads."""
    return "\n".join(textwrap.wrap(v.name, 14) or [v.name]) + f"\n{r.threads} thread{'s' if r.threads != 1 else ''}"


def _ok_runs(report: Report):
    return [(v, r) for v in report.variants for r in v.runs if r.ok]


def latency_distribution(report: Report) -> bytes | None:
    """Box plots of every latency sample: decoders' TTFT and decode ms/token, encoders' latency."""
    panels = []
    runs = _ok_runs(report)
    ttft = [(_tick(v, r), r.decoder[0].prefill.samples, r.decoder[0].prompt_tokens) for v, r in runs if r.decoder]
    decode = [(_tick(v, r), r.decoder[0].decode.samples) for v, r in runs if r.decoder]
    enc = [(_tick(v, r), r.encoder[0].latency.samples) for v, r in runs if r.encoder]
    if ttft:
        panels.append((f"time to first token, {ttft[0][2]}-token prompt (ms)", [(n, s) for n, s, _ in ttft]))
        panels.append(("decode (ms per token)", decode))
    if enc:
        panels.append(("encoder latency (ms)", enc))
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), figsize=(max(5.5, 1.3 * len(panels[0][1]) + 1.5) * len(panels), 3.8), squeeze=False)
    for ax, (title, data) in zip(axes[0], panels):
        ax.boxplot([s for _, s in data], showfliers=True)
        ax.set_xticks(range(1, len(data) + 1), [n for n, _ in data], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def memory(report: Report) -> bytes | None:
    runs = [(v, r) for v, r in _ok_runs(report) if r.memory]
    if not runs:
        return None
    fig, ax = _figure(figsize=(max(5.0, 1.4 * len(runs) + 2), 3.6))
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], [r.memory.peak_load_mb for _, r in runs], 0.4, label="peak RSS, load")
    ax.bar([x + 0.2 for x in xs], [r.memory.peak_run_mb for _, r in runs], 0.4, label="peak RSS, run")
    budget = report.device.get("memory_budget_mb")
    highest = max(max(r.memory.peak_load_mb, r.memory.peak_run_mb) for _, r in runs)
    heading = "memory per variant (sampled from outside the process)"
    if budget and budget <= 3 * highest:
        ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget:g} MiB")
    elif budget:  # a line far above the bars would flatten them to nothing
        heading += f"\nbudget {budget:g} MiB, off the scale"
    ax.set_xticks(list(xs), [_tick(v, r) for v, r in runs], fontsize=7)
    ax.set_ylabel("MiB")
    ax.set_title(heading, fontsize=10)
    fig.legend(fontsize=8, ncol=3, loc="outside lower center")  # below the axes: never over a bar
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def op_breakdown(report: Report, top: int = 8) -> bytes | None:
    """Each run's profiled time by op type: the ``top`` types, the other types, and the time outside kernels (100% in all)."""
    runs = [(v, r) for v, r in _ok_runs(report) if r.op_profile and r.op_profile.ops]
    if not runs:
        return None
    totals: dict[str, float] = {}
    for _, r in runs:
        for o in r.op_profile.ops:
            totals[o.op_type] = totals.get(o.op_type, 0.0) + o.percent
    keep = sorted(totals, key=lambda k: -totals[k])[:top]
    fig, ax = _figure(figsize=(8, 0.6 * len(runs) + 2.2))
    labels = [f"{v.name}, {r.threads} thread{'s' if r.threads != 1 else ''}" for v, r in runs]
    left = [0.0] * len(runs)
    cmap = __import__("matplotlib").colormaps["tab10"]
    other, outside = "other op types", "outside kernels"
    for i, op in enumerate(keep + [other, outside]):
        widths = []
        for _, r in runs:
            by = {o.op_type: o.percent for o in r.op_profile.ops}
            if op == other:
                widths.append(max(0.0, sum(by.values()) - sum(by.get(k, 0.0) for k in keep)))
            elif op == outside:
                widths.append(outside_kernels_percent(r))
            else:
                widths.append(by.get(op, 0.0))
        color = {other: "lightgrey", outside: "white"}.get(op, cmap(i % 10))
        ax.barh(labels, widths, left=left, label=op, color=color, edgecolor="grey" if op == outside else None,
                hatch="//" if op == outside else None)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, max(100.0, *left))
    ax.set_xlabel("% of run time (ORT profiler; \"outside kernels\" is framework time between them)")
    ax.set_title("op-type breakdown", fontsize=10)
    fig.legend(fontsize=7, ncol=min(5, len(keep) + 2), loc="outside lower center")
    return _png(fig)


def _speed(run) -> tuple[str, float] | None:
    if run.decoder:
        return "decode ms/token", run.decoder[0].decode_ms_per_token
    if run.encoder:
        return "latency p50 ms", run.encoder[0].latency.p50
    return None


def quality_tradeoff(report: Report) -> bytes | None:
    """Quality vs latency and vs size, for variants whose edgeprune.json gives a numeric quality figure."""
    for key in ("perplexity", "embedding_cosine_min", "max_abs_diff_vs_torch", "overall_sparsity"):
        points = [(v, r) for v, r in _ok_runs(report) if isinstance(v.quality.get(key), (int, float)) and _speed(r)]
        if len(points) >= 1:
            break
    else:
        return None
    fig, axes = _figure(1, 2, figsize=(10, 3.6), squeeze=False)
    speed_label = _speed(points[0][1])[0]
    for ax, (xlabel, x_of) in zip(axes[0], ((speed_label, lambda v, r: _speed(r)[1]), ("size MiB", lambda v, r: v.size_bytes / 2**20))):
        for v, r in points:
            ax.scatter(x_of(v, r), v.quality[key])
            ax.annotate(f"{v.name}, {r.threads}t", (x_of(v, r), v.quality[key]), fontsize=7, textcoords="offset points",
                        xytext=(4, 4))
        ax.margins(x=0.35, y=0.15)  # room for the annotations inside the axes
        ax.set_xlabel(xlabel)
        ax.set_ylabel(column_title(key))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{column_title(key)} vs speed and size", fontsize=10)
    return _png(fig)


FIGURES = {
    "latency distribution": latency_distribution,
    "memory per variant": memory,
    "op-type breakdown": op_breakdown,
    "quality vs latency and size": quality_tradeoff,
}
