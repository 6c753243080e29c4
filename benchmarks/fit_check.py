"""Check an `edgeprune fit --measure-all` run against what issue 16 asks of it, from its report.json.

    edgeprune fit smollm2-135m --device this-host --threads 2 --max-decode-ms 0.8x --measure-all --out runs/fit-smol
    python benchmarks/fit_check.py runs/fit-smol --out bench-out/fit_check

Checks (each PASS/FAIL in the output):
- the chosen model meets every limit, as measured;
- its held-out quality is the best among every measured candidate that meets every limit;
- the shortlist rounds alone (without --measure-all) would have chosen the same model;
- predicted / measured latency is within ±15% on the shortlisted pruned candidates.
Writes OUT.json and OUT.md with every candidate's figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def check(data: dict) -> dict:
    key = "decode_ms" if data["quality_metric"] == "perplexity" else "latency_ms"
    entries = data["entries"]
    meets = [e for e in entries if e["meets_budget"]]
    chosen = next((e for e in entries if e["key"] == data["chosen"]), None)
    best = min(meets, key=lambda e: e["measured"]["quality"]) if meets else None
    ratios = {e["key"]: e["predicted"][key] / e["measured"][key] for e in entries
              if e["shortlisted"] and e["basis"] != "measured" and e["predicted"].get(key) and e["measured"].get(key)}
    return {
        "measured_all": bool(data.get("measured_all")) and all(e["measured"] for e in entries),
        "chosen": data["chosen"],
        "chosen_meets_budget": bool(chosen and chosen["meets_budget"]),
        "chosen_is_best_that_meets": bool(chosen and best and chosen["key"] == best["key"]),
        "shortlist_choice": data.get("shortlist_choice"),
        "shortlist_agrees": data.get("shortlist_choice") == data["chosen"],
        "latency_ratio_shortlist": {k: round(v, 3) for k, v in ratios.items()},
        "latency_within_15pct": bool(ratios) and all(abs(r - 1) <= 0.15 for r in ratios.values()),
        "candidates_meeting_budget": [e["key"] for e in meets],
    }


def to_markdown(data: dict, result: dict) -> str:
    from edgeprune.report.fit import candidate_table
    from edgeprune.report.profile import _md_table

    flag = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines = [f"# fit check: {data['model']} on {data['device']}", "", f"Budget: {data.get('budget_rule') or data['budget']}", "",
             f"- every candidate measured: {flag(result['measured_all'])}",
             f"- chosen `{result['chosen']}` meets every limit: {flag(result['chosen_meets_budget'])}",
             f"- chosen has the best held-out quality among the {len(result['candidates_meeting_budget'])} that meet it: "
             f"{flag(result['chosen_is_best_that_meets'])}",
             f"- the shortlist alone chose `{result['shortlist_choice']}`: {flag(result['shortlist_agrees'])}",
             f"- predicted/measured latency on the shortlisted pruned candidates {result['latency_ratio_shortlist']}: "
             f"{flag(result['latency_within_15pct'])}", "", _md_table(*candidate_table(data))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fit_dir", type=Path, help="the --out folder of an edgeprune fit run (its report.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/fit_check"))
    args = parser.parse_args()
    data = json.loads((args.fit_dir / "report.json").read_text())
    result = check(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"check": result, "report": data}, indent=2) + "\n")
    text = to_markdown(data, result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
