"""Does `edgeprune profile` measure decode speed right? Its decode ms/token (fresh subprocess, KV cache) against a
plain ONNX Runtime greedy loop timed here, in the same run (plain loop before and after, to see drift on a shared CPU).

    python benchmarks/profile_agreement.py bench-out/onnx_int4-smollm2-135m --threads 1 --prompt 128 --tokens 32

Writes bench-out/profile_agreement-<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
    ap.add_argument("onnx", help="export folder (model.onnx) or a .onnx file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sequences", type=int, default=2, help="decode sequences of --tokens steps in each measurement")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()

    src = Path(args.onnx)
    graph = src if src.suffix == ".onnx" else src / "model.onnx"
    name = f"{graph.parent.name}-{graph.stem}-t{args.threads}"
    before = plain_decode(graph, args.threads, args.prompt, args.tokens, args.sequences, args.warmup)
    device = DeviceProfile(name="agreement", intra_op_threads=args.threads, warmup=args.warmup, runs=args.tokens * args.sequences)
    with tempfile.TemporaryDirectory() as tmp:
        report = profile([src], device, out=Path(tmp) / "r", workload=Workload(prompt_lengths=(args.prompt,), decode_tokens=args.tokens,
                                                                                 op_profile=False))
    after = plain_decode(graph, args.threads, args.prompt, args.tokens, args.sequences, args.warmup)
    run = report.variants[0].runs[0]
    if not run.ok:
        print(f"profile failed: {run.reason}", file=sys.stderr)
        return 1
    dec = run.decoder[0]
    plain = _summary(before + after)
    result = {
        "graph": str(graph), "threads": args.threads, "prompt_tokens": args.prompt, "decode_tokens": args.tokens,
        "host": {"cpu": report.host["cpu"], "usable_cores": report.host["usable_cores"], "load_average": list(os.getloadavg())},
        "profile": {"n": dec.decode.count, "mean": dec.decode.mean, "p50": dec.decode.p50, "sd": dec.decode.sd,
                    "ttft_p50_ms": dec.prefill.p50, "peak_rss_mb": run.memory.peak_mb},
        "plain_before": _summary(before), "plain_after": _summary(after), "plain": plain,
        "ratio_mean": dec.decode.mean / plain["mean"], "ratio_p50": dec.decode.p50 / plain["p50"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"profile_agreement-{name}.json", result)
    md = [f"# profile_agreement: {graph} ({args.threads} thread(s), {args.prompt}-token prompt, {args.tokens} tokens)\n",
          f"Host: {report.host['cpu']}, cores {report.host['usable_cores']}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(shared machine; other benchmarks were running).\n",
          "| measurement | n | mean ms/token | p50 ms/token | sd |", "|---|---|---|---|---|"]
    for label, s in (("edgeprune profile (subprocess)", result["profile"]), ("plain ORT loop, before", result["plain_before"]),
                     ("plain ORT loop, after", result["plain_after"]), ("plain ORT loop, both", plain)):
        md.append(f"| {label} | {s['n']} | {s['mean']:.3f} | {s['p50']:.3f} | {s['sd']:.3f} |")
    md.append(f"\nprofile / plain: mean {result['ratio_mean']:.3f}, p50 {result['ratio_p50']:.3f}\n")
    (out / f"profile_agreement-{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
