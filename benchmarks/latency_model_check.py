"""How well the measured latency model of `structured` and `fit` predicts real layouts, without any search.

    python benchmarks/latency_model_check.py smollm2-135m --device this-host --threads 2 --scheme int4 --out bench-out/latency_model

The latency model (edgeprune/structured/latency.py) is measured once, as `fit` measures it. Then fixed layouts are
cut from the dense model by unit index (latency does not depend on which heads or channels stay, only on how many):
uniform narrowing to about 75% and 55% of the block parameters with every block kept, whole blocks removed, both
together, and a seeded random per-block mix. Each is exported, quantised as ``--scheme`` (round to nearest) and
profiled with the dense model in the same process order, ``--rounds`` times, alternating the order each round.
Reported per layout: predicted and measured decode ms/token (encoders: ms per call) as ratios to the dense model,
and predicted / measured. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch


def layouts(spaces, n_blocks: int, seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """Named architectures: per block (query heads per KV group, MLP channels), (0, 0) for a removed block."""
    from edgeprune.structured.search import DROPPED, dense_arch

    dense = list(dense_arch(spaces))

    def narrowed(share: float):
        out = []
        for s in spaces:
            k = max(1, round(s.per_group * share))
            c = max(s.step, int(s.channels * share) // s.step * s.step)
            out.append((k, c))
        return out

    drop = max(1, n_blocks // 6)
    rng = random.Random(seed)
    mixed = [(rng.randint(1, s.per_group), rng.randrange(s.step, s.channels + 1, s.step)) for s in spaces]
    return {
        "narrow 75%": narrowed(0.75),
        "narrow 55%": narrowed(0.55),
        f"{drop} blocks removed": [DROPPED if i >= n_blocks - drop else a for i, a in enumerate(dense)],
        f"narrow 75% + {drop} blocks removed": [DROPPED if i >= n_blocks - drop else a for i, a in enumerate(narrowed(0.75))],
        "random mix": mixed,
    }


def build(loaded, arch):
    """A copy of the dense model cut to ``arch`` (first units by index)."""
    import copy

    from edgeprune.structured.layout import remove_units

    model = copy.deepcopy(loaded.model)
    adapter = loaded.adapter
    keep = []
    for i, (block, (k, c)) in enumerate(zip(adapter.blocks(model), arch)):
        if (k, c) == (0, 0):
            continue
        keep.append(i)
        units = adapter.units(block)
        groups = units.num_kv_heads if units.group_size > 1 else 1
        per = units.num_heads // groups
        remove_units(block, adapter, torch.tensor([g * per + j for g in range(groups) for j in range(k)]), torch.arange(c))
    adapter.keep_blocks(model, keep)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model spec (alias, folder, .gguf)")
    parser.add_argument("--device", default="this-host")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scheme", default="int4", choices=["none", "int8", "int4"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/latency_model"))
    args = parser.parse_args()

    from edgeprune.models.loading import load_model
    from edgeprune.profiling.devices import load_device
    from edgeprune.structured.latency import ENCODER_TOKENS, cost_to_dict, latency_cost, measure_rounds
    from edgeprune.structured.search import dense_arch
    from edgeprune.structured.workflow import StructuredConfig, spaces_and_cost

    device = load_device(args.device)
    loaded = load_model(args.model)
    spaces, _ = spaces_and_cost(loaded.model, loaded.adapter, StructuredConfig().channel_step, True)
    cost, measured_model = latency_cost(loaded, spaces, device, scheme=args.scheme, threads=args.threads)
    n = len(spaces)
    named = {"dense": list(dense_arch(spaces))} | layouts(spaces, n)
    key = "decode_p50_ms@32" if loaded.is_decoder else f"latency_p50_ms@1x{ENCODER_TOKENS}"
    models = [None if name == "dense" else build(loaded, arch) for name, arch in named.items()]
    times = dict(zip(named, measure_rounds(loaded, device, args.threads, models, args.scheme, args.rounds)))
    dense_ms = statistics.median(times["dense"])
    rows = []
    for name, arch in named.items():
        meas = statistics.median(times[name])
        pred_ratio = cost(tuple(arch)) / cost(dense_arch(spaces))
        rows.append({"layout": name, "blocks_kept": sum(1 for a in arch if a != (0, 0)), "measured_ms": round(meas, 3),
                     "measured_each_round": [round(t, 3) for t in times[name]], "measured_ratio": round(meas / dense_ms, 3),
                     "predicted_ratio": round(pred_ratio, 3), "predicted_over_measured": round(pred_ratio / (meas / dense_ms), 3)})
    result = {"model": args.model, "device": device.name, "threads": args.threads, "scheme": args.scheme, "rounds": args.rounds,
              "metric": key, "latency_model": cost_to_dict(cost), "latency_model_measurements": measured_model, "layouts": rows,
              "within_15pct": all(abs(r["predicted_over_measured"] - 1) <= 0.15 for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# latency model check: {args.model}, {device.name}, {args.threads} threads, {args.scheme}", "",
             f"metric {key}, median of {args.rounds} alternating rounds", "",
             "| layout | blocks | measured ms | measured / dense | predicted / dense | predicted / measured |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['blocks_kept']} | {r['measured_ms']} | {r['measured_ratio']} | {r['predicted_ratio']} | "
              f"{r['predicted_over_measured']} |" for r in rows]
    lines += ["", f"all within ±15%: {'PASS' if result['within_15pct'] else 'FAIL'}"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
