"""Decode and prefill speed of structured-pruned graphs against their dense counterparts, over several rounds.

    flock /tmp/edgeprune-bench.lock python benchmarks/structured_speed.py \
        --pair fp32 runs/structured-int4/01-dense-export runs/structured-int4/04-export \
        --pair int4 runs/dense-int4/03-quantize runs/structured-int4/05-quantize --rounds 4 --out bench-out/structured_speed

Each round is one ``edgeprune.profile`` call over every graph (each measured in its own fresh process, 2 threads,
128-token prompt, 32 decode tokens); the order of the graphs is reversed every other round so neither side always
runs first. Per pair and round: dense / structured decode ms/token and TTFT (the speed-up). The medians over
rounds are the headline. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from edgeprune.profiling import ProfileConfig, Workload, profile
from edgeprune.profiling.devices import load_device
from edgeprune.runtime import cpu_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=3, action="append", metavar=("LABEL", "DENSE", "STRUCTURED"), required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default="bench-out/structured_speed")
    args = ap.parse_args()

    graphs = [(f"{label}-{side}", path) for label, dense, structured in args.pair for side, path in (("dense", dense), ("structured", structured))]
    config = ProfileConfig(threads=(args.threads,), workload=Workload(prompt_lengths=(args.prompt,), decode_tokens=args.tokens, op_profile=False))
    device = config.device(load_device("this-host"))
    rounds = []
    for r in range(args.rounds):
        order = graphs if r % 2 == 0 else graphs[::-1]
        with tempfile.TemporaryDirectory() as tmp:
            report = profile([p for _, p in order], device, config.threads, Path(tmp) / "report", workload=config.workload,
                             names=[n for n, _ in order])
        figures = {}
        for v in report.variants:
            run = v.runs[0]
            if not run.ok:
                raise SystemExit(f"{v.name} failed: {run.reason}")
            d = run.decoder[0]
            figures[v.name] = {"decode_p50_ms": d.decode.p50, "ttft_p50_ms": d.prefill.p50, "peak_rss_mb": run.memory.peak_mb}
        rounds.append(figures)
        print(f"round {r + 1}: " + ", ".join(f"{n} {f['decode_p50_ms']:.2f} ms/token" for n, f in figures.items()), flush=True)

    result = {"host": cpu_name(), "threads": args.threads, "prompt": args.prompt, "decode_tokens": args.tokens,
              "graphs": dict(graphs), "rounds": rounds, "pairs": {}}
    for label, _, _ in args.pair:
        decode = [f[f"{label}-dense"]["decode_p50_ms"] / f[f"{label}-structured"]["decode_p50_ms"] for f in rounds]
        ttft = [f[f"{label}-dense"]["ttft_p50_ms"] / f[f"{label}-structured"]["ttft_p50_ms"] for f in rounds]
        result["pairs"][label] = {"decode_speedup": decode, "ttft_speedup": ttft, "decode_speedup_median": statistics.median(decode),
                                  "ttft_speedup_median": statistics.median(ttft)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"{result['host']}, {result['threads']} threads, {result['prompt']}-token prompt, {result['decode_tokens']} decode tokens", "",
             "| round | " + " | ".join(f"{n} decode / TTFT ms" for n in result["graphs"]) + " |", "|---|" + "---|" * len(result["graphs"])]
    for i, f in enumerate(result["rounds"], 1):
        lines.append(f"| {i} | " + " | ".join(f"{f[n]['decode_p50_ms']:.2f} / {f[n]['ttft_p50_ms']:.0f}" for n in result["graphs"]) + " |")
    lines += ["", "| pair | decode speed-up per round | median | TTFT speed-up median |", "|---|---|---:|---:|"]
    for label, p in result["pairs"].items():
        lines.append(f"| {label} | {', '.join(f'{x:.2f}×' for x in p['decode_speedup'])} | {p['decode_speedup_median']:.2f}× | "
                     f"{p['ttft_speedup_median']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
