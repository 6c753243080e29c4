"""Method × sparsity table: held-out perplexity, attention-approximation error, pruning time.

    python benchmarks/pruning_quality.py --model smollm2-135m \
        --methods magnitude,wanda,sparsegpt,attention --sparsities 0.5,2:4 \
        --eval-text pydoc --eval-text /usr/share/common-licenses/GPL-3 --out bench-out/pruning_quality

A method may carry options for ablations: ``attention[steps=0]``,
``attention[others=sequential;refit_qk=false]``, or ``wanda[permute=true]`` (N:M
channel permutation before pruning). Writes ``OUT.json`` and ``OUT.md``.
Perplexity uses non-overlapping 512-token windows of each text; the per-layer
attention error applies every model's W_Q/W_K to the *dense* model's hidden
states on held-out pydoc text, so layers are compared on identical inputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import time
from pathlib import Path

import torch

from edgeprune.data import CalibConfig, calibration_batch, eval_windows, load_text
from edgeprune.evaluation import attention_errors, perplexity
from edgeprune.models.loading import load_model
from edgeprune.pruning import make_pruner, prune_model
from edgeprune.sparsity import parse_sparsity

_RUN = re.compile(r"^(\w+)(?:\[(.*)\])?$")


def parse_run(text: str) -> tuple[str, dict]:
    match = _RUN.match(text.strip())
    if not match:
        raise SystemExit(f"cannot read method '{text}': write NAME or NAME[key=value;key=value]")
    options = {}
    for item in filter(None, (match.group(2) or "").split(";")):
        key, value = item.split("=", 1)
        options[key] = json.loads(value) if value not in ("dense-target", "sequential", "wanda", "sigmoid", "ste") else value
    return match.group(1), options


def text_label(source: str) -> str:
    return "pydoc-heldout" if source == "pydoc" else Path(source).name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,attention")
    ap.add_argument("--sparsities", default="0.5,2:4")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-text", action="append", default=None, help="pydoc (held-out split) or a text file; repeatable")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default="bench-out/pruning_quality")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_model(args.model)
    tok = base.tokenizer
    calib_cfg = CalibConfig(samples=args.samples, seqlen=args.seqlen)
    calib = calibration_batch(tok, calib_cfg)
    texts = args.eval_text or ["pydoc"]
    windows = {text_label(t): eval_windows(tok, load_text(t, "eval"), 512, args.max_windows) for t in texts}
    probe = eval_windows(tok, load_text("pydoc", "eval"), 512, 2)

    def measure(model) -> dict:
        return {label: round(perplexity(model, w), 3) for label, w in windows.items()}

    results = {
        "model": args.model,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads()},
        "calibration": {"source": calib_cfg.source, "samples": args.samples, "seqlen": args.seqlen},
        "eval_tokens": {label: int(w.numel()) for label, w in windows.items()},
        "dense": {"perplexity": measure(base.model)},
        "runs": [],
    }
    print("dense", results["dense"], flush=True)
    for sparsity in args.sparsities.split(","):
        for run in args.methods.split(","):
            method, options = parse_run(run)
            permute = bool(options.pop("permute", False))
            model = copy.deepcopy(base.model)
            pruner = make_pruner(method, options)
            start = time.perf_counter()
            report = prune_model(model, base.adapter, pruner, parse_sparsity(sparsity), calib, permute=permute)
            seconds = time.perf_counter() - start
            layer_errors = attention_errors(model, base.model, base.adapter, probe)
            row = {
                "method": run,
                "sparsity": sparsity,
                "seconds": round(seconds, 1),
                "perplexity": measure(model),
                "attention_error_heldout": [round(e, 5) for e in layer_errors],
                "attention_error_heldout_mean": round(sum(layer_errors) / len(layer_errors), 5),
                "attention_error_calib": [round(e["error"], 5) for e in report.attention_error],
                "diagnostics": [{k: v for k, v in d.items() if k != "train"} for d in report.diagnostics],
            }
            results["runs"].append(row)
            print(run, sparsity, row["seconds"], "s", row["perplexity"], "attn", row["attention_error_heldout_mean"], flush=True)
            del model
            write(results, Path(args.out))  # after every run, so a long sweep keeps what it measured
    print(f"wrote {Path(args.out).with_suffix('.json')} and {Path(args.out).with_suffix('.md')}")


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", render_markdown(results))):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out.with_suffix(suffix))


def render_markdown(results: dict) -> str:
    labels = list(results["dense"]["perplexity"])
    lines = [
        f"# Pruning quality: {results['model']}",
        "",
        f"Calibration: {results['calibration']}; evaluation tokens: {results['eval_tokens']}; host: {results['host']}",
        "",
        "| method | sparsity | " + " | ".join(f"ppl {l}" for l in labels) + " | attention error (mean/layer) | time (s) |",
        "| --- | --- | " + " | ".join("---" for _ in labels) + " | --- | --- |",
        "| dense | 0 | " + " | ".join(f"{results['dense']['perplexity'][l]:.2f}" for l in labels) + " | 0 | - |",
    ]
    for r in results["runs"]:
        ppl = " | ".join(f"{r['perplexity'][l]:.2f}" for l in labels)
        lines.append(f"| {r['method']} | {r['sparsity']} | {ppl} | {r['attention_error_heldout_mean']:.4f} | {r['seconds']:.0f} |")
    for sparsity in dict.fromkeys(r["sparsity"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["sparsity"] == sparsity]
        lines += ["", f"## Attention error per layer at {sparsity} (held-out pydoc, dense hidden states)", ""]
        lines.append("| layer | " + " | ".join(r["method"] for r in runs) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in runs) + " |")
        for i in range(len(runs[0]["attention_error_heldout"])):
            lines.append(f"| {i} | " + " | ".join(f"{r['attention_error_heldout'][i]:.4f}" for r in runs) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
