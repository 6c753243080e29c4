"""Hyperparameter sweep of the Q/K mask optimiser on real blocks, scored by its own objective.

    python benchmarks/attention_sweep.py --model smollm2-135m --blocks 2,10,20 --sparsity 2:4 --out bench-out/attention_sweep

For each chosen block the calibration hidden states are those of the dense model
(a sweep, not a full prune). Each setting optimises the W_Q/W_K masks from the
Wanda start and reports the attention loss ½‖P̃ − P‖²_F of the exact mask on
held sequences that the optimiser never trains on, relative to the Wanda start.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgeprune.data import CalibConfig, calibration_batch
from edgeprune.models.loading import load_model
from edgeprune.pruning.attention import AttentionConfig, optimise_qk_masks
from edgeprune.pruning.kernels import ColumnSquareNorms
from edgeprune.sparsity import parse_sparsity

GRID = {
    "steps": [20, 40, 80],
    "lr": [0.02, 0.05, 0.1],
    "temperature": [0.25, 0.5, 1.0],
    "relaxation": ["sigmoid", "ste"],
    "lam": [0.0, 0.1],
}


def settings_to_try() -> list[dict]:
    """One-at-a-time variations around the default (a full grid would take hours on 2 cores)."""
    base = AttentionConfig()
    out = [{}]
    for key, values in GRID.items():
        out += [{key: v} for v in values if v != getattr(base, key)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", default="2,10,20")
    ap.add_argument("--sparsity", default="2:4")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="bench-out/attention_sweep")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    spec = parse_sparsity(args.sparsity)
    ids = calibration_batch(lm.tokenizer, CalibConfig(samples=args.samples, seqlen=args.seqlen))
    adapter, blocks = lm.adapter, lm.adapter.blocks(lm.model)
    wanted = [int(b) for b in args.blocks.split(",")]
    inputs = {}
    with torch.no_grad():
        hidden, context = adapter.embed(lm.model, ids)
        for i, block in enumerate(blocks[: max(wanted) + 1]):
            if i in wanted:
                parts = adapter.attention(block)
                inputs[i] = (parts, parts.attn_input(hidden))
            hidden = torch.cat([adapter.run_block(block, x, context) for x in hidden.split(8)])
    rows = []
    for change in settings_to_try():
        cfg = replace(AttentionConfig(), **change)
        ratios, seconds = [], 0.0
        for i in wanted:
            parts, x = inputs[i]
            norms = ColumnSquareNorms(x.shape[-1])
            norms.add(x)
            start = time.perf_counter()
            _, _, diag = optimise_qk_masks(x, parts, context, spec, spec, norms.value, cfg, torch.Generator().manual_seed(0))
            seconds += time.perf_counter() - start
            ratios.append(diag["best"] / diag["start"])
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "default"
        rows.append({"setting": label, "held_loss_ratio": [round(r, 4) for r in ratios], "mean_ratio": round(sum(ratios) / len(ratios), 4), "seconds_per_block": round(seconds / len(wanted), 2)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "sparsity": args.sparsity, "blocks": wanted, "default": vars(AttentionConfig()), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Q/K mask optimiser sweep: {args.model}, {args.sparsity}, blocks {wanted}",
        "",
        "Held loss = attention loss of the exact mask on held calibration sequences, relative to the Wanda start (lower is better).",
        "",
        "| setting | held loss / Wanda start (per block) | mean | s per block |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['setting']} | {r['held_loss_ratio']} | {r['mean_ratio']:.3f} | {r['seconds_per_block']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
