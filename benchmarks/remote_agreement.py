"""Does profiling over ssh measure what local profiling measures? One `profile` call with where="both" (the CLI's
--also-local) through a private loopback sshd, so "local" and "remote" are the same CPU: decode ms/token of the same
graph measured both ways, side by side in one report.

    flock /tmp/edgeprune-bench.lock python benchmarks/remote_agreement.py runs/dense-int4/03-quantize --threads 2 --prompt 128 --tokens 32 --rounds 3

The loopback sshd (tests/sshd.py: throw-away keys, its own known_hosts) and the device's remote_dir live in a temporary
folder that is removed afterwards. With --remote ssh://user@host (plus --identity / --known-hosts) a real device is
profiled instead; the ratio is then that device's speed against this host's, not an agreement check.
Each of --rounds rounds is one such report (local, then remote, back to back; the model is sent in the first round and
reused from the device's cache after). Writes bench-out/remote_agreement-<name>.json and .md next to the report folders;
exit 1 if the median over rounds of |remote/local - 1| (mean decode ms/token, what the report calls decode ms/tok) is
more than --tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from edgeprune.io import write_json  # noqa: E402
from edgeprune.profiling import DeviceProfile, SshOptions, Workload, profile  # noqa: E402


def _decode(run) -> dict:
    d = run.decoder[0]
    return {"decode_p50_ms": d.decode.p50, "decode_mean_ms": d.decode.mean, "decode_sd_ms": d.decode.sd, "n": d.decode.count,
            "ttft_p50_ms": d.prefill.p50, "decode_tok_s": d.decode_tokens_per_s, "peak_rss_mb": run.memory.peak_mb,
            "pid": run.pid, "cores": run.cores}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", help="export folder (model.onnx) or .onnx file of a decoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--tolerance", type=float, default=0.15, help="largest |remote/local - 1| of decode ms/token that passes")
    ap.add_argument("--remote", help="a real device, ssh://user@host[:port] (default: a loopback sshd on this host)")
    ap.add_argument("--identity", help="--remote: ssh private key")
    ap.add_argument("--known-hosts", help="--remote: known_hosts file (default: ssh's)")
    ap.add_argument("--rounds", type=int, default=1, help="reports to take, each with both the local and the remote run")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()

    name = Path(args.onnx).name + f"-t{args.threads}"
    out = Path(args.out)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-remote-bench-") as tmp, contextlib.ExitStack() as stack:
        if args.remote:
            remote = dict(remote=args.remote, identity=args.identity)
            ssh = SshOptions(known_hosts=args.known_hosts)
            via = args.remote
        else:
            from sshd import LoopbackSshd

            sshd = stack.enter_context(LoopbackSshd(Path(tmp) / "sshd"))
            remote = dict(remote=sshd.url, identity=str(sshd.key), remote_python=sys.executable, remote_dir=str(Path(tmp) / "device"))
            ssh = SshOptions(known_hosts=str(sshd.known_hosts))
            via = "loopback sshd on 127.0.0.1 (same CPU)"
        device = DeviceProfile(name="remote-agreement", intra_op_threads=args.threads, warmup=args.warmup, runs=args.runs, **remote)
        for k in range(args.rounds):
            report_dir = out / f"remote_agreement-{name}-r{k + 1}"
            report = profile([args.onnx], device, out=report_dir, overwrite=True, where="both", ssh=ssh,
                             workload=Workload(prompt_lengths=(args.prompt,), decode_tokens=args.tokens),
                             progress=lambda line: print(line, file=sys.stderr))
            for v in report.variants:
                if not v.runs[0].ok:
                    print(f"{v.name} failed: {v.runs[0].reason}", file=sys.stderr)
                    return 1
            local, remote_run = (_decode(v.runs[0]) for v in report.variants)
            rounds.append({"report": str(report_dir), "local": local, "remote": remote_run,
                           "ratio_mean": remote_run["decode_mean_ms"] / local["decode_mean_ms"],
                           "ratio_p50": remote_run["decode_p50_ms"] / local["decode_p50_ms"],
                           "load_average": [report.host["load_average_start"], report.host["load_average_end"]]})
    ratio = statistics.median(r["ratio_mean"] for r in rounds)
    agrees = abs(ratio - 1) <= args.tolerance
    h, rh = report.host, report.variants[1].remote
    result = {"graph": str(args.onnx), "threads": args.threads, "prompt_tokens": args.prompt, "decode_tokens": args.tokens,
              "warmup": args.warmup, "runs": args.runs, "tolerance": args.tolerance, "via": via,
              "host": {"cpu": h["cpu"], "usable_cores": h["usable_cores"], "memory_mb": h["memory_mb"]},
              "remote_host": {k: rh.get(k) for k in ("target", "cpu", "usable_cores", "memory_mb", "system", "python", "onnxruntime")},
              "rounds": rounds, "median_ratio_mean": ratio, "agrees": agrees}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"remote_agreement-{name}.json", result)
    md = [f"# remote_agreement: {args.onnx}, {args.threads} thread(s), {args.prompt}-token prompt, {args.tokens} decode tokens\n",
          f"Local: {h['cpu']}, cores {h['usable_cores']}. Remote: {via}: {rh.get('cpu')}, cores {rh.get('usable_cores')}. "
          f"Each round is one report (`{out}/remote_agreement-{name}-rN/report.md`) with both runs.\n",
          "| round | where | decode ms/token mean | p50 | sd | n | TTFT p50 ms | peak RSS MiB | remote / local (mean, p50) | load average start → end |",
          "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for k, r in enumerate(rounds, 1):
        for label, m in (("local", r["local"]), ("remote", r["remote"])):
            ratios = f"{r['ratio_mean']:.3f}, {r['ratio_p50']:.3f}" if label == "remote" else ""
            load = " → ".join(f"{x[0]:.2f}" for x in r["load_average"]) if label == "local" else ""
            md.append(f"| {k} | {label} | {m['decode_mean_ms']:.2f} | {m['decode_p50_ms']:.2f} | {m['decode_sd_ms']:.2f} | {m['n']} | "
                      f"{m['ttft_p50_ms']:.1f} | {m['peak_rss_mb']:.0f} | {ratios} | {load} |")
    md.append(f"\nMedian remote / local decode ms/token (mean) over {len(rounds)} round(s): {ratio:.3f}; within {args.tolerance:.0%}: "
              f"{'yes' if agrees else 'NO'}")
    (out / f"remote_agreement-{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
