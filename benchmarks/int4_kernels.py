"""What ONNX Runtime's kernels do to an int4 decoder graph: the three findings behind BENCHMARKS §9.

    flock /tmp/edgeprune-bench.lock python benchmarks/int4_kernels.py INT4 [BUILDER] --out bench-out/int4-kernels

1. Row phase: the prompt logits of one prompt with k pad tokens in front (left padding, positions from the mask)
   against the prompt alone, k = 0..9. With int8 activations (MatMulNBits accuracy_level 4) a row's rounding depends
   on its index modulo 4; at fp32 compute (level 0) or in a float graph every k gives the same logits.
2. GroupQueryAttention's own rotary (``do_rotary=1`` with ``position_ids``), on a hand-made graph: a left-padded
   prompt row's attention output and cached keys against separate ``RotaryEmbedding`` nodes (what edgeprune writes).
3. Where decode time goes: ORT's op profile over 64 decode steps after a 128-token prompt, 2 threads, per op type,
   for each folder given.

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "A list in Python is a mutable sequence"


def row_phase(folder: Path, pads: int = 10) -> list[float]:
    from transformers import AutoTokenizer

    from edgeprune.onnx.session import OrtDecoder, session

    tok = AutoTokenizer.from_pretrained(folder)
    ids = np.array([tok(PROMPT, add_special_tokens=False).input_ids], np.int64)
    decoder = OrtDecoder(session(folder / "model.onnx"))
    alone, _, _ = decoder.step(ids, np.ones_like(ids), decoder.empty_past(1))
    out = []
    for k in range(pads):
        padded = np.concatenate([np.full((1, k), tok.eos_token_id, np.int64), ids], 1)
        mask = np.concatenate([np.zeros((1, k), np.int64), np.ones_like(ids)], 1)
        logits, _, _ = decoder.step(padded, mask, decoder.empty_past(1))  # positions from the mask
        out.append(float(np.abs(logits[0, k:] - alone[0]).max()))
    return out


def gqa_rotary_cache() -> dict:
    """Hand-made graph: q/k/v for 2 rows (the second left-padded by 3), RoPE by GQA itself vs RotaryEmbedding nodes."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    batch, seq, q_heads, kv_heads, dim, pad = 2, 5, 4, 2, 16, 3
    angles = np.outer(np.arange(64), 1.0 / 10000 ** (np.arange(0, dim, 2) / dim))
    inits = [nh.from_array(np.cos(angles).astype(np.float32), "cos"), nh.from_array(np.sin(angles).astype(np.float32), "sin")]
    shapes = {"q": q_heads * dim, "k": kv_heads * dim, "v": kv_heads * dim}
    inputs = [h.make_tensor_value_info(n, T.FLOAT, [batch, seq, w]) for n, w in shapes.items()]
    inputs += [h.make_tensor_value_info("pk", T.FLOAT, [batch, kv_heads, 0, dim]), h.make_tensor_value_info("pv", T.FLOAT, [batch, kv_heads, 0, dim]),
               h.make_tensor_value_info("seqlens", T.INT32, [batch]), h.make_tensor_value_info("total", T.INT32, []),
               h.make_tensor_value_info("pos", T.INT64, [batch, seq]), h.make_tensor_value_info("bias", T.FLOAT, [batch, 1, seq, seq])]
    attrs = dict(domain="com.microsoft", num_heads=q_heads, kv_num_heads=kv_heads)

    def run(nodes, feeds):
        graph = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("o", "ck", "cv")], inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), bool)
    mask[1, :pad] = False
    feeds = {n: rng.standard_normal((batch, seq, w)).astype(np.float32) for n, w in shapes.items()}
    feeds |= {"pk": np.zeros((batch, kv_heads, 0, dim), np.float32), "pv": np.zeros((batch, kv_heads, 0, dim), np.float32),
              "seqlens": np.full(batch, seq - 1, np.int32), "total": np.array(seq, np.int32),
              "pos": np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int64),
              "bias": np.where(mask, 0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :].repeat(seq, 2)}
    separate = run([h.make_node("RotaryEmbedding", ["q", "pos", "cos", "sin"], ["qr"], domain="com.microsoft", num_heads=q_heads),
                    h.make_node("RotaryEmbedding", ["k", "pos", "cos", "sin"], ["kr"], domain="com.microsoft", num_heads=kv_heads),
                    h.make_node("GroupQueryAttention", ["qr", "kr", "v", "pk", "pv", "seqlens", "total", "", "", "", "bias"],
                                ["o", "ck", "cv"], **attrs)], feeds)
    inside = run([h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens", "total", "cos", "sin", "pos", "bias"],
                              ["o", "ck", "cv"], do_rotary=1, **attrs)], feeds)
    diff = lambda i, row: float(np.abs(separate[i][row] - inside[i][row])[..., pad if row else 0:, :].max())  # noqa: E731
    return {"unpadded_row": {"output": diff(0, 0), "cached_keys": diff(1, 0)},
            "left_padded_row_real_tokens": {"output": float(np.abs(separate[0][1, pad:] - inside[0][1, pad:]).max()), "cached_keys": diff(1, 1)}}


def decode_ops(folder: Path, prompt: int = 128, steps: int = 64, threads: int = 2) -> dict:
    import onnxruntime as ort

    from edgeprune.onnx.session import OrtDecoder

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.enable_profiling, options.profile_file_prefix = threads, True, os.path.join(tmp, "p")
        sess = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        decoder = OrtDecoder(sess)
        ids = np.random.default_rng(0).integers(100, 1000, (1, prompt)).astype(np.int64)
        mask = np.ones_like(ids)
        logits, past, _ = decoder.step(ids, mask, decoder.empty_past(1))
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones_like(nxt)], 1)
            logits, past, _ = decoder.step(nxt, mask, past)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][1:]  # decode steps only
    start = runs[0]["ts"]
    time_by, count_by = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            time_by[e["args"]["op_name"]] += e["dur"]
            count_by[e["args"]["op_name"]] += 1
    n = len(runs)
    return {"decode_ms_per_token": sum(r["dur"] for r in runs) / n / 1e3, "kernels_ms_per_token": sum(time_by.values()) / n / 1e3,
            "ops": {op: {"ms_per_token": t / n / 1e3, "nodes_per_token": count_by[op] / n} for op, t in time_by.most_common()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="decoder folders; the first also gets the row-phase check")
    ap.add_argument("--out", default="bench-out/int4-kernels")
    args = ap.parse_args()
    result = {"row_phase": {"folder": str(args.folders[0]), "max_abs_logit_diff_by_pads": row_phase(args.folders[0])},
              "gqa_rotary_cache": gqa_rotary_cache(), "decode_ops": {str(f): decode_ops(f) for f in args.folders}}
    lines = [f"Row phase (`{args.folders[0]}`): max |Δ logit| by left-pad count", "",
             "| pads | " + " | ".join(str(k) for k in range(len(result["row_phase"]["max_abs_logit_diff_by_pads"]))) + " |",
             "|---|" + "---:|" * len(result["row_phase"]["max_abs_logit_diff_by_pads"]),
             "| Δ | " + " | ".join(f"{d:.2g}" for d in result["row_phase"]["max_abs_logit_diff_by_pads"]) + " |", "",
             "GQA do_rotary + position_ids vs RotaryEmbedding nodes (max |diff|): " + json.dumps(result["gqa_rotary_cache"]), ""]
    for folder, ops in result["decode_ops"].items():
        lines += [f"Decode op profile `{folder}`: {ops['decode_ms_per_token']:.2f} ms/token, kernels {ops['kernels_ms_per_token']:.2f}", "",
                  "| op | ms/token | nodes |", "|---|---:|---:|"]
        lines += [f"| {op} | {v['ms_per_token']:.3f} | {v['nodes_per_token']:.0f} |" for op, v in list(ops["ops"].items())[:10]] + [""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
