"""The report a user keeps from ``edgeprune run``: each variant against the dense model — quality, size,
latency, tokens/s, peak memory, budgets per device — with the profiling plots, the exact recipe, package
versions and host, so the run can be reproduced. Built from the run summary; nothing here measures.
"""

from __future__ import annotations

import html
from importlib import metadata
from pathlib import Path

from edgeprune.profiling.results import Report, RunResult, VariantResult
from edgeprune.report import _CSS, _html_table, _md_table, figure_html, tables

PACKAGES = ("edgeprune", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy", "safetensors", "gguf")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _quality(entry: dict) -> tuple[str, float | None, str]:
    """(what, value, detail) of a variant's evaluation, e.g. ("perplexity", 18.4, "4096 tokens of pydoc")."""
    q = entry.get("quality") or {}
    if q.get("perplexity") is not None:
        return "perplexity", q["perplexity"], f"{q.get('tokens')} tokens of {q.get('text')}"
    if q.get("embedding_cosine") is not None:
        return "cosine to dense", q["embedding_cosine"], f"{q.get('sentences')} sentences of {q.get('text')}"
    return "quality", None, "not evaluated (add an [eval] step)"


def device_reports(summary: dict) -> dict[str, Report]:
    """Each device's profile Report, its variants carrying the run's evaluation figures as quality."""
    out = {}
    for device, data in summary.get("profiles", {}).items():
        report = Report.from_dict(data)
        for v in report.variants:
            what, value, _ = _quality(summary["variants"].get(v.name, {}))
            if value is not None:
                v.quality = {**v.quality, ("perplexity" if "perplexity" in what else "embedding_cosine_mean"): value}
        out[device] = report
    return out


def _run_figures(v: VariantResult, r: RunResult) -> list[str]:
    if not r.ok:
        return ["FAILED: " + r.reason] + [""] * 4
    mem = tables.fmt(r.memory.peak_mb) if r.memory else "–"
    if r.decoder:
        d = r.decoder[0]
        return [tables.fmt(d.prefill.p50), tables.fmt(d.decode_ms_per_token), tables.fmt(d.decode_tokens_per_s), mem, tables.budget_summary(r)]
    if r.encoder:
        e = r.encoder[0]
        return [tables.fmt(e.latency.p50), tables.fmt(e.latency.p90), tables.fmt(e.sequences_per_s), mem, tables.budget_summary(r)]
    return ["–"] * 3 + [mem, tables.budget_summary(r)]


def summary_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per variant (× device × threads when profiled): quality, size and the headline latency/memory figures."""
    variants = summary["variants"]
    dense = variants.get("dense")
    dense_q = _quality(dense)[1] if dense else None
    dense_size = dense.get("onnx_bytes") if dense else None
    reports = device_reports(summary)
    decoder = any(r.decoder for rep in reports.values() for v in rep.variants for r in v.runs)
    what = next((_quality(e)[0] for e in variants.values() if _quality(e)[1] is not None), "quality")
    timing = ["TTFT p50 ms", "decode ms/tok", "decode tok/s"] if decoder else ["latency p50 ms", "latency p90 ms", "seq/s"]
    headers = ["variant", what, "ONNX MiB"] + (["device", "threads"] + timing + ["peak RSS MiB", "budgets"] if reports else [])
    rows = []
    for name, entry in variants.items():
        q = _quality(entry)[1]
        size = entry.get("onnx_bytes")
        base = [name, (tables.fmt(q, 4) + (f" ({q / dense_q:.2f}×)" if dense_q and name != "dense" and q is not None else "")) if q is not None else "–",
                (f"{size / 2**20:.1f}" + (f" ({size / dense_size:.2f}×)" if dense_size and name != "dense" else "")) if size else "–"]
        if not reports:
            rows.append(base)
            continue
        for device, rep in reports.items():
            for v in (v for v in rep.variants if v.name == name):
                for r in v.runs:
                    rows.append(base + [device, str(r.threads)] + _run_figures(v, r))
    return headers, rows


def _steps_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    return ["step folder", "seconds", "this run"], [[s["folder"], f"{s['seconds']:.1f}", "reused" if s["cached"] else "ran"]
                                                    for s in summary["steps"]]


def _reproduce(summary: dict) -> str:
    r = summary["recipe"]
    sets = "".join(f" --set {s}" for s in r["sets"])
    devices = "".join(f" --device {d}" for d in summary.get("profiles", {}))
    return f"edgeprune run {r['path']}{devices}{sets}"


def to_markdown(summary: dict, title: str) -> str:
    r = summary["recipe"]
    out = [f"# {title}\n", f"{r['description']}\n" if r["description"] else "", f"Model: `{r['model']}`.\n",
           "## Summary\n", _md_table(*summary_table(summary))]
    for device, rep in device_reports(summary).items():
        out += [f"## Device profile '{device}'\n", tables.where_it_ran(rep) + "\n", _md_table(*tables.comparison(rep))]
        out += [f"- note: {n}\n" for n in rep.notes]
        out.append(f"Full profile with plots: `{device}/report.html` in the profile step folder.\n")
    out += ["## Steps\n", _md_table(*_steps_rows(summary)), "## Reproduce\n", f"```\n{_reproduce(summary)}\n```\n",
            f"Recipe `{r['path']}`" + (f", with --set {', '.join(r['sets'])}" if r["sets"] else "") + ":\n",
            f"```toml\n{r['text'].rstrip()}\n```\n", "Packages: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".\n",
            "Host: " + ", ".join(f"{k} {v}" for k, v in summary["host"].items()) + ".\n"]
    return "\n".join(x for x in out if x)


def to_html(summary: dict, title: str) -> str:
    from edgeprune.report.plots import FIGURES

    e = html.escape
    r = summary["recipe"]
    parts = [f"<h1>{e(title)}</h1>"]
    if r["description"]:
        parts.append(f"<p>{e(r['description'])}</p>")
    parts += [f"<p>Model: <code>{e(r['model'])}</code>.</p>", "<h2>Summary</h2>", _html_table(*summary_table(summary))]
    for device, rep in device_reports(summary).items():
        parts += [f"<h2>Device profile '{e(device)}'</h2>", f"<p class='where'>{e(tables.where_it_ran(rep))}</p>",
                  _html_table(*tables.comparison(rep))]
        parts += [f"<p class='note'>{e(n)}</p>" for n in rep.notes]
        for name, draw in FIGURES.items():
            png = draw(rep)
            if png:
                parts.append(figure_html(f"{name} ({device})", png))
    parts += ["<h2>Steps</h2>", _html_table(*_steps_rows(summary)), "<h2>Reproduce</h2>", f"<pre>{e(_reproduce(summary))}</pre>",
              f"<p>Recipe <code>{e(r['path'])}</code>" + (f", with --set {e(', '.join(r['sets']))}" if r["sets"] else "") + ":</p>",
              f"<pre>{e(r['text'].rstrip())}</pre>",
              "<p>Packages: " + e(", ".join(f"{k} {v}" for k, v in summary["versions"].items())) + ".</p>",
              "<p>Host: " + e(", ".join(f"{k} {v}" for k, v in summary["host"].items())) + ".</p>"]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_run_report(summary: dict, out: str | Path, title: str) -> dict:
    """Write report.json, report.md and report.html into ``out``; returns the summary table as data."""
    from edgeprune.io import write_json

    out = Path(out)
    write_json(out / "report.json", summary)
    (out / "report.md").write_text(to_markdown(summary, title))
    (out / "report.html").write_text(to_html(summary, title))
    headers, rows = summary_table(summary)
    return {"summary": [dict(zip(headers, row)) for row in rows]}


__all__ = ["package_versions", "summary_table", "write_run_report"]
