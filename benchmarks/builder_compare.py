"""Perplexity and size of ORT GenAI model-builder folders next to edgeprune's own, on `edgeprune eval`'s windows.

    flock /tmp/edgeprune-bench.lock .venv/bin/python benchmarks/builder_compare.py FP32 INT4 BUILDER/default BUILDER/kql \
        --text pydoc --text /usr/share/common-licenses/GPL-3 --out bench-out/builder

Folders: `edgeprune export` / `edgeprune quantize` output, or the builder's (benchmarks/builder_reference.sh makes them).
`edgeprune eval` stops on a builder folder: the builder declares the KV caches' head size as a symbol ('kv_cache_dim'),
and edgeprune's ORT decoder takes the graph's number there. So every folder runs through the one plain ORT loop below:
the windows of `edgeprune eval` (edgeprune.data: same text split, the folder's own tokenizer, --seqlen windows), each
window one prefill from an empty cache, head size from genai_config.json, the NLL summed as edgeprune.onnx.evaluate
does; on an edgeprune folder the figure is `edgeprune eval`'s. Token ids are checked equal across folders.
Writes OUT.json and OUT.md: size on disk (graph + external data), graph inputs, nodes by op type, perplexity per text.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

ONNX_FILE = "model.onnx"


def size_on_disk(folder: Path) -> int:
    """Bytes of the graph file plus the external-data files its initializers name."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(folder / ONNX_FILE), load_external_data=False)
    files = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    return (folder / ONNX_FILE).stat().st_size + sum((folder / f).stat().st_size for f in files)


def op_counts(folder: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(folder / ONNX_FILE), load_external_data=False)
    counts = collections.Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
    return dict(counts.most_common())


def head_size(folder: Path, sess) -> int:
    past = next(i for i in sess.get_inputs() if i.name.startswith("past_key_values."))
    if isinstance(past.shape[3], int):
        return past.shape[3]
    return int(json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"])


def perplexity(sess, head_dim: int, windows) -> float:
    """exp(mean next-token NLL) over all positions of all windows, each window one prefill from an empty cache."""
    import torch
    import torch.nn.functional as F

    inputs = {i.name: i for i in sess.get_inputs()}
    past = {name: np.zeros((1, arg.shape[1], 0, head_dim), np.float16 if "float16" in arg.type else np.float32)
            for name, arg in inputs.items() if name.startswith("past_key_values.")}
    nll, count = 0.0, 0
    for window in windows:
        ids = window.numpy()[None].astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        logits = sess.run(["logits"], feeds)[0]
        logits = torch.from_numpy(logits[0, :-1]).float()
        nll += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        count += window.numel() - 1
    return float(torch.exp(torch.tensor(nll / count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--text", action="append", help="pydoc (its held-out split) or a text file; repeatable (default: pydoc)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-out/builder")
    args = ap.parse_args()
    texts = args.text or ["pydoc"]

    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from edgeprune.data import eval_windows, load_text

    torch.set_num_threads(args.threads)
    bodies = {text: load_text(text, "eval") for text in texts}
    first_windows: dict[str, torch.Tensor] = {}
    rows = []
    for folder in args.folders:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        row = {"folder": str(folder), "bytes": size_on_disk(folder), "inputs": [i.name for i in sess.get_inputs()
               if not i.name.startswith("past_key_values.")], "ops": op_counts(folder), "texts": {}}
        for text, body in bodies.items():
            windows = eval_windows(tokenizer, body, args.seqlen)
            same = first_windows.setdefault(text, windows)
            row["texts"][text] = {"perplexity": perplexity(sess, head_size(folder, sess), windows), "tokens": int(windows.numel()),
                                  "same_ids_as_first": same.shape == windows.shape and bool(torch.equal(same, windows))}
            print(f"{folder}: {text}: {row['texts'][text]['perplexity']:.4f}", flush=True)
        rows.append(row)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"seqlen": args.seqlen, "threads": args.threads, "ort_version": ort.__version__, "folders": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    head = "| folder | size (MiB) | " + " | ".join(f"perplexity `{t}` ({rows[0]['texts'][t]['tokens']:,} tokens)" for t in texts) + " |"
    lines = [head, "| --- | ---: |" + " ---: |" * len(texts)]
    for row in rows:
        cells = [f"{row['texts'][t]['perplexity']:.4f}" + ("" if row["texts"][t]["same_ids_as_first"] else " (other ids)")
                 for t in texts]
        lines.append(f"| `{row['folder']}` | {row['bytes'] / 2**20:.1f} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
