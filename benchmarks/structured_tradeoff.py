"""Structured pruning trade-off: held-out perplexity at several keep fractions of the decoder blocks' parameters,
for uniform magnitude-structured and Wanda-sp-style baselines against edgeprune's searched shapes, with and
without reformation.

    python benchmarks/structured_tradeoff.py --model smollm2-135m --keep 0.9,0.8,0.75,0.6 --out bench-out/structured_tradeoff

Rows (all use the same calibration windows; perplexity on non-overlapping 512-token windows of held-out pydoc):
  magnitude-uniform   ‖W‖² per unit, same shape in every block, no reformation
  wanda-sp-uniform    Σ|W|·‖X‖ per unit (Wanda-sp / FLAP-style), same shape in every block, no reformation
  wanda-sp-channels   the same score, every head kept, the same MLP width in every block (with 3 query heads per KV
                      group, a uniform head ratio rounds to 1/3 steps; this baseline avoids that rounding)
  output-uniform      edgeprune's output-aware score, same shape in every block (what the score alone buys)
  output-search       edgeprune's score + evolutionary search of per-block shapes (what the search adds)
  output-search+reform  ... + ridge reformation of the kept weights (what reformation adds)
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from edgeprune.data import CalibConfig, calibration_batch, eval_windows, load_text
from edgeprune.evaluation import perplexity
from edgeprune.models.loading import load_model
from edgeprune.structured import StructuredConfig, choose_arch, masked, spaces_and_cost
from edgeprune.structured.search import dense_arch, uniform_arch
from edgeprune.structured.layout import block_params
from edgeprune.structured.reform import reform_model
from edgeprune.structured.scores import score_model
from edgeprune.structured.search import kept_units

ROWS = [  # name, score, search, reform
    ("magnitude-uniform", "magnitude", "uniform", False),
    ("wanda-sp-uniform", "wanda-sp", "uniform", False),
    ("wanda-sp-channels", "wanda-sp", "channels", False),
    ("output-uniform", "output", "uniform", False),
    ("output-search", "output", "evolution", False),
    ("output-search+reform", "output", "evolution", True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--keep", default="0.9,0.8,0.75,0.6")
    ap.add_argument("--rows", default=",".join(r[0] for r in ROWS))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--out", default="bench-out/structured_tradeoff")
    args = ap.parse_args()

    start = time.perf_counter()
    loaded = load_model(args.model)
    calib = calibration_batch(loaded.tokenizer, CalibConfig(samples=args.samples, seqlen=args.seqlen))
    windows = eval_windows(loaded.tokenizer, load_text("pydoc", "eval"), 512, args.max_windows)
    blocks = loaded.adapter.blocks(loaded.model)
    _, params = spaces_and_cost(loaded.model, loaded.adapter, StructuredConfig().channel_step)
    dense_params = sum(block_params(b, loaded.adapter) for b in blocks)
    result = {"model": args.model, "calibration": f"pydoc {args.samples}x{args.seqlen}", "eval": f"pydoc held-out, {windows.shape[0]}x512",
              "dense_block_params": dense_params, "dense_perplexity": perplexity(loaded.model, windows), "rows": [],
              "host": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}}
    print(f"dense perplexity {result['dense_perplexity']:.2f}", flush=True)
    wanted = [r for r in ROWS if r[0] in args.rows.split(",")]
    scores = {s: score_model(loaded.model, loaded.adapter, calib, s) for s in sorted({r[1] for r in wanted})}
    for keep in [float(k) for k in args.keep.split(",")]:
        searched = {}
        for name, score, search, reform in wanted:
            t = time.perf_counter()
            config = StructuredConfig(target_params=keep, score=score, search=search if search != "channels" else "uniform", reform=reform,
                                      generations=args.generations)
            key = (score, search)
            if key not in searched:
                searched[key] = channels_only(loaded, keep) if search == "channels" else choose_arch(loaded, config, scores[score], calib)
            arch, spaces, log, _ = searched[key]
            kept = kept_units(arch, spaces, scores[score])
            if reform:
                model = copy.deepcopy(loaded.model)
                errors = reform_model(model, loaded.adapter, kept, calib, reform=True)
                ppl = perplexity(model, windows)
                del model
            else:
                errors = None
                with masked(loaded.model, loaded.adapter, kept):
                    ppl = perplexity(loaded.model, windows)
            row = {"keep": keep, "row": name, "perplexity": ppl, "kept_fraction": params(arch) / dense_params,
                   "layout": [(len(h), len(c)) for h, c in kept], "search": log, "seconds": round(time.perf_counter() - t, 1)}
            if errors:
                row["block_error_removal"] = sum(e["removal_error"] for e in errors) / len(errors)
                row["block_error_reformed"] = sum(e["reformed_error"] for e in errors) / len(errors)
            result["rows"].append(row)
            print(f"keep {keep:.2f} {name:22s} ppl {ppl:8.2f}  kept {row['kept_fraction']:.3f}  {row['seconds']}s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def channels_only(loaded, keep: float):
    """Every head kept; the widest common MLP width within the parameter budget."""
    spaces, cost = spaces_and_cost(loaded.model, loaded.adapter, StructuredConfig().channel_step)
    return uniform_arch(spaces, cost, keep * cost(dense_arch(spaces)), keep_heads=True), spaces, {}, None


def markdown(result: dict) -> str:
    keeps = sorted({r["keep"] for r in result["rows"]}, reverse=True)
    names = list(dict.fromkeys(r["row"] for r in result["rows"]))
    cell = {(r["keep"], r["row"]): r for r in result["rows"]}
    lines = [f"{result['model']}: held-out perplexity ({result['eval']}; dense {result['dense_perplexity']:.2f}), "
             f"calibration {result['calibration']}", "",
             "| kept block params | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keeps:
        lines.append(f"| {k:.0%} | " + " | ".join(f"{cell[(k, n)]['perplexity']:.2f}" if (k, n) in cell else "" for n in names) + " |")
    lines += ["", "Achieved kept fraction (of the blocks' linear parameters) and block-output error of the reformed rows:", ""]
    for r in result["rows"]:
        extra = f", block error {r['block_error_removal']:.3f} → {r['block_error_reformed']:.3f}" if "block_error_removal" in r else ""
        lines.append(f"- {r['keep']:.0%} {r['row']}: {r['kept_fraction']:.3f}{extra}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
