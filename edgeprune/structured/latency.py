"""A measured ONNX Runtime latency model, so the search can spend a latency budget instead of a parameter one.

Three real graphs are exported and profiled on the device profile, together and in alternating rounds (medians; decode
ms/token for decoders, one call at 128 tokens for encoders): the dense model, a copy cut to its first blocks, and that cut with every block
narrowed. The first two give what a whole block costs (so removing a block also saves its norms, attention
over the cache and per-operator overhead); the last two what narrowing saves in the real graph. How the cost
varies between widths is measured with ONNX Runtime on chains of MatMuls of exactly the block's shapes, one
weight matrix per block (weights stream from memory as in the real model), and scaled to the real saving.
Predicted latency = base (embedding, LM head, ...) + per kept block: fixed part + scaled MatMul time.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.structured.search import Arch, Space

ENCODER_TOKENS = 128


@dataclass(frozen=True)
class LatencyCost:
    """Predicted ms for an architecture: ``base_ms`` plus per-block attention (by heads kept) and MLP (by width) time."""

    spaces: tuple[Space, ...]
    base_ms: float
    block_ms: float  # what a block costs besides the MatMuls that change with its width
    scale: float  # real-graph saving / MatMul-chain saving, measured on the narrowed cut
    attn_ms: dict[int, float]  # query heads kept in a block → ms per block
    mlp_widths: tuple[int, ...]
    mlp_ms: tuple[float, ...]  # ms per block at each width (interpolated between)

    def mlp(self, width: int) -> float:
        i = min(max(bisect_left(self.mlp_widths, width), 1), len(self.mlp_widths) - 1)
        (w0, w1), (t0, t1) = self.mlp_widths[i - 1:i + 1], self.mlp_ms[i - 1:i + 1]
        return t0 + (t1 - t0) * (width - w0) / (w1 - w0)

    def __call__(self, arch: Arch) -> float:
        return self.base_ms + sum(self.block_ms + self.scale * (self.attn_ms[k * s.groups] + self.mlp(c))
                                  for (k, c), s in zip(arch, self.spaces) if k)


def _quantized_chain(model, scheme: str) -> bytes:
    """``model`` with its MatMuls quantised as ``edgeprune quantize`` quantises them (round to nearest: latency does not
    depend on how the codes were chosen)."""
    import onnx

    from edgeprune.onnx.configs import QuantizeConfig
    from edgeprune.onnx.quantization import quantize_graph

    with tempfile.TemporaryDirectory(prefix="edgeprune-chain-") as tmp:
        onnx.save(model, f"{tmp}/f.onnx")
        quantize_graph(Path(f"{tmp}/f.onnx"), Path(f"{tmp}/q.onnx"), QuantizeConfig(scheme=scheme, method="rtn", head=False), False)
        return Path(f"{tmp}/q.onnx").read_bytes()


def _chain_ms(hidden: int, widths: list[tuple[int, int]], tokens: int, threads: int, runs: int = 30, scheme: str = "none") -> float:
    """Median ms of x → x + (x·A_i)·B_i for each (A_i: hidden×w, B_i: w×hidden) — or gated (x·G ⊙ x·U)·D with two inputs;
    the MatMuls quantised as ``scheme`` (none, int8, int4) quantises them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (width, ins) in enumerate(widths):
        scale = np.float32(1 / np.sqrt(hidden))
        names = [f"w{i}_{j}" for j in range(ins)] + [f"d{i}"]
        for j in range(ins):
            inits.append(numpy_helper.from_array((rng.standard_normal((hidden, width), dtype=np.float32) * scale), names[j]))
        inits.append(numpy_helper.from_array((rng.standard_normal((width, hidden), dtype=np.float32) * scale), names[-1]))
        outs = [f"a{i}_{j}" for j in range(ins)]
        nodes += [helper.make_node("MatMul", [x, names[j]], [outs[j]]) for j in range(ins)]
        inner = outs[0]
        if ins == 2:
            nodes.append(helper.make_node("Mul", outs, [f"m{i}"]))
            inner = f"m{i}"
        nodes += [helper.make_node("MatMul", [inner, names[-1]], [f"y{i}"]), helper.make_node("Add", [x, f"y{i}"], [f"x{i}"])]
        x = f"x{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, hidden])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [tokens, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = model.SerializeToString() if scheme == "none" else _quantized_chain(model, scheme)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((tokens, hidden), dtype=np.float32)}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


#: turns per graph when the real graphs are timed side by side in one process (at least ``rounds``)
SIDE_BY_SIDE_TURNS = 12


def measure_rounds(loaded, device, threads: int, models: Sequence, scheme: str = "none", rounds: int = 3) -> list[list[float]]:
    """Export each model (None: ``loaded`` itself; else a changed copy), quantise it as ``scheme`` (round to nearest: latency
    does not depend on how the codes were chosen) and measure them together on ``device``: on this host side by side in
    one process (:func:`~edgeprune.profiling.workflow.interleaved`, max(``rounds``, SIDE_BY_SIDE_TURNS) turns each, order
    alternating), on a remote device ``rounds`` profile runs in alternating order. Per model, its decode ms/token
    (encoders: ms per call) in each turn or round."""
    from edgeprune.onnx import ExportConfig, QuantizeConfig, export, quantize
    from edgeprune.profiling import Workload, load_device, profile
    from edgeprune.profiling.workflow import interleaved
    from edgeprune.structured.layout import save_layout_folder

    device = load_device(device) if isinstance(device, (str, Path)) else device

    key = "decode_p50_ms@32" if loaded.is_decoder else f"latency_p50_ms@1x{ENCODER_TOKENS}"
    workload = Workload(prompt_lengths=(32,), decode_tokens=32, seq_lengths=(ENCODER_TOKENS,), op_profile=False)
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        graphs = []
        for i, model in enumerate(models):
            source = loaded.source
            if model is not None:  # saved as a structured folder: its blocks may differ in size
                source = Path(tmp) / f"hf{i}"
                save_layout_folder(model, loaded.adapter, loaded.tokenizer, source)
            graph = Path(tmp) / f"onnx{i}"
            export(str(source), graph, ExportConfig(verify=False))
            if scheme != "none":
                quantize(graph, Path(tmp) / f"q{i}", QuantizeConfig(scheme=scheme, method="rtn"), verify=False)
                graph = Path(tmp) / f"q{i}"
            graphs.append(graph)
        if not device.remote:
            return interleaved(graphs, device, threads, prompt=32, decode_tokens=32, seq_len=ENCODER_TOKENS,
                               sequences=max(rounds, SIDE_BY_SIDE_TURNS), runs=device.runs)
        times: list[list[float]] = [[] for _ in graphs]
        for r in range(rounds):
            order = list(range(len(graphs))) if r % 2 == 0 else list(reversed(range(len(graphs))))
            report = profile([graphs[i] for i in order], device, [threads], Path(tmp) / f"profile{r}", workload=workload,
                             names=[f"g{i}" for i in order])
            for i, variant in zip(order, report.variants):
                run = variant.runs[0]
                if not run.ok:
                    raise EdgepruneError(f"the model could not be measured on '{device.name}': {run.reason}",
                                         "choose a device profile it fits, or use --target-params")
                times[i].append(run.headline[key])
    return times


def _cut(loaded, blocks: int, narrow: bool):
    """A copy of the model with only its first ``blocks`` blocks, optionally each narrowed to 1 head per KV group and ¼ of the channels."""
    import copy

    import torch

    from edgeprune.structured.layout import remove_units

    model = copy.deepcopy(loaded.model)
    loaded.adapter.keep_blocks(model, list(range(blocks)))
    if narrow:
        for block in loaded.adapter.blocks(model):
            units = loaded.adapter.units(block)
            per = units.group_size if units.group_size > 1 else units.num_heads
            remove_units(block, loaded.adapter, torch.arange(0, units.num_heads, per), torch.arange(max(1, units.channels // 4)))
    return model


def latency_cost(loaded, spaces: Sequence[Space], device, progress: Callable[[str, int, int], None] | None = None,
                 scheme: str = "none", threads: int | None = None, rounds: int = 3) -> tuple[LatencyCost, dict]:
    """Measure the latency model for ``loaded`` on ``device`` (a profile, or its name / .toml), its graphs quantised as
    ``scheme`` (none, int8, int4), at ``threads`` (default: the profile's, else every usable core); the three real graphs
    are measured together, ``rounds`` times in alternating order (medians). Returns it and what was measured."""
    from edgeprune.profiling.devices import DeviceProfile, load_device

    device = device if isinstance(device, DeviceProfile) else load_device(device)
    threads = threads or device.intra_op_threads or len(os.sched_getaffinity(0))
    blocks = loaded.adapter.blocks(loaded.model)
    units = [loaded.adapter.units(b) for b in blocks]
    hidden = blocks[0].get_submodule(units[0].head_cols).out_features
    head_dim, n = units[0].head_dim, len(blocks)
    tokens = 1 if loaded.is_decoder else ENCODER_TOKENS
    head_counts = sorted({k * s.groups for s in spaces for k in range(1, s.per_group + 1)})
    top = max(s.channels for s in spaces)
    step = spaces[0].step
    widths = sorted({*range(step, top, max(step, (top // 8) // step * step)), top})
    total = len(head_counts) + len(widths) + 1
    tick = (lambda i: progress("latency", i, total)) if progress else (lambda i: None)
    attn = {}
    for i, h in enumerate(head_counts):
        attn[h] = _chain_ms(hidden, [(h * head_dim, 1)] * n, tokens, threads, scheme=scheme) / n
        tick(i + 1)
    mlp = []
    for i, w in enumerate(widths):
        mlp.append(_chain_ms(hidden, [(w, len(units[0].channel_rows))] * n, tokens, threads, scheme=scheme) / n)
        tick(len(head_counts) + i + 1)
    few = min(4, n - 1)
    models = [None, _cut(loaded, max(few, 1), narrow=True)] + ([_cut(loaded, few, narrow=False)] if n > 1 else [])
    dense, narrow, *cut = [statistics.median(t) for t in measure_rounds(loaded, device, threads, models, scheme, rounds)]
    cut = cut[0] if cut else dense
    tick(total)
    cost = fit_cost(spaces, units, attn, widths, mlp, dense, cut, narrow, few)
    info = {"device": device.name, "scheme": scheme, "threads": threads, "tokens": tokens, "rounds": rounds, "measured_dense_ms": round(dense, 3),
            f"measured_first_{few}_blocks_ms": round(cut, 3), f"measured_first_{few}_blocks_narrowed_ms": round(narrow, 3),
            "matmul_scale": round(cost.scale, 3), "block_fixed_ms": round(cost.block_ms, 4),
            "dense_blocks_matmul_ms": round(dense - cost.base_ms - len(blocks) * cost.block_ms, 3), "attn_ms_per_block": {str(k): round(v, 4) for k, v in attn.items()},
            "mlp_ms_per_block": {str(w): round(t, 4) for w, t in zip(widths, mlp)}}
    return cost, info


def fit_cost(spaces: Sequence[Space], units: Sequence, attn: dict[int, float], widths: Sequence[int], mlp: Sequence[float],
             dense: float, cut: float, narrow: float, few: int) -> LatencyCost:
    """The latency model from the MatMul-chain times (``attn`` by heads, ``mlp`` at ``widths``; ms per block) and the
    three real graphs' times: ``dense``, its first ``few`` blocks (``cut``) and those narrowed (``narrow``)."""
    n = len(units)
    widths_ms = [attn[u.num_heads] + float(np.interp(u.channels, widths, mlp)) for u in units]
    first = units[: max(few, 1)]
    chain_saving = sum(attn[u.num_heads] - attn[u.num_kv_heads if u.group_size > 1 else 1]
                       + float(np.interp(u.channels, widths, mlp) - np.interp(max(1, u.channels // 4), widths, mlp)) for u in first)
    real_saving = (cut if n > 1 else dense) - narrow
    scale = max(real_saving / chain_saving, 0.0) if chain_saving > 0 else 1.0
    # Noise on a small model can make the cut look cheaper than its share of the dense model: a block then costs no
    # more than the dense model per block (so the base is never negative) and never less than nothing.
    per_block = min(max((dense - cut) / (n - few), 0.0), dense / n) if n > few else dense / n
    # ... and its MatMuls, scaled, no more than the whole block: no part of a block is predicted to cost less than nothing.
    scale = min(scale, per_block * n / sum(widths_ms)) if sum(widths_ms) > 0 else scale
    block_ms = per_block - scale * sum(widths_ms) / n
    return LatencyCost(tuple(spaces), dense - n * per_block, block_ms, scale, attn, tuple(widths), tuple(mlp))


def cost_to_dict(cost: LatencyCost) -> dict:
    """A latency model as JSON (its spaces are rebuilt from the model when it is read back)."""
    return {"base_ms": cost.base_ms, "block_ms": cost.block_ms, "scale": cost.scale, "attn_ms": {str(k): v for k, v in cost.attn_ms.items()},
            "mlp_widths": list(cost.mlp_widths), "mlp_ms": list(cost.mlp_ms)}


def cost_from_dict(data: dict, spaces: Sequence[Space]) -> LatencyCost:
    return LatencyCost(tuple(spaces), data["base_ms"], data["block_ms"], data["scale"], {int(k): v for k, v in data["attn_ms"].items()},
                       tuple(data["mlp_widths"]), tuple(data["mlp_ms"]))
