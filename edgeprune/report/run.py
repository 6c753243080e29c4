"""The report a user keeps from ``edgeprune run``: each variant against the dense model — quality, size,
latency, tokens/s, peak memory, budgets per device — with the profiling plots, the exact recipe, package
versions and host, so the run can be reproduced. Built from the run summary; nothing here measures.
"""

from __future__ import annotations

import html
import shlex
from importlib import metadata
from pathlib import Path

from edgeprune.profiling.results import Report, RunResult, with_backend
from edgeprune.report import tables
from edgeprune.report.profile import _CSS, _html_table, _md_table, figure_html, quality_html, quality_markdown

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


def _quality_text(what: str, value: float, digits: int = 3) -> str:
    """Cosines sit just below 1, where significant digits hide every difference: they get four decimals."""
    return f"{value:.4f}" if what.startswith("cosine") else tables.fmt(value, digits)


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


def _speed(r: RunResult) -> tuple[str, float] | None:
    """The figure a speed-up is a ratio of: decode ms/token (decoders) or p50 latency (encoders); lower is faster."""
    if not r.ok:
        return None
    if r.decoder:
        return "decode", r.decoder[0].decode_ms_per_token
    if r.encoder:
        return "latency p50", r.encoder[0].latency.p50
    return None


def _run_figures(r: RunResult, base: RunResult | None) -> list[str]:
    if not r.ok:
        return ["FAILED: " + r.reason] + [""] * 5
    mem = tables.fmt(r.memory.peak_mb) if r.memory else "–"
    mine, theirs = _speed(r), _speed(base) if base is not None else None
    speedup = f"{theirs[1] / mine[1]:.2f}×" if mine and theirs and mine[1] > 0 else "–"
    if r.decoder:
        d = r.decoder[0]
        return [tables.fmt(d.prefill.p50), tables.fmt(d.decode_ms_per_token), tables.fmt(d.decode_tokens_per_s), speedup, mem,
                tables.budget_summary(r)]
    if r.encoder:
        e = r.encoder[0]
        return [tables.fmt(e.latency.p50), tables.fmt(e.latency.p90), tables.fmt(e.sequences_per_s), speedup, mem,
                tables.budget_summary(r)]
    return ["–"] * 4 + [mem, tables.budget_summary(r)]


def _dense_name(summary: dict) -> str | None:
    """The dense fp32 baseline's name (run.json files from before roles existed call it "dense")."""
    variants = summary["variants"]
    return next((n for n, e in variants.items() if e.get("role") == "dense"), "dense" if "dense" in variants else None)


def _runs(reports: dict[str, Report], name: str) -> dict[tuple[str, int], RunResult]:
    """The runs of variant ``name`` by (device, threads); measured with both backends, by ("DEVICE, BACKEND", threads)."""
    return {(device if v.name == name else f"{device}, {v.backend}", r.threads): r for device, rep in reports.items()
            for v in rep.variants if v.name in (name, with_backend(name, v.backend)) for r in v.runs}


def summary_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per variant (× device × threads when profiled): quality, size and the headline latency/memory figures,
    with ratios and the speed-up against the dense (fp32) model on the same device and threads."""
    variants = summary["variants"]
    dense_name = _dense_name(summary)
    dense = variants.get(dense_name) if dense_name else None
    dense_q = _quality(dense)[1] if dense else None
    dense_size = dense.get("onnx_bytes") if dense else None
    reports = device_reports(summary)
    dense_runs = _runs(reports, dense_name) if dense_name else {}
    decoder = any(r.decoder for rep in reports.values() for v in rep.variants for r in v.runs)
    what = next((_quality(e)[0] for e in variants.values() if _quality(e)[1] is not None), "quality")
    timing = ["TTFT p50 ms", "decode ms/tok", "decode tok/s"] if decoder else ["latency p50 ms", "latency p90 ms", "seq/s"]
    measured = ["device", "threads"] + timing + ["speed-up", "peak RSS MiB", "budgets"]
    headers = ["variant", what, "ONNX MiB"] + (measured if reports else [])
    rows = []
    for name, entry in variants.items():
        q = _quality(entry)[1]
        size = entry.get("onnx_bytes")
        vs_dense = name != dense_name
        quality = _quality_text(what, q, 4) + (f" ({q / dense_q:.2f}×)" if dense_q and vs_dense else "") if q is not None else "–"
        base = [name, quality,
                (f"{size / 2**20:.1f}" + (f" ({size / dense_size:.2f}×)" if dense_size and vs_dense else "")) if size else "–"]
        if not reports:
            rows.append(base)
            continue
        for (device, threads), r in _runs(reports, name).items():
            rows.append(base + [device, str(threads)] + _run_figures(r, dense_runs.get((device, threads))))
    return headers, rows


def summary_by_metric(summary: dict) -> tuple[list[str], list[tuple[str, list[list[str]]]]]:
    """The summary table turned on its side, for narrow terminals: one column per variant and one row per figure,
    the measured figures grouped by device and thread count. Returns (variant names, [(group title, rows)])."""
    headers, rows = summary_table(summary)
    names = list(dict.fromkeys(row[0] for row in rows))
    first = {row[0]: row for row in rows}
    sections = [("", [[headers[i]] + [first[n][i] for n in names] for i in (1, 2)])]
    if len(headers) > 3:
        groups = list(dict.fromkeys((row[3], row[4]) for row in rows))
        for device, threads in groups:
            by_name = {row[0]: row for row in rows if (row[3], row[4]) == (device, threads)}
            title = f"{device}, {threads} thread{'s' if threads != '1' else ''}"
            sections.append((title, [[headers[i]] + [by_name[n][i] if n in by_name else "–" for n in names]
                                     for i in range(5, len(headers))]))
    return names, sections


def speedup_note(summary: dict) -> str:
    """What the bracketed ratios and the speed-up column are relative to."""
    dense = _dense_name(summary)
    if dense is None:
        return ""
    decoder = any(r.decoder for rep in device_reports(summary).values() for v in rep.variants for r in v.runs)
    what = "decode ms/token" if decoder else "p50 latency"
    return (f"Ratios in brackets are against {dense} (fp32); speed-up is {dense}'s {what} divided by the variant's, "
            f"on the same device and threads (above 1 = faster).")


def _change(before: float, after: float, lower_is_better: bool, tolerance: float) -> int:
    """+1 better, -1 worse, 0 within ``tolerance`` (a relative change)."""
    ratio = after / before
    if abs(ratio - 1) <= tolerance:
        return 0
    return 1 if (ratio < 1) == lower_is_better else -1


def _join(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def same_precision_sentence(summary: dict) -> str | None:
    """What pruning itself bought or cost: the pruned variant against the unpruned model at the same precision (dense int4
    for an int4 variant), in words computed from the measured quality, size and speed. None when there is no such pair."""
    pair = summary.get("same_precision") or {}
    base, variant = summary["variants"].get(pair.get("baseline")), summary["variants"].get(pair.get("variant"))
    if not base or not variant:
        return None
    changed, quality, verdict = [], None, {}  # verdict: figure → +1 / 0 / -1
    what, bq, _ = _quality(base)
    vq = _quality(variant)[1]
    if bq and vq is not None:
        changed.append(f"{what} {_quality_text(what, bq)} → {_quality_text(what, vq)} ({vq / bq:.2f}×)")
        quality = _change(bq, vq, lower_is_better=what == "perplexity", tolerance=0.01)
    bs, vs = base.get("onnx_bytes"), variant.get("onnx_bytes")
    if bs and vs:
        changed.append(f"ONNX size {tables.fmt(bs / 2**20)} → {tables.fmt(vs / 2**20)} MiB ({vs / bs:.2f}×)")
        verdict["size"] = _change(bs, vs, lower_is_better=True, tolerance=0.05)
    where = ""
    for device, rep in device_reports(summary).items():  # the first device with both measured at the same thread count
        base_runs, runs = _runs({device: rep}, pair["baseline"]), _runs({device: rep}, pair["variant"])
        both = [(k, _speed(base_runs[k]), _speed(r)) for k, r in runs.items() if k in base_runs]
        both = [(k, b, v) for k, b, v in both if b and v]
        if both:
            (_, threads), (label, b), (_, v) = both[0]
            unit = "ms/token" if label == "decode" else "ms"
            changed.append(f"{label} {tables.fmt(b)} → {tables.fmt(v)} {unit} ({v / b:.2f}×)")
            verdict["speed"] = _change(b, v, lower_is_better=True, tolerance=0.05)
            where = f" on {device} ({threads} thread{'s' if threads != 1 else ''})"
            break
    if not changed:
        return None
    clauses = []
    if quality is not None:
        clauses.append({1: "improves quality", 0: "keeps quality"}.get(quality, ""))
    costs = (["quality"] if quality == -1 else []) + [k for k, c in verdict.items() if c == -1]
    gains = [k for k, c in verdict.items() if c == 1]
    flat = [k for k, c in verdict.items() if c == 0]
    clauses = [c for c in clauses if c]
    if costs:
        clauses.append("costs " + " and ".join(costs))
    if gains:
        clauses.append("buys " + " and ".join(gains) + (" but no " + " or ".join(flat) if flat else ""))
    elif flat:
        clauses.append("buys no " + " or ".join(flat))
    return (f"Against {pair['baseline']} (the unpruned model at the same precision), pruning changed {', '.join(changed)}: "
            f"at this precision pruning {_join(clauses)}{where}.")


def _steps_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    return ["step folder", "seconds", "this run"], [[s["folder"], f"{s['seconds']:.1f}", "reused" if s["cached"] else "ran"]
                                                    for s in summary["steps"]]


def reproduce_command(summary: dict) -> str:
    """The command that re-creates this run in the same folder (so its finished steps are reused, not redone)."""
    r = summary["recipe"]
    devices = summary.get("devices") or list(summary.get("profiles", {}))
    args = ["edgeprune", "run", r["path"]] + [a for d in devices for a in ("--device", d)]
    args += [a for s in r["sets"] for a in ("--set", s)]
    if summary.get("out"):
        args += ["--out", summary["out"]]
    return shlex.join(args)


def _first_report(summary: dict) -> Report | None:
    return next(iter(device_reports(summary).values()), None)


def to_markdown(summary: dict, title: str) -> str:
    r = summary["recipe"]
    sentence = same_precision_sentence(summary)
    out = [f"# {title}\n", f"{r['description']}\n" if r["description"] else "", f"Model: `{r['model']}`.\n",
           "## Summary\n", _md_table(*summary_table(summary)), f"{speedup_note(summary)}\n" if speedup_note(summary) else "",
           f"**{sentence}**\n" if sentence else ""]
    first = _first_report(summary)
    if first is not None:
        out += quality_markdown(first)
    for device, rep in device_reports(summary).items():
        out += [f"## Device profile '{device}'\n", tables.where_it_ran(rep) + "\n", _md_table(*tables.comparison(rep))]
        out += [f"- note: {n}\n" for n in rep.notes]
        out.append(f"Full profile with plots: `{device}/report.html` in the profile step folder.\n")
    out += ["## Steps\n", _md_table(*_steps_rows(summary)), "## Reproduce\n", f"```\n{reproduce_command(summary)}\n```\n",
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
    if speedup_note(summary):
        parts.append(f"<p>{e(speedup_note(summary))}</p>")
    sentence = same_precision_sentence(summary)
    if sentence:
        parts.append(f"<p class='verdict'>{e(sentence)}</p>")
    first = _first_report(summary)
    if first is not None:
        parts += quality_html(first)
    for device, rep in device_reports(summary).items():
        parts += [f"<h2>Device profile '{e(device)}'</h2>", f"<p class='where'>{e(tables.where_it_ran(rep))}</p>",
                  _html_table(*tables.comparison(rep))]
        parts += [f"<p class='note'>{e(n)}</p>" for n in rep.notes]
        for name, draw in FIGURES.items():
            png = draw(rep)
            if png:
                parts.append(figure_html(f"{name} ({device})", png))
    parts += ["<h2>Steps</h2>", _html_table(*_steps_rows(summary)), "<h2>Reproduce</h2>",
              f"<pre>{e(reproduce_command(summary))}</pre>",
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


__all__ = ["package_versions", "reproduce_command", "same_precision_sentence", "speedup_note", "summary_by_metric",
           "summary_table", "write_run_report"]
