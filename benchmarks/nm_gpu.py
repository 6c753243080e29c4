"""Does edgeprune's 2:4 run fast on a GPU's sparse tensor cores? Needs CUDA (a borrowed H100); CI never runs it.

    python benchmarks/nm_gpu.py [--model-dir out/smol-2of4] [--tokens 16,128,2048] [--out bench-out/nm_gpu]

1. Acceptance: edgeprune's 2:4 masks (``to_nm`` on random scores, and every linear of ``--model-dir``
   when given) convert with ``torch.sparse.to_sparse_semi_structured`` and convert back to the same weights.
2. Speed: ``F.linear`` with the semi-structured weight against dense fp16, at SmolLM2-135M's shapes and
   at larger ones, for each backend torch offers (cuSPARSELt, CUTLASS), called plainly, under
   ``torch.compile``, and, for cuSPARSELt, as one ``torch._cslt_sparse_mm`` on the pre-compressed
   weight with a searched algorithm (to separate per-call set-up from the kernel itself).

Timings are CUDA-event medians after warm-up. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.sparsity import is_nm, to_nm

SHAPES = {  # (out, in)
    "smollm2 q/o_proj": (576, 576),
    "smollm2 gate/up_proj": (1536, 576),
    "smollm2 down_proj": (576, 1536),
    "llama-8b q_proj": (4096, 4096),
    "llama-8b up_proj": (14336, 4096),
    "llama-8b down_proj": (4096, 14336),
}


def _time(fn, warmup: int = 10, runs: int = 50) -> float:
    """Median milliseconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _nm_weight(out_f: int, in_f: int, device) -> torch.Tensor:
    w = torch.randn(out_f, in_f, device=device, dtype=torch.float16)
    return w * to_nm(w.abs().float(), 2, 4).to(w.dtype)


def acceptance(model_dir: str | None, device) -> dict:
    from torch.sparse import to_sparse_semi_structured

    checked, failures = [], []
    weights = {name: _nm_weight(o, i, device) for name, (o, i) in SHAPES.items()}
    if model_dir:
        from edgeprune.models.loading import load_model

        loaded = load_model(model_dir, device="cpu")
        weights |= {name: lin.weight.detach().to(device, torch.float16) for name, lin in loaded.adapter.prunable_linears(loaded.model).items()}
    for name, w in weights.items():
        if not is_nm(w, 2, 4):
            failures.append({"layer": name, "error": "not 2:4 along the input dimension"})
            continue
        try:
            sparse = to_sparse_semi_structured(w)
            same = torch.equal(sparse.to_dense(), w)
            checked.append(name)
            if not same:
                failures.append({"layer": name, "error": "to_dense() differs from the weight"})
        except Exception as exc:  # the point is to record what torch says
            failures.append({"layer": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return {"accepted": len(checked), "failures": failures}


def speed(tokens: list[int], device) -> list[dict]:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    rows = []
    for name, (out_f, in_f) in SHAPES.items():
        w = _nm_weight(out_f, in_f, device)
        for t in tokens:
            x = torch.randn(t, in_f, device=device, dtype=torch.float16)
            row = {"shape": name, "out": out_f, "in": in_f, "tokens": t, "dense_ms": _time(lambda: F.linear(x, w))}
            for backend, force_cutlass in (("cusparselt", False), ("cutlass", True)):
                SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
                try:
                    ws = to_sparse_semi_structured(w)
                    row[f"{backend}_ms"] = _time(lambda: F.linear(x, ws))
                    compiled = torch.compile(lambda a: F.linear(a, ws))
                    row[f"{backend}_compiled_ms"] = _time(lambda: compiled(x))
                except Exception as exc:
                    row[f"{backend}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            SparseSemiStructuredTensor._FORCE_CUTLASS = False
            try:  # the kernel alone: weight compressed once, algorithm searched once
                compressed = torch._cslt_compress(w)
                alg = torch._cslt_search_alg_id(compressed, x.t().contiguous())
                xt = x.t().contiguous()
                row["cslt_direct_ms"] = _time(lambda: torch._cslt_sparse_mm(compressed, xt, alg_id=alg))
            except Exception as exc:
                row["cslt_direct_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def to_markdown(result: dict) -> str:
    lines = [f"# 2:4 on {result['gpu']} (torch {result['torch']})\n",
             f"Acceptance: {result['acceptance']['accepted']} weights converted; failures: {result['acceptance']['failures'] or 'none'}\n",
             "| shape | tokens | dense ms | cuSPARSELt ms | compiled | CUTLASS ms | compiled | _cslt_sparse_mm ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["speed"]:
        cell = lambda k: f"{r[k]:.4f}" if k in r else r.get(k.replace("_compiled_ms", "_error").replace("_ms", "_error"), "–")[:40]  # noqa: E731
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['dense_ms']:.4f} | {cell('cusparselt_ms')} | {cell('cusparselt_compiled_ms')} | "
                     f"{cell('cutlass_ms')} | {cell('cutlass_compiled_ms')} | {cell('cslt_direct_ms')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a 2:4-pruned model folder whose linears are checked too")
    parser.add_argument("--tokens", default="16,128,2048")
    parser.add_argument("--out", default="bench-out/nm_gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU (semi-structured sparse kernels); run it on the borrowed H100")
    device = torch.device("cuda")
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
        "acceptance": acceptance(args.model_dir, device),
        "speed": speed([int(t) for t in args.tokens.split(",")], device),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
