"""Does `edgeprune profile` measure decode speed right? Its decode ms/token (fresh subprocess, KV cache) against a
plain ONNX Runtime greedy loop timed here, in the same run (plain loop before and after, to see drift on a shared CPU).

    python benchmarks/profile_agreement.py runs/dense-onnx runs/2of4-onnx runs/int4-onnx --threads 2 --prompt 128 --tokens 32

All graphs are profiled by one `profile` call (its comparison report is kept); each graph's plain loop runs
before and after it. Writes bench-out/profile_agreement-<names>.json and .md; exit 1 if any ratio is off
by more than --tolerance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeprune.io import write_json  # noqa: E402
from edgeprune.profiling import DeviceProfile, Workload, profile  # noqa: E402


def plain_decode(graph: Path, threads: int, prompt: int, tokens: int, sequences: int, warmup: int) -> list[float]:
    """ms per decode step of a greedy loop over the merged graph, written independently of edgeprune.profiling."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(1)

    def run(ids, past_len, past):
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, past_len + ids.shape[1]), np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(past_len, past_len + ids.shape[1], dtype=np.int64)[None]
        out = dict(zip(outputs, sess.run(None, feeds)))
        return out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64), {n: out[n.replace("past_key_values.", "present.")] for n in past_names}

    def sequence(steps):
        empty = {n: np.zeros((1, inputs[n].shape[1], 0, inputs[n].shape[3]), np.float32) for n in past_names}
        nxt, past = run(rng.integers(0, 100, (1, prompt), dtype=np.int64), 0, empty)
        times = []
        for t in range(steps):
            start = time.perf_counter()
            nxt, past = run(nxt, prompt + t, past)
            times.append((time.perf_counter() - start) * 1000)
        return times

    sequence(warmup)
    return [ms for _ in range(sequences) for ms in sequence(tokens)]


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values), "p50": statistics.median(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="+", help="export folders (model.onnx) or .onnx files; all profiled in one `profile` call")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sequences", type=int, default=2, help="decode sequences of --tokens steps in each measurement")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=0.15, help="largest |profile/plain - 1| that passes")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()

    graphs = [Path(o) if Path(o).suffix == ".onnx" else Path(o) / "model.onnx" for o in args.onnx]
    name = "-".join(g.parent.name for g in graphs)[:80] + f"-t{args.threads}"
    before = [plain_decode(g, args.threads, args.prompt, args.tokens, args.sequences, args.warmup) for g in graphs]
    device = DeviceProfile(name="agreement", intra_op_threads=args.threads, warmup=args.warmup, runs=args.tokens * args.sequences)
    out = Path(args.out)
    report_dir = out / f"profile_agreement-{name}-report"
    report = profile(args.onnx, device, out=report_dir, overwrite=True,
                     workload=Workload(prompt_lengths=(args.prompt,), decode_tokens=args.tokens, op_profile=False))
    after = [plain_decode(g, args.threads, args.prompt, args.tokens, args.sequences, args.warmup) for g in graphs]
    rows, ok = [], True
    for graph, variant, b, a in zip(graphs, report.variants, before, after):
        run = variant.runs[0]
        if not run.ok:
            print(f"profile failed for {graph}: {run.reason}", file=sys.stderr)
            return 1
        dec = run.decoder[0]
        plain = _summary(b + a)
        row = {"graph": str(graph), "profile": {"n": dec.decode.count, "mean": dec.decode.mean, "p50": dec.decode.p50, "sd": dec.decode.sd,
                                                "ttft_p50_ms": dec.prefill.p50, "peak_rss_mb": run.memory.peak_mb},
               "plain_before": _summary(b), "plain_after": _summary(a), "plain": plain,
               "ratio_mean": dec.decode.mean / plain["mean"], "ratio_p50": dec.decode.p50 / plain["p50"]}
        row["agrees"] = abs(row["ratio_p50"] - 1) <= args.tolerance
        ok &= row["agrees"]
        rows.append(row)
    result = {"threads": args.threads, "prompt_tokens": args.prompt, "decode_tokens": args.tokens, "tolerance": args.tolerance,
              "host": {"cpu": report.host["cpu"], "usable_cores": report.host["usable_cores"],
                       "load_average_start": report.host.get("load_average_start"), "load_average_end": list(os.getloadavg())},
              "report": str(report_dir), "variants": rows, "all_agree": ok}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"profile_agreement-{name}.json", result)
    md = [f"# profile_agreement ({args.threads} thread(s), {args.prompt}-token prompt, {args.tokens} tokens, tolerance {args.tolerance:.0%})\n",
          f"Host: {report.host['cpu']}, cores {report.host['usable_cores']}, load average at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. Comparison report: `{report_dir}/report.md`.\n",
          "| graph | profile p50 ms/token | plain loop p50 (before / after) | profile / plain p50 | mean ratio | agrees |",
          "|---|---:|---|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['graph']} | {r['profile']['p50']:.3f} | {r['plain']['p50']:.3f} ({r['plain_before']['p50']:.3f} / "
                  f"{r['plain_after']['p50']:.3f}) | {r['ratio_p50']:.3f} | {r['ratio_mean']:.3f} | {'yes' if r['agrees'] else 'NO'} |")
    (out / f"profile_agreement-{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
