"""Time and peak memory of each pipeline stage on random-weight models of real sizes (issue 17).

Quality is meaningless on random weights; what this measures is whether a stage fits in memory and how long it takes.

    # a Llama-3.1-8B-shaped folder in bf16 (architecture hyper-parameters only: nothing is downloaded), ~16 GB
    python benchmarks/scale.py make llama-3.1-8b --dtype bf16 --out /tmp/scale/8b
    # stages as separate processes, peak RSS sampled from outside (the process and its children, every 50 ms)
    python benchmarks/scale.py run --out /tmp/scale/bench-8b \\
        --stage "prune=edgeprune prune /tmp/scale/8b --out /tmp/scale/8b-wanda --method wanda --sparsity 2:4 \\
                 --samples 8 --seqlen 256 --stream on --dtype bf16"

``run`` writes ``scale.json`` and ``scale.md`` under --out: each stage's command, wall time, peak RSS, exit status and
the size of the folder or file it wrote (its ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Architecture hyper-parameters of published models (their config.json), so test models have the real shapes.
CONFIGS = {
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768,
    ),
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def make(name: str, dtype: str, out: Path, seed: int = 0, layers: int | None = None) -> None:
    """Write a random-weight model of ``name``'s shape, one shard per block, never holding more than one tensor.
    ``layers`` keeps the widths but changes the depth (a cheap model whose hidden states are those of the real one).

    The tokenizer is minilm-l6's (bundled; 30,522 ids, all inside every vocabulary above)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgeprune.models.streaming import INDEX, meta_model
    from edgeprune.specs import bundled_path

    params = dict(CONFIGS[name])
    if layers is not None:
        params["num_hidden_layers"] = layers
    config = AutoConfig.for_model(params.pop("model_type"), **params, torch_dtype=DTYPES[dtype])
    model = meta_model(config, AutoModelForCausalLM)
    shapes = {n: p.shape for n, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    groups: dict[str, list[str]] = {}
    for n in shapes:
        key = ".".join(n.split(".")[:3]) if n.startswith("model.layers.") else "rest"
        groups.setdefault(key, []).append(n)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    target = getattr(torch, DTYPES[dtype])
    weight_map, total = {}, 0
    for k, (group, names) in enumerate(groups.items()):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for n in names:
            if n.endswith("norm.weight"):
                t = torch.ones(shapes[n], dtype=target)
            elif n.endswith(".bias"):
                t = torch.zeros(shapes[n], dtype=target)
            else:
                t = torch.empty(shapes[n]).normal_(0.0, config.initializer_range, generator=gen).to(target)
            tensors[n] = t
            weight_map[n] = file
            total += t.numel() * t.element_size()
        save_file(tensors, tmp / file, metadata={"format": "pt"})
        del tensors
        print(f"{file}: {group}", flush=True)
    (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(tmp)
    tok = bundled_path("minilm-l6")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(tok / f, tmp / f)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"{out}: {name}, {sum(s.numel() for s in shapes.values()) / 1e9:.2f}B parameters, {total / 2**30:.2f} GiB {dtype}")


def _tree_rss(proc) -> tuple[int, int]:
    """RSS of a process and its children, and the anonymous part of it (RSS less file-backed and shared pages: what
    the kernel cannot page out to a file; memory-mapped spill files and mapped weights are not in it)."""
    import psutil

    total = anon = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_info()
        except psutil.Error:
            continue
        total += info.rss
        anon += info.rss - getattr(info, "shared", 0)
    return total, anon


def _size(path: str | None) -> int | None:
    if not path or not Path(path).exists():
        return None
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_stage(name: str, command: str, interval: float = 0.05) -> dict:
    """Run one stage; sample the RSS of its process tree from outside until it exits."""
    import psutil

    args = shlex.split(command)
    out = args[args.index("--out") + 1] if "--out" in args else None
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    ps = psutil.Process(proc.pid)
    peak = peak_anon = 0
    trace: list[tuple[float, float]] = []  # (seconds, GiB) about once a second: which phase of a stage holds the memory
    done = threading.Event()

    def sample():
        nonlocal peak, peak_anon
        while not done.is_set():
            rss, anon = _tree_rss(ps)
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)
            now = time.perf_counter() - start
            if not trace or now - trace[-1][0] >= 1.0:
                trace.append((round(now, 1), round(rss / 2**30, 3)))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    size = _size(out)
    row = {"stage": name, "command": command, "exit": rc, "seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 3),
           "peak_anon_gib": round(peak_anon / 2**30, 3),
           "output": out, "output_gib": None if size is None else round(size / 2**30, 3)}
    print(json.dumps(row), flush=True)
    row["rss_trace"] = trace
    return row


def write(rows: list[dict], out: Path) -> None:
    import platform

    import psutil

    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    (out / "scale.json").write_text(json.dumps({"machine": machine, "stages": rows}, indent=2) + "\n")
    lines = [f"Machine: {machine}", "", "| stage | wall s | peak RSS GiB | peak anon GiB | output GiB | bound 2×output+2 GiB | exit |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bound = "—" if r["output_gib"] is None else f"{2 * r['output_gib'] + 2:.2f}"
        out_gib = "—" if r["output_gib"] is None else f"{r['output_gib']:.2f}"
        lines.append(f"| {r['stage']} | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} | {r.get('peak_anon_gib', float('nan')):.2f} | {out_gib} | {bound} | {r['exit']} |")
    lines += ["", "Commands:", ""] + [f"- {r['stage']}: `{r['command']}`" for r in rows]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a random-weight model of a published shape")
    m.add_argument("name", choices=sorted(CONFIGS))
    m.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--layers", type=int, default=None, help="override the number of blocks (widths unchanged)")
    r = sub.add_parser("run", help="run stages, each NAME=COMMAND, in order; stop at the first that fails")
    r.add_argument("--stage", action="append", required=True)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "make":
        make(args.name, args.dtype, args.out, layers=args.layers)
        return 0
    rows = []
    for stage in args.stage:
        name, _, command = stage.partition("=")
        rows.append(run_stage(name.strip(), " ".join(command.split())))
        write(rows, args.out)
        if rows[-1]["exit"] != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
