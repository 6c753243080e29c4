"""Rendering a profile report: a Report dataclass → report.json (schema_version), report.md and a self-contained
report.html (tables plus matplotlib figures embedded as base64 PNG). Nothing here measures anything.

    edgeprune.report.write_report(report, "runs/smol")
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from edgeprune.profiling.results import Report
from edgeprune.report import tables


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_none_\n"
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _device_line(report: Report) -> str:
    d = report.device
    parts = [f"threads {d.get('intra_op_threads') or 'all cores'}", f"cores {d.get('cores') or 'any'}",
             f"providers {' → '.join(d.get('execution_providers', []))}", f"graph optimisation {d.get('graph_optimization')}",
             f"quantisation preset {d.get('quantization')}"]
    for key, label, unit in (("memory_budget_mb", "memory budget", "MiB"), ("memory_limit_mb", "memory limit", "MiB"),
                             ("latency_p90_ms_budget", "p90 budget", "ms"), ("decode_ms_per_token_budget", "decode budget", "ms/token")):
        parts.append(f"{label} {tables.fmt(d[key])} {unit}" if d.get(key) is not None else f"no {label}")
    parts += [f"warm-up {d.get('warmup')}", f"runs {d.get('runs')}", f"min seconds {d.get('min_seconds')}"]
    return ", ".join(parts)


def _run_header(v, run) -> str:
    if not run.ok:
        return f"{v.name} — {run.threads} thread(s): FAILED — {run.reason}"
    ort = run.ort
    loop = ""
    if v.backend == "genai":
        loop = (f"ORT GenAI {ort.get('onnxruntime_genai')} generator"
                + (", shared KV buffer" if ort.get("past_present_share_buffer") else "") + "; ")
    elif v.kind == "decoder":
        loop = "ort loop (Python, KV cache fed back); "
    return (f"{v.name} — {run.threads} thread(s), pid {run.pid}, cores {run.cores}: {loop}session {run.session_ms:.0f} ms, "
            f"first inference {run.first_inference_ms:.1f} ms, warm-up {run.warmup}; providers {', '.join(ort.get('providers', []))}, "
            f"optimisation {ort.get('graph_optimization')}, arena {ort.get('cpu_mem_arena')}, mem pattern {ort.get('mem_pattern')}")


def to_markdown(report: Report) -> str:
    out = [f"# Profile: {', '.join(v.name for v in report.variants)} on '{report.device.get('name')}'\n",
           tables.where_it_ran(report) + "\n", f"Device profile: {_device_line(report)}.\n"]
    if report.notes:
        out += ["## Notes\n"] + [f"- {n}" for n in report.notes] + [""]
    out += ["## Comparison (ratios against the first variant at the same thread count)\n", _md_table(*tables.comparison(report))]
    out += quality_markdown(report)
    out += ["## Memory (MiB)\n", _md_table(*tables.memory_rows(report))]
    for v in report.variants:
        out.append(f"## {v.name}\n")
        out.append(f"`{v.graph}` — {v.kind}, {v.size_bytes / 2**20:.1f} MiB on disk ({', '.join(v.files)}), "
                   f"quantisation {v.quantization}." + (f" Note: {v.quality['quality_note']}." if "quality_note" in v.quality else "") + "\n")
        for run in v.runs:
            out.append(f"### {_run_header(v, run)}\n")
            if not run.ok:
                continue
            out.append(_md_table(*tables.run_details(v, run)))
            if run.budgets:
                out += [f"- {'PASS' if b.passed else 'FAIL'} {b.what}: {b.measured:.4g} (budget {b.budget:g})" for b in run.budgets] + [""]
            if run.repeats:
                out.append("Repeats (--strict): " + "; ".join(", ".join(f"{k} {val}" for k, val in r.items()) for r in run.repeats) + "\n")
                out.append(("**Unstable:** " + "; ".join(run.unstable) if run.unstable else "Stable: repeat medians within 5%.") + "\n")
            if run.op_profile:
                p = run.op_profile
                out.append(f"Op profile ({p.runs} profiled runs, {p.run_ms:.1f} ms, kernels {p.kernel_ms:.1f} ms; raw trace "
                           f"[{p.trace_file}]({p.trace_file}) for https://ui.perfetto.dev):\n")
                out.append(_md_table(*tables.op_rows(run)))
                out.append(_md_table(*tables.node_rows(run)))
    return "\n".join(out)


def quality_markdown(report: Report, heading: str = "##") -> list[str]:
    """The quality table with its note on quantised graphs, as Markdown blocks (nothing when no variant has figures)."""
    headers, rows = tables.quality_rows(report)
    if not rows:
        return []
    note = tables.divergence_note(report)
    return [f"{heading} Quality\n", _md_table(headers, rows)] + ([f"Note: {note}\n"] if note else [])


def quality_html(report: Report, heading: str = "h2") -> list[str]:
    headers, rows = tables.quality_rows(report)
    if not rows:
        return []
    note = tables.divergence_note(report)
    notes = [f"<p class='note'>{html.escape(note)}</p>"] if note else []
    return [f"<{heading}>Quality</{heading}>", _html_table(headers, rows)] + notes


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:.95em;font-weight:600}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.85em;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2;vertical-align:bottom}td:first-child,th:first-child{text-align:left}.fail{color:#b00020;font-weight:600}
.note{background:#fff8e1;padding:6px 10px;border-left:3px solid #f0b400}img{max-width:100%;display:block;margin:8px 0}
.where{background:#eef5ff;padding:8px 12px;border-left:3px solid #3b82f6}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f7f7f7;padding:6px 10px}
.verdict{background:#f0f7ee;padding:8px 12px;border-left:3px solid #3a9d3a;font-weight:500}
"""


def _fail_class(failed: bool) -> str:
    return ' class="fail"' if failed else ""


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{_fail_class('FAIL' in c)}>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(title: str, png: bytes) -> str:
    """A titled PNG, embedded (base64) so the HTML stays one self-contained file."""
    return f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def to_html(report: Report) -> str:
    from edgeprune.report.plots import FIGURES

    e = html.escape
    parts = [f"<h1>Profile: {e(', '.join(v.name for v in report.variants))} on '{e(str(report.device.get('name')))}'</h1>",
             f"<p class='where'>{e(tables.where_it_ran(report))}</p>", f"<p>Device profile: {e(_device_line(report))}.</p>"]
    parts += [f"<p class='note'>{e(n)}</p>" for n in report.notes]
    parts += ["<h2>Comparison (ratios against the first variant at the same thread count)</h2>", _html_table(*tables.comparison(report))]
    parts += quality_html(report)
    parts += ["<h2>Memory (MiB)</h2>", _html_table(*tables.memory_rows(report))]
    parts.append("<h2>Figures</h2>")
    for title, draw in FIGURES.items():
        png = draw(report)
        if png:
            parts.append(figure_html(title, png))
    for v in report.variants:
        parts.append(f"<h2>{e(v.name)}</h2><p><code>{e(v.graph)}</code> — {e(v.kind)}, {v.size_bytes / 2**20:.1f} MiB on disk "
                     f"({e(', '.join(v.files))}), quantisation {e(v.quantization)}."
                     + (f" Note: {e(v.quality['quality_note'])}." if "quality_note" in v.quality else "") + "</p>")
        for run in v.runs:
            parts.append(f"<h3{_fail_class(not run.ok)}>{e(_run_header(v, run))}</h3>")
            if not run.ok:
                continue
            parts.append(_html_table(*tables.run_details(v, run)))
            if run.budgets:
                parts.append("<ul>" + "".join(f"<li{_fail_class(not b.passed)}>{'PASS' if b.passed else 'FAIL'} "
                                              f"{e(b.what)}: {b.measured:.4g} (budget {b.budget:g})</li>" for b in run.budgets) + "</ul>")
            if run.repeats:
                parts.append(f"<p>Repeats (--strict): {e('; '.join(', '.join(f'{k} {val}' for k, val in r.items()) for r in run.repeats))}</p>")
                parts.append(f"<p class='fail'>Unstable: {e('; '.join(run.unstable))}</p>" if run.unstable
                             else "<p>Stable: repeat medians within 5%.</p>")
            if run.op_profile:
                p = run.op_profile
                parts.append(f"<p>Op profile: {p.runs} profiled runs, {p.run_ms:.1f} ms, kernels {p.kernel_ms:.1f} ms; raw trace "
                             f"<a href='{e(p.trace_file)}'>{e(p.trace_file)}</a> (opens in ui.perfetto.dev).</p>")
                parts.append(_html_table(*tables.op_rows(run)))
                parts.append(_html_table(*tables.node_rows(run)))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgeprune profile</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(report: Report, out: str | Path) -> None:
    from edgeprune.io import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report.to_dict())
    (out / "report.md").write_text(to_markdown(report))
    (out / "report.html").write_text(to_html(report))

