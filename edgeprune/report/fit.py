"""Rendering a fit report (the dict ``FitReport.to_dict()`` writes to report.json): every candidate with its predicted
and measured figures and the limits it fails, the Pareto front as a figure (quality against speed, marker size = peak
memory, the budget as lines, the chosen point marked), in report.md and a self-contained report.html."""

from __future__ import annotations

import html

from edgeprune.fit.budget import BUDGET_KEYS
from edgeprune.report.profile import _CSS, _html_table, _md_table, figure_html
from edgeprune.report.tables import fmt


def _decoder(data: dict) -> bool:
    return data["quality_metric"] == "perplexity"


def _quality(value, data: dict) -> str:
    if value is None:
        return "–"
    return fmt(value if _decoder(data) else 1 - value, 4)


def speed_key(data: dict) -> str:
    return "decode_ms" if _decoder(data) else "latency_ms"


def pareto_points(data: dict) -> list[dict]:
    """What the figure draws, per measured candidate: speed, quality as shown, memory, whether it is on the measured
    Pareto front (no other measured candidate is at least as good on speed, quality and memory and better on one),
    whether it meets the budget and whether it was chosen."""
    key, decoder = speed_key(data), _decoder(data)
    points = [{"key": e["key"], "label": e["label"], "speed": e["measured"].get(key), "quality": e["measured"].get("quality"),
               "memory_mb": e["measured"].get("memory_mb"), "meets_budget": e["meets_budget"], "chosen": e["key"] == data["chosen"]}
              for e in data["entries"] if e["measured"].get(key) is not None and e["measured"].get("quality") is not None]

    def dominated(p: dict) -> bool:
        def better(o: dict) -> bool:
            pairs = [(o["speed"], p["speed"]), (o["quality"], p["quality"]), (o["memory_mb"] or 0, p["memory_mb"] or 0)]
            return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)
        return any(better(o) for o in points if o is not p)

    for p in points:
        p["pareto"] = not dominated(p)
        p["quality_shown"] = p["quality"] if decoder else 1 - p["quality"]
    return points


def pareto_figure(data: dict) -> bytes | None:
    from edgeprune.report.plots import _figure, _png

    points = pareto_points(data)
    if not points:
        return None
    key, decoder = speed_key(data), _decoder(data)
    fig, ax = _figure(figsize=(7, 4.6))
    memory = [p["memory_mb"] or 0 for p in points]
    top = max(memory) or 1
    for p in points:
        size = 40 + 360 * (p["memory_mb"] or 0) / top
        ax.scatter(p["speed"], p["quality_shown"], s=size, alpha=0.55 if p["pareto"] else 0.25,
                   color="tab:green" if p["meets_budget"] else "tab:gray", edgecolors="black" if p["pareto"] else "none")
        ax.annotate(p["key"], (p["speed"], p["quality_shown"]), fontsize=6, xytext=(4, 3), textcoords="offset points")
        if p["chosen"]:
            ax.scatter(p["speed"], p["quality_shown"], s=size * 1.8, facecolors="none", edgecolors="tab:red", linewidths=2,
                       label="chosen")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["speed"])
    ax.plot([p["speed"] for p in front], [p["quality_shown"] for p in front], color="black", lw=0.8, alpha=0.5, label="Pareto front")
    if key in data["budget"]:
        ax.axvline(data["budget"][key], color="tab:red", ls="--", lw=1, label=f"budget {data['budget'][key]:.3g} ms")
    ax.set_xlabel("decode ms/token (measured)" if decoder else "latency per sentence, p90 ms (measured)")
    ax.set_ylabel("held-out perplexity (lower is better)" if decoder else "embedding cosine vs dense (higher is better)")
    if decoder:
        ax.set_yscale("log")
    ax.set_title("Candidates: green meets every limit; marker size = peak memory", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def candidate_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Every candidate: measured figures (predicted in brackets), the latency prediction's error, and what it fails."""
    keys = [k for k in BUDGET_KEYS if any(k in e["measured"] or k in e["predicted"] for e in data["entries"])]
    quality = "perplexity" if _decoder(data) else "cosine"
    headers = ["candidate", f"{quality} (proxy)", *[f"{BUDGET_KEYS[k][0]} {BUDGET_KEYS[k][1]} (pred.)" for k in keys],
               "pred./meas. speed", "budget"]
    rows = []
    speed = speed_key(data)
    for e in data["entries"]:
        m, p = e["measured"], e["predicted"]
        cells = [("★ " if e["key"] == data["chosen"] else "") + e["label"],
                 f"{_quality(m.get('quality'), data)} ({_quality(p.get('quality'), data)})"]
        cells += [f"{fmt(m.get(k))} ({fmt(p.get(k))})" for k in keys]
        ratio = p.get(speed) / m[speed] if p.get(speed) and m.get(speed) and e["basis"] != "measured" else None
        cells.append(f"{ratio:.2f}" if ratio else "–")
        if not m:
            verdict = "not measured"
        elif "failed" in m:
            verdict = f"FAIL: could not run ({m['failed']})"
        elif e["misses"]:
            verdict = "FAIL " + ", ".join(f"{BUDGET_KEYS[k][0]} ×{r:.2f}" for k, r in e["misses"].items())
        else:
            verdict = "meets"
        rows.append(cells + [verdict])
    return headers, rows


def summary_lines(data: dict) -> list[str]:
    limits = data.get("budget_rule") or ", ".join(f"{BUDGET_KEYS[k][0]} ≤ {v:g} {BUDGET_KEYS[k][1]}" for k, v in data["budget"].items())
    chosen = next(e for e in data["entries"] if e["key"] == data["chosen"])
    measured = [e for e in data["entries"] if e["measured"]]
    ratios = [e["predicted"][speed_key(data)] / e["measured"][speed_key(data)] for e in measured
              if e["basis"] != "measured" and e["predicted"].get(speed_key(data)) and e["measured"].get(speed_key(data))]
    lines = [f"Model `{data['model']}` on device `{data['device']}`, {data['threads']} thread(s); budget: {limits}.",
             f"Chosen: **{chosen['label']}** — {data['quality_metric']} {_quality(chosen['measured']['quality'], data)}, "
             + ", ".join(f"{BUDGET_KEYS[k][0]} {fmt(chosen['measured'].get(k))} {BUDGET_KEYS[k][1]}" for k in BUDGET_KEYS
                         if chosen["measured"].get(k) is not None) + ".",
             f"{len(measured)} of {len(data['entries'])} candidates measured"
             + ("" if len(measured) == len(data["entries"]) else f" in {data['rounds']} round(s); the others were predicted only")
             + f" (predictions in brackets). {data['seconds']:.0f} s."]
    if data.get("profile_rounds", 1) > 1:
        lines.append(f"Timings are medians of {data['profile_rounds']} profile rounds in alternating order; the pruned candidates' "
                     f"as their per-round ratio to dense int4, profiled again in the same rounds, × its own figure"
                     + (f", except {BUDGET_KEYS[speed_key(data)][0]}: their median per-turn ratio to dense int4 timed beside them "
                        f"in one process ({data['side_by_side']} turns each, order alternating) × its own figure."
                        if data.get("side_by_side") else "."))
    if data.get("measured_all"):
        picked = [e for e in data["entries"] if e["shortlisted"]]
        same = data["shortlist_choice"] == data["chosen"]
        lines.append(f"Every candidate was measured (--measure-all). The shortlist rounds alone would have measured {len(picked)} "
                     f"pruned candidate(s) besides the dense ones and chosen "
                     f"{next((e['label'] for e in data['entries'] if e['key'] == data['shortlist_choice']), 'nothing')}: "
                     + ("the same model." if same else "NOT the best measured model."))
    if ratios:
        worst = max(ratios, key=lambda r: abs(r - 1))
        lines.append(f"Latency prediction / measurement on the measured pruned candidates: {', '.join(f'{r:.2f}' for r in ratios)} "
                     f"(worst {abs(worst - 1):.0%} off).")
    dense = [e for e in measured if e["candidate"]["keep"] >= 1 and not e["candidate"]["sparsity"] and not e["misses"]
             and "failed" not in e["measured"]]
    if chosen["candidate"]["keep"] < 1 or chosen["candidate"]["sparsity"]:
        lines.append("Pruning pays here: no unpruned candidate meets the budget." if not dense else
                     "An unpruned candidate also meets the budget, but the chosen one has better held-out quality.")
    else:
        lines.append("The unpruned model meets the budget: pruning would only cost quality here.")
    return lines


def to_markdown(data: dict) -> str:
    parts = ["# edgeprune fit", "", *[f"- {line}" for line in summary_lines(data)], "", "## Every candidate",
             "Measured figures, predicted in brackets; `★` = chosen.", "", _md_table(*candidate_table(data))]
    return "\n".join(parts) + "\n"


def to_html(data: dict) -> str:
    e = html.escape
    parts = ["<h1>edgeprune fit</h1>", "<ul>" + "".join(f"<li>{e(line.replace('**', '').replace('`', ''))}</li>"
                                                     for line in summary_lines(data)) + "</ul>"]
    png = pareto_figure(data)
    if png:
        parts.append(figure_html("Quality against speed (measured)", png))
    parts += ["<h2>Every candidate</h2><p>Measured figures, predicted in brackets; ★ = chosen.</p>", _html_table(*candidate_table(data))]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgeprune fit</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
