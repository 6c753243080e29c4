"""What int4 does to an exported decoder in ONNX Runtime: file size, prefill and decode latency, and
held-out perplexity, for fp32 vs int4 with an fp32 embedding/LM head (before) vs int4 with the head
quantised, with fp32 compute (accuracy level 0) and with int8 compute (level 4, edgeprune's default).

    python benchmarks/onnx_int4.py --model smollm2-135m --threads 2

Writes bench-out/onnx_int4.json and bench-out/onnx_int4.md. All variants run in the same process,
one after another, on the same prompt, so their timings compare; the machine's load does not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

SCHEMA_VERSION = 1


@dataclass
class Variant:
    name: str
    file: str
    bytes: int
    prefill_ms: float  # median over repeats, one prompt of prompt_tokens from an empty cache
    decode_ms_per_token: float  # median over all decode steps of all repeats
    perplexity: float  # through ORT, same windows as the PyTorch figure
    greedy_agree_with_fp32: int  # leading decode tokens equal to the fp32 graph's


@dataclass
class Int4Benchmark:
    model: str
    threads: int
    prompt_tokens: int
    decode_tokens: int
    repeats: int
    eval_tokens: int
    torch_perplexity: float
    variants: list[Variant] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def _time_decoder(sess, prompt: np.ndarray, new_tokens: int, repeats: int) -> tuple[float, float, list[int]]:
    from edgeprune.onnx.session import OrtDecoder

    decoder = OrtDecoder(sess)
    decoder.step(prompt, np.ones_like(prompt), decoder.empty_past(1))  # warm-up: allocations, prepacking
    prefill, decode, tokens = [], [], []
    for _ in range(repeats):
        mask = np.ones_like(prompt)
        start = time.perf_counter()
        logits, past, _ = decoder.step(prompt, mask, decoder.empty_past(1))
        prefill.append(time.perf_counter() - start)
        tokens = []
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            tokens.append(int(nxt[0, 0]))
            mask = np.concatenate([mask, np.ones_like(nxt)], axis=1)
            start = time.perf_counter()
            logits, past, _ = decoder.step(nxt, mask, past)
            decode.append(time.perf_counter() - start)
    return statistics.median(prefill) * 1e3, statistics.median(decode) * 1e3, tokens


def run(model: str, out: Path, threads: int, prompt_tokens: int, decode_tokens: int, repeats: int, seqlen: int,
        max_windows: int, block_size: int) -> Int4Benchmark:
    from edgeprune.data import eval_windows, load_text, tokenize
    from edgeprune.evaluation import perplexity
    from edgeprune.models.loading import load_model
    from edgeprune.onnx import ExportConfig, QuantizeConfig, export
    from edgeprune.onnx.evaluate import onnx_perplexity
    from edgeprune.onnx.session import load_session
    from edgeprune.onnx.quantization import quantize_graph

    torch.set_num_threads(threads)  # the ORT sessions take their thread count from torch's
    folder = out / f"onnx_int4-{Path(model).name}"  # reused when it exists: delete it to export again
    if not (folder / "model_int4.onnx").is_file():  # edgeprune's default int4: head quantised, accuracy level 4
        export(model, folder, ExportConfig(quantize=QuantizeConfig("int4", block_size=block_size)), overwrite=True)
    variants = [("fp32", "model.onnx")]
    for name, file, config in [
        ("int4 before (fp32 head, fp32 compute)", "model_int4_fp32head.onnx", QuantizeConfig("int4", block_size, head=False, accuracy_level=0)),
        ("int4, head int4, fp32 compute", "model_int4_acc0.onnx", QuantizeConfig("int4", block_size, head=True, accuracy_level=0)),
    ]:
        if not (folder / file).is_file():
            quantize_graph(folder / "model.onnx", folder / file, config, external_data=False)
        variants.append((name, file))
    variants.append(("int4, head int4, int8 compute (default)", "model_int4.onnx"))

    loaded = load_model(model, device="cpu", dtype=torch.float32)
    body = load_text("pydoc", "eval")
    windows = eval_windows(loaded.tokenizer, body, seqlen, max_windows)
    result = Int4Benchmark(model, threads, prompt_tokens, decode_tokens, repeats, int(windows.numel()),
                           torch_perplexity=perplexity(loaded.model, windows),
                           machine={"cpu": platform.processor() or platform.machine(), "python": platform.python_version()})
    del loaded
    prompt = tokenize(_tokenizer(folder), body)[:prompt_tokens].numpy()[None].astype(np.int64)

    reference_tokens = None
    for name, file in variants:
        sess = load_session(folder / file)
        prefill_ms, decode_ms, tokens = _time_decoder(sess, prompt, decode_tokens, repeats)
        reference_tokens = reference_tokens or tokens
        agree = next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b), len(tokens))
        result.variants.append(Variant(name, file, (folder / file).stat().st_size, round(prefill_ms, 2), round(decode_ms, 3),
                                       onnx_perplexity(sess, windows), agree))
        del sess
        print(result.variants[-1], flush=True)
    return result


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def to_markdown(r: Int4Benchmark) -> str:
    fp32 = r.variants[0]
    lines = [
        f"### int4 in ONNX Runtime: {r.model}, {r.threads} threads",
        "",
        f"Prompt {r.prompt_tokens} tokens, then {r.decode_tokens} greedy decode steps with the KV cache; medians of {r.repeats} runs. "
        f"Perplexity on {r.eval_tokens} held-out pydoc tokens; PyTorch fp32: {r.torch_perplexity:.3f}.",
        "",
        "| graph | file MB | prefill ms | decode ms/token | decode speed-up vs fp32 | perplexity (ORT) | greedy tokens = fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in r.variants:
        lines.append(f"| {v.name} (`{v.file}`) | {v.bytes / 1e6:.1f} | {v.prefill_ms:.1f} | {v.decode_ms_per_token:.2f} | "
                     f"{fp32.decode_ms_per_token / v.decode_ms_per_token:.2f}x | {v.perplexity:.3f} | {v.greedy_agree_with_fp32}/{r.decode_tokens} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.model, args.out, args.threads, args.prompt_tokens, args.decode_tokens, args.repeats, args.seqlen,
                 args.max_windows, args.block_size)
    (args.out / "onnx_int4.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    (args.out / "onnx_int4.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
