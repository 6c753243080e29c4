"""Method × sparsity table: held-out perplexity per domain and its geometric mean, attention-approximation error,
pruning time.

    python benchmarks/pruning_quality.py --model smollm2-135m \
        --methods magnitude,wanda,sparsegpt,attention --sparsities 0.5,2:4 \
        --eval-text suite --eval-text /usr/share/common-licenses/GPL-3 --calib pydoc --out bench-out/pruning_quality

``--eval-text`` takes what ``edgeprune eval --text`` takes: pydoc (held-out split), licences, docstrings, self (the
dense model's own samples, its "eval" seed stream), files, comma lists, and ``suite`` (the four named domains; where
each comes from: ``edgeprune/data/domains.py`` and BENCHMARKS.md). ``--calib`` takes what ``edgeprune prune --calib``
takes, mixes such as ``pydoc:0.5+self:0.5`` included.

A method may carry options for ablations: ``attention[steps=0]``,
``attention[others=sequential;refit_qk=false]``, or ``wanda[permute=true]`` (N:M
channel permutation before pruning). Writes ``OUT.json`` and ``OUT.md``.
Perplexity uses non-overlapping 512-token windows of each text (at most ``--max-windows``); the per-layer
attention error applies every model's W_Q/W_K to the *dense* model's hidden
states on held-out pydoc text, so layers are compared on identical inputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
import time
from pathlib import Path

import torch

from edgeprune.data import DOMAINS, SELF, CalibConfig, calibration_batch, eval_windows, load_text, split_texts
from edgeprune.data.domains import SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN
from edgeprune.data.generated import self_generated_text
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
    return "pydoc-heldout" if source == "pydoc" else source if source in DOMAINS else Path(source).name


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,attention")
    ap.add_argument("--sparsities", default="0.5,2:4")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib", default="pydoc", help="calibration source, as edgeprune prune --calib (e.g. self, pydoc:0.5+self:0.5)")
    ap.add_argument("--seed", type=int, default=0, help="calibration seed")
    ap.add_argument("--eval-text", action="append", default=None,
                    help="suite (default), pydoc, licences, docstrings, self, a text file, or a comma list; repeatable")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default="bench-out/pruning_quality")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_model(args.model)
    tok = base.tokenizer
    calib_cfg = CalibConfig(args.calib, samples=args.samples, seqlen=args.seqlen, seed=args.seed)
    start = time.perf_counter()
    calib = calibration_batch(tok, calib_cfg, base.model)
    calib_seconds = time.perf_counter() - start
    texts = split_texts(args.eval_text or ["suite"])

    def body(text: str) -> str:
        if text == SELF:  # the dense model's samples from the "eval" seed stream (--calib self uses the "calib" one)
            return self_generated_text(base.model, tok, SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN, 0, purpose="eval")
        return load_text(text, "eval")

    windows = {text_label(t): eval_windows(tok, body(t), 512, args.max_windows) for t in texts}
    probe = eval_windows(tok, load_text("pydoc", "eval"), 512, 2)

    def measure(model) -> dict:
        return {label: round(perplexity(model, w), 3) for label, w in windows.items()}

    results = {
        "model": args.model,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads()},
        "calibration": {"source": calib_cfg.source, "samples": args.samples, "seqlen": args.seqlen, "seed": args.seed,
                        "seconds": round(calib_seconds, 1)},
        "eval_texts": {text_label(t): DOMAINS[t].description if t in DOMAINS else t for t in texts},
        "eval_tokens": {label: int(w.numel()) for label, w in windows.items()},
        "dense": {"perplexity": measure(base.model)},
        "runs": [],
    }
    results["dense"]["geomean_perplexity"] = round(geomean(results["dense"]["perplexity"].values()), 3)
    print("dense", results["dense"], flush=True)
    write(results, Path(args.out))
    for sparsity in args.sparsities.split(","):
        for run in filter(None, args.methods.split(",")):  # --methods "" measures the dense model only
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
            row["geomean_perplexity"] = round(geomean(row["perplexity"].values()), 3)
            results["runs"].append(row)
            print(run, sparsity, row["seconds"], "s", row["perplexity"], "geomean", row["geomean_perplexity"],
                  "attn", row["attention_error_heldout_mean"], flush=True)
            del model
            write(results, Path(args.out))  # after every run, so a long sweep keeps what it measured
    print(f"wrote {output_path(Path(args.out), '.json')} and {output_path(Path(args.out), '.md')}")


def output_path(out: Path, suffix: str) -> Path:
    """OUT.json / OUT.md; a dot inside OUT (``q24-pydoc_0.5-self_0.5``) is part of the name, not a suffix to replace."""
    return out.with_name(out.name + suffix)


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", render_markdown(results))):
        tmp = output_path(out, suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(output_path(out, suffix))


def render_markdown(results: dict) -> str:
    labels = list(results["dense"]["perplexity"])
    lines = [
        f"# Pruning quality: {results['model']}",
        "",
        f"Calibration: {results['calibration']}; evaluation tokens: {results['eval_tokens']}; host: {results['host']}",
        "",
        "Texts: " + "; ".join(f"{label}: {about}" for label, about in results.get("eval_texts", {}).items()),
        "",
        "| method | sparsity | " + " | ".join(f"ppl {l}" for l in labels) + " | geomean | attention error (mean/layer) | time (s) |",
        "| --- | --- | " + " | ".join("---:" for _ in labels) + " | ---: | ---: | ---: |",
        "| dense | 0 | " + " | ".join(f"{results['dense']['perplexity'][l]:.2f}" for l in labels)
        + f" | {results['dense'].get('geomean_perplexity', float('nan')):.2f} | 0 | - |",
    ]
    for r in results["runs"]:
        ppl = " | ".join(f"{r['perplexity'][l]:.2f}" for l in labels)
        lines.append(f"| {r['method']} | {r['sparsity']} | {ppl} | {r.get('geomean_perplexity', float('nan')):.2f} | "
                     f"{r['attention_error_heldout_mean']:.4f} | {r['seconds']:.0f} |")
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
