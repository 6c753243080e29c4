"""Same-run speed-ups of ONNX graphs over their baselines (decode and prefill), over several rounds.

    flock /tmp/edgeprune-bench.lock python benchmarks/speedup.py \
        --pair structured-fp32 runs/fused/dense runs/fused/structured \
        --pair structured-int4 runs/fused/dense-int4 runs/fused/structured-int4 \
        --pair int4-vs-fp32 runs/fused/dense runs/fused/dense-int4 --rounds 4 --out bench-out/speedup

With ``--backend both`` every graph is timed in a plain ORT loop and in ORT GenAI's generator, and each pair is
reported per backend. Each round is one ``edgeprune.profile`` call over every distinct graph (each measured in its own fresh process,
2 threads, 128-token prompt, 32 decode tokens); the order of the graphs is reversed every other round so no graph
always runs first. Per pair and round: baseline / variant decode ms/token and TTFT (the speed-up). The medians
over rounds are the headline. Writes OUT.json and OUT.md.
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
    ap.add_argument("--pair", nargs=3, action="append", metavar=("LABEL", "BASELINE", "VARIANT"), required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--backend", choices=("ort", "genai", "both"), default="ort",
                    help="decode loop: a Python loop over an ORT session, ORT GenAI's generator, or both (pairs per backend)")
    ap.add_argument("--out", default="bench-out/speedup")
    args = ap.parse_args()

    paths = list(dict.fromkeys(p for _, base, variant in args.pair for p in (base, variant)))  # each graph once per round
    graphs = [("-".join(Path(p).resolve().parts[-2:]), p) for p in paths]
    name_of = {p: n for n, p in graphs}
    if len(name_of) != len(set(name_of.values())):
        raise SystemExit("two graphs share their last two path components; rename one folder")
    config = ProfileConfig(threads=(args.threads,), workload=Workload(prompt_lengths=(args.prompt,), decode_tokens=args.tokens, op_profile=False))
    device = config.device(load_device("this-host"))
    rounds = []
    for r in range(args.rounds):
        order = graphs if r % 2 == 0 else graphs[::-1]
        with tempfile.TemporaryDirectory() as tmp:
            report = profile([p for _, p in order], device, config.threads, Path(tmp) / "report", workload=config.workload,
                             names=[n for n, _ in order], backend=args.backend)
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
    backends = ("ort", "genai") if args.backend == "both" else (None,)  # with both, profile names rows "NAME (ort)" / "NAME (genai)"
    result["graphs"] = {f"{n} ({be})" if be else n: p for n, p in graphs for be in backends}
    for label, base, variant in args.pair:
        for be in backends:
            b, v = (f"{name_of[x]} ({be})" if be else name_of[x] for x in (base, variant))
            decode = [f[b]["decode_p50_ms"] / f[v]["decode_p50_ms"] for f in rounds]
            ttft = [f[b]["ttft_p50_ms"] / f[v]["ttft_p50_ms"] for f in rounds]
            result["pairs"][f"{label} ({be})" if be else label] = {
                "baseline": b, "variant": v, "decode_speedup": decode, "ttft_speedup": ttft,
                "decode_speedup_median": statistics.median(decode), "ttft_speedup_median": statistics.median(ttft)}
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
    lines += ["", "| pair | baseline → variant | decode speed-up per round | median | TTFT speed-up median |", "|---|---|---|---:|---:|"]
    for label, p in result["pairs"].items():
        lines.append(f"| {label} | {p['baseline']} → {p['variant']} | {', '.join(f'{x:.2f}×' for x in p['decode_speedup'])} | {p['decode_speedup_median']:.2f}× | "
                     f"{p['ttft_speedup_median']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
