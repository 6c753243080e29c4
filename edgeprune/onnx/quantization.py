"""Weight quantisation of an exported graph with ONNX Runtime's quantisers, and the check that
pruned zeros survive it: a weight that was exactly zero must dequantise to exactly zero
(its quantised code equals the zero point), so N:M patterns hold in the quantised graph too.

int8: dynamic quantisation, per output channel, symmetric int8 weights (MatMulInteger).
int4: block-wise MatMulNBits along the input dimension (block_size, symmetric or not); with
``head`` also the token embedding (GatherBlockQuantized) and the LM head, which share one
table (codes and scales stored once) when the model ties them (the tied head is otherwise an fp32
MatMul on a Transpose). The linears of a stage that read the same input (q/k/v; gate/up) are then
packed into one MatMulNBits and split after it, as the GenAI model builder packs q/k/v; which rows of a
packed weight belong to which linear is kept in the model's metadata (``edgeprune.packed``), so the
zero and N:M checks still see every linear.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.onnx.configs import QuantizeConfig
from edgeprune.progress import status
from edgeprune.runtime import give_back_memory
from edgeprune.sparsity import is_nm, parse_sparsity


@dataclass(frozen=True)
class QuantLayer:
    layer: str
    initializer: str | None
    torch_zeros: int
    kept_zeros: int | None  # torch zeros that dequantise to exactly 0 (None: weight not quantised)
    pattern: str | None
    nm_ok: bool | None


@dataclass
class QuantReport:
    scheme: str
    file: str
    bytes: int
    settings: dict
    layers: list[QuantLayer] = field(default_factory=list)
    quality: dict = field(default_factory=dict)  # against PyTorch fp32; reported, not enforced

    @property
    def lost(self) -> list[QuantLayer]:
        return [l for l in self.layers if l.torch_zeros and l.kept_zeros is not None and l.kept_zeros < l.torch_zeros]

    @property
    def nm_violations(self) -> list[QuantLayer]:
        return [l for l in self.layers if l.nm_ok is False]

    def to_dict(self) -> dict:
        quantised = [l for l in self.layers if l.kept_zeros is not None]
        return {
            "scheme": self.scheme, "file": self.file, "bytes": self.bytes, "settings": self.settings,
            "layers_quantized": len(quantised), "layers_not_quantized": [l.layer for l in self.layers if l.kept_zeros is None],
            "torch_zeros": sum(l.torch_zeros for l in quantised), "kept_zeros": sum(l.kept_zeros for l in quantised),
            "zeros_preserved": not self.lost,
            "nm_ok": not self.nm_violations if any(l.pattern for l in self.layers) else None,
            "quality": self.quality,
            "layers": [l.__dict__ for l in self.layers],
        }


@dataclass
class CalibratedInt4:
    """What :func:`calibrate_int4` computed, in MatMulNBits' layout.

    ``layers``: layer → (B [out, in/block, block·bits/8] uint8, scales [out, in/block], bits 4 or 8).
    ``head``: the tied LM head's 4-bit (B, scales), or None; the embedding lookup shares them.
    """

    layers: dict[str, tuple[np.ndarray, np.ndarray, int]]
    head: tuple[np.ndarray, np.ndarray] | None = None


def stage_groups(loaded) -> list[list[str]]:
    """The prunable linears grouped by what they read (per block: q/k/v, o, gate/up, down for Llama), by layer name."""
    adapter, model = loaded.adapter, loaded.model
    return [[f"{adapter.block_prefix(model, b)}.{name}" for name in stage]
            for b, block in enumerate(adapter.blocks(model)) for stage in adapter.stages(block)]


def _packed(grid, block: int) -> tuple[np.ndarray, np.ndarray]:
    """An :class:`~edgeprune.pruning.kernels.Int4Grid`'s codes as MatMulNBits bytes (low nibble first) and its scales."""
    codes = (grid.codes.to(torch.int16) + 8).to(torch.uint8).numpy()
    codes = codes.reshape(codes.shape[0], -1, block)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), grid.scales.numpy().astype(np.float32)


def _gptq_linear(weight: torch.Tensor, hessian: torch.Tensor, config: QuantizeConfig):
    """One linear's GPTQ: its new (dequantised) weight, packed codes and scales, and the relative output error
    ‖ΔW X‖² / ‖W X‖² (in fp64). Its temporaries (fp64 copies of the Hessian: 0.5 GB for a 1B's down_proj) end here."""
    from edgeprune.pruning.kernels import gptq_int4

    new, grid = gptq_int4(weight, hessian, config.block_size, config.act_order, config.damp)
    delta, hd = (new - weight).double(), hessian.double()
    error = float((delta @ hd * delta).sum() / (weight.double() @ hd * weight.double()).sum().clamp_min(1e-30))
    return new, _packed(grid, config.block_size), error


def calibrate_int4(loaded, config: QuantizeConfig, stream=None, hidden_policy=None) -> CalibratedInt4:
    """Calibrated int4 codes for every prunable linear: GPTQ, block by block, on the model's own outputs.

    Each block's linears are quantised from Hessians of their inputs (calibration text run through the
    already-quantised blocks before it); pruned (exactly zero) weights are held at code 0 and their
    removal error is spread as well. Then the layers with the largest relative output error
    ‖ΔW X‖² / ‖W X‖² are stored at 8 bits instead (round to nearest, lossless in practice), as long as
    they fit in ``config.eight_bit_budget`` of the parameters; a stage (linears that read the same input, such
    as q/k/v) moves as one, so it keeps one bit width and stays packable. With a 4-bit head, a tied LM head gets
    GPTQ codes from the final hidden states, which the embedding lookup then shares. The loaded model is not changed.

    With ``stream`` (a :class:`~edgeprune.models.streaming.StreamedModel` without an output folder, over the meta-device
    ``loaded.model``) each block is read from the checkpoint for its turn and released after: memory holds one block,
    the calibration hidden states and, for the head, the embedding table. The codes are the same either way.
    ``hidden_policy`` (:class:`~edgeprune.pruning.hidden.HiddenPolicy`) places and types the hidden states between blocks.
    """
    from edgeprune.data import calibration_batch
    from edgeprune.pruning.engine import sequential
    from edgeprune.pruning.hidden import as_block_input
    from edgeprune.pruning.kernels import Hessian

    # GPTQ works in place on the loaded model, one block at a time: a block's quantised weights are what the next
    # block's calibration inputs pass through, and its original weights come back as soon as those inputs exist, so
    # memory holds the model plus one block's originals (not a second model). Streamed, the block is simply released.

    model = loaded.model.float().eval()
    adapter = loaded.adapter
    ids = calibration_batch(loaded.tokenizer, config.calib, loaded.model)
    out = CalibratedInt4({})
    errors = {}
    held: dict[torch.nn.Linear, torch.Tensor] = {}  # the current block's original weights

    def restore():
        for linear, weight in held.items():
            linear.weight.data = weight
        held.clear()

    status("GPTQ int4 codes (blocks)", 0, len(adapter.blocks(model)))
    try:
        with torch.no_grad():
            for ctx in sequential(adapter, model, ids, batch_size=calibration_rows(adapter, model, ids), stream=stream,
                                  hidden_policy=hidden_policy, progress=lambda done, total: status("GPTQ int4 codes (blocks)", done, total)):
                restore()  # the previous block: its quantised outputs are this block's inputs now
                stages = adapter.stages(ctx.block)
                stats = [Hessian(next(iter(stage.values())).in_features) for stage in stages]
                for x in ctx.batches():
                    adapter.read_inputs(ctx.block, x, ctx.context, {next(iter(stage)): h.add for stage, h in zip(stages, stats)})
                for k, stage in enumerate(stages):
                    hessian = stats[k].value
                    stats[k] = None  # the fp64 running sum (0.5 GB for a 1B's down_proj) is not needed past here
                    for name, linear in stage.items():
                        weight = linear.weight.data
                        if weight.shape[1] % config.block_size:
                            continue  # ORT pads such a layer; it keeps round-to-nearest codes
                        new, packed, errors[f"{ctx.prefix}.{name}"] = _gptq_linear(weight, hessian, config)
                        if stream is None:
                            held[linear] = weight
                        linear.weight.data = new
                        out.layers[f"{ctx.prefix}.{name}"] = (*packed, 4)
                    del hessian  # nothing of a stage outlives it: a 1B block would otherwise keep ~1 GB to the next
                    give_back_memory()
                last = ctx
            hidden = last.outputs()  # the final hidden states (computed once, by the pipeline's propagation)
    finally:
        restore()
    linears = adapter.prunable_linears(model)

    def original(name: str) -> torch.Tensor:  # a linear's weight as loaded (restored above, or from the checkpoint)
        return linears[name].weight.detach() if stream is None else stream.read_weight(name)

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and getattr(model.config, "tie_word_embeddings", False)
    norm = getattr(model.get_decoder(), "norm", None) if hasattr(model, "get_decoder") else None
    if config.head and config.head_bits == 4 and tied and head.weight.shape[1] % config.block_size == 0 and isinstance(norm, torch.nn.Module):
        # The tied LM head, GPTQ'd on the final hidden states of the quantised model (it reads norm(last block's
        # output), which the loop above computed); the embedding lookup shares the table. A decoder whose final norm
        # is not `norm` keeps round-to-nearest head codes.
        h = Hessian(head.in_features)
        with torch.no_grad(), stream.embedding() if stream is not None else contextlib.nullcontext():  # the final norm
            for k in range(0, hidden.shape[0], 8):
                h.add(norm(as_block_input(hidden[k:k + 8], norm)))
        with stream.head_rows() if stream is not None else contextlib.nullcontext(head.weight.data.float()) as table:
            out.head = gptq_rows(table, h.value, config)
    budget = config.eight_bit_budget * sum(linear.weight.numel() for linear in linears.values())
    groups = [[n for n in group if n in errors] for group in stage_groups(loaded)]
    for group in sorted((g for g in groups if g), key=lambda g: max(errors[n] for n in g), reverse=True):
        size = sum(linears[n].weight.numel() for n in group)
        if size <= budget:
            budget -= size
            for name in group:
                codes, scales = quantize_rows(original(name).float().numpy(), config.block_size, 8)
                out.layers[name] = (codes, scales.astype(np.float32), 8)
    return out


#: what one of a calibration batch's widest activations may take (a block holds several at once)
CALIBRATION_ACTIVATION_BYTES = 128 * 2**20


def calibration_rows(adapter, model, ids: torch.Tensor) -> int:
    """Calibration sequences per batch in GPTQ: all of them while the block's widest activation (the MLP's, in fp32)
    stays under :data:`CALIBRATION_ACTIVATION_BYTES` (SmolLM2-135M at 32 × 512 tokens: 100 MB, one batch, as before),
    fewer for wide models (a 1B's MLP at 32 × 512 tokens: 0.5 GB per activation, and a block holds several; 8 rows)."""
    width = max(linear.out_features for linear in adapter.block_linears(adapter.blocks(model)[0]).values())
    tokens = CALIBRATION_ACTIVATION_BYTES // (4 * width)
    return max(1, min(len(ids), tokens // ids.shape[1]))


#: GPTQ rows of a table at a time: its working copies (weight, update, masks) stay near this size
GPTQ_ROWS_BYTES = 64 * 2**20  # a 1B's head: 16 slices; a slice's GPTQ takes ~6× this (256 MB: +2 GB measured)


def gptq_rows(table, hessian: torch.Tensor, config: QuantizeConfig) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ int4 codes of a large table (a tied head) as MatMulNBits bytes and scales, a slice of rows at a time.

    Rows are independent in GPTQ (one Hessian, each row's error spread along its own columns), so slicing changes
    only how much is in memory: a 1B model's 128k × 2048 head is ~1 GB in fp32, and GPTQ's copies of it would be ~4.
    ``table``: a tensor, or anything with ``shape`` whose row slices are fp32 tensors (a table read on demand,
    :meth:`~edgeprune.models.streaming.StreamedModel.head_rows`)."""
    from edgeprune.pruning.kernels import gptq_int4

    step = max(1, GPTQ_ROWS_BYTES // (table.shape[1] * 4))
    parts = []
    for r in range(0, table.shape[0], step):
        parts.append(_packed(gptq_int4(table[r : r + step], hessian, config.block_size, config.act_order, config.damp)[1], config.block_size))
        give_back_memory()
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def calibrated_matmuls(model, layers: dict[str, str], computed: dict[str, tuple[np.ndarray, np.ndarray, int]], block: int,
                       accuracy_level: int = 0) -> int:
    """Turn each MatMul whose float weight has calibrated codes into the MatMulNBits (4 or 8 bits) ONNX Runtime's
    quantiser would write, with those codes; returns how many. ``computed`` (layer → packed codes, scales, bits) is
    consumed: each entry goes once its codes are in the graph, so the codes are never held twice (a 1B: ~0.6 GB)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_init = {init: layer for layer, init in layers.items() if layer in computed}
    done, nodes, dropped = 0, [], set()
    for node in graph.node:
        layer = by_init.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        weight = inits.get(node.input[1]) if layer else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        k, n = weight.dims
        packed, scales, bits = computed.pop(layer)
        if (packed.shape[0], packed.shape[1] * block) != (n, k):
            raise RuntimeError(f"calibrated codes of {layer} are {packed.shape}, its weight {k} × {n}")  # a bug, not input
        init = node.input[1]
        graph.initializer.extend([numpy_helper.from_array(packed.reshape(n, k // block, -1), f"{init}_Q4"),
                                  numpy_helper.from_array(np.ascontiguousarray(scales.reshape(n, k // block), np.float32), f"{init}_scales")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{init}_Q4", f"{init}_scales"], list(node.output),
                                      name=node.name + "_Q4" if node.name else "", domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, **({"accuracy_level": accuracy_level} if accuracy_level else {})))
        dropped.add(init)
        done += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    still = {i for node in graph.node for i in node.input}
    for t in [t for t in graph.initializer if t.name in dropped and t.name not in still]:
        graph.initializer.remove(t)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def quantize_graph(src: Path, dst: Path, config: QuantizeConfig, external_data: bool,
                   calibrated: tuple[dict[str, str], CalibratedInt4] | None = None,
                   packing: list[list[str]] | None = None) -> tuple[dict | None, int]:
    """Write a weight-quantised copy of ``src`` to ``dst``; returns what :func:`quantize_token_embedding` did (if
    anything) and how many packed MatMulNBits were written.

    ``calibrated`` = (layer → initializer, codes) gives those layers (and a tied head) calibrated codes instead of
    round-to-nearest ones (see :func:`calibrate_int4`); its layer codes are consumed (:func:`calibrated_matmuls`). ``packing``: int4 only, groups of
    float initializer names read by the same input, each packed into one MatMulNBits (:func:`pack_matmuls`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if config.scheme == "int8":
        # Dynamic int8 for the MatMuls; the token embedding (and a tied head) becomes one 8-bit block table.
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is about shape inference for QDQ models, not this
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                             use_external_data_format=external_data)
        finally:
            root.setLevel(level)
        if not config.head:
            return None, 0
        import onnx

        model = onnx.load(str(dst))
        head = quantize_token_embedding(model, config.block_size, 0, 8)
        if head is not None:
            onnx.save(model, str(dst), save_as_external_data=external_data, all_tensors_to_one_file=True, location=f"{dst.name}.data")
        return head, 0
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    import logging

    from onnx.external_data_helper import load_external_data_for_model

    # The graph without its external data: each MatMul's weight is read just before ORT's quantiser takes it and let go
    # right after, so a 1B model's 5.6 GB of fp32 weights are never all in memory (only the int4 codes pile up).
    # Calibrated layers get their MatMulNBits first (their float weights are never read); ORT's quantiser does the rest.
    graph = onnx.load(str(src), load_external_data=False)
    if calibrated is not None:
        layers, codes = calibrated
        expected = len(codes.layers)
        replaced = calibrated_matmuls(graph, layers, codes.layers, config.block_size, config.accuracy_level)
        if replaced != expected:
            raise RuntimeError(f"calibrated int4 codes fit {replaced} of {expected} MatMul layers")  # a bug, not input
    quantizer = MatMulNBitsQuantizer(graph, bits=4, block_size=config.block_size,
                                     is_symmetric=config.symmetric, accuracy_level=config.accuracy_level or None)
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        with _weights_on_demand(src.parent):
            quantizer.process()
    finally:
        log.setLevel(level)
    head = quantize_token_embedding(quantizer.model.model, config.block_size, config.accuracy_level, config.head_bits,
                                    calibrated[1].head if calibrated else None, src.parent) if config.head else None
    load_external_data_for_model(quantizer.model.model, str(src.parent))  # what is left: norms, biases (a kept fp32 table)
    packed = pack_matmuls(quantizer.model.model, packing) if packing else 0
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external_data)
    return head, packed



@contextlib.contextmanager
def _weights_on_demand(base: Path):
    """While open, ORT's MatMulNBits quantiser (on a graph loaded without external data) gets each weight it asks for
    as a standalone copy of its initializer with the data read from ``base``, dropped once it is quantised. Loading the
    data into the graph's own initializer would not do: protobuf (upb) keeps it in the graph's arena until the whole
    graph goes, so a 1B model's weights would all pile up (measured: 9.8 GB peak)."""
    import onnxruntime.quantization.matmul_nbits_quantizer as nbits

    from edgeprune.onnx.graph import loaded_copy

    find = nbits.get_initializer

    def with_data(name, graph_path):
        tensor, graph = find(name, graph_path)
        return (tensor if tensor is None else loaded_copy(tensor, base)), graph

    nbits.get_initializer = with_data
    try:
        yield
    finally:
        nbits.get_initializer = find

PACKED_KEY = "edgeprune.packed"  # model metadata: packed B initializer → [[float initializer, first row, rows], ...]


def _packed_table(model) -> dict[str, list]:
    return json.loads(next((p.value for p in model.metadata_props if p.key == PACKED_KEY), None) or "{}")


def packed_rows(model) -> dict[str, tuple[str, int, int]]:
    """float initializer → (packed B initializer, first row, rows) for every linear :func:`pack_matmuls` packed."""
    return {init: (packed, start, rows) for packed, parts in _packed_table(model).items() for init, start, rows in parts}


def pack_matmuls(model, groups: list[list[str]]) -> int:
    """Pack each group of MatMulNBits (float initializer names; same input, bits, block size, accuracy, no zero
    points) into one node whose output a ``Split`` hands back under the original names; returns nodes packed.

    Fewer, larger kernels: decode reads the same bytes in one call instead of three (q/k/v) or two (gate/up).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_weight = {n.input[1]: n for n in graph.node if n.op_type == "MatMulNBits"}
    table = _packed_table(model)
    replace, drop, unused = {}, set(), set()
    for group in groups:
        nodes = [by_weight.get(f"{init}_Q4") for init in group]
        if len(nodes) < 2 or any(n is None for n in nodes):
            continue
        attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
        same = {k: {a.get(k) for a in attrs} for k in ("K", "bits", "block_size", "accuracy_level")}
        if (any(len(v) != 1 for v in same.values()) or len({n.input[0] for n in nodes}) != 1
                or any(len(n.input) > 3 and any(n.input[3:]) for n in nodes)):
            continue
        k, block = attrs[0]["K"], attrs[0]["block_size"]
        rows = [a["N"] for a in attrs]
        b = np.concatenate([numpy_helper.to_array(inits[n.input[1]]).reshape(r, -1) for n, r in zip(nodes, rows)])
        sc = np.concatenate([numpy_helper.to_array(inits[n.input[2]]).reshape(r, -1) for n, r in zip(nodes, rows)])
        name = f"{group[0]}_packed_Q4"
        blocks = -(-k // block)
        graph.initializer.extend([numpy_helper.from_array(b.reshape(sum(rows), blocks, -1), name),
                                  numpy_helper.from_array(sc, name + "_scales")])
        base = nodes[0].name.rsplit("/", 2)[0] if nodes[0].name.count("/") >= 2 else nodes[0].name
        out = f"{base}/packed_MatMulNBits_output_0"
        first = helper.make_node("MatMulNBits", [nodes[0].input[0], name, name + "_scales"], [out], name=f"{base}/packed_MatMulNBits",
                                 domain="com.microsoft", K=k, N=sum(rows), bits=attrs[0].get("bits", 4), block_size=block,
                                 **({"accuracy_level": attrs[0]["accuracy_level"]} if attrs[0].get("accuracy_level") else {}))
        sizes = f"{base}/packed_split_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(rows, np.int64), sizes))
        split = helper.make_node("Split", [out, sizes], [n.output[0] for n in nodes], name=f"{base}/packed_Split", axis=-1)
        replace[id(nodes[0])] = [first, split]
        drop.update(id(n) for n in nodes[1:])
        starts = np.cumsum([0] + rows[:-1])
        table[name] = [[init, int(st), int(r)] for init, st, r in zip(group, starts, rows)]
        unused.update(i for n in nodes for i in n.input[1:3])
    if not replace:
        return 0
    nodes = []
    for n in graph.node:
        if id(n) in drop:
            continue
        nodes.extend(replace.get(id(n), [n]))
    del graph.node[:]
    graph.node.extend(nodes)
    for t in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(t)
    props = [p for p in model.metadata_props if p.key != PACKED_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=PACKED_KEY, value=json.dumps(table))
    return len(replace)


def quantize_rows(weight: np.ndarray, block: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``bits``-bit (4 or 8) block codes of a [rows, cols] table in MatMulNBits' B layout, and scales.

    The zero point is the ops' default (8 for 4 bits, 128 for 8 bits): exactly 0 stays exactly 0, and a
    block's largest-magnitude value maps to code 0 (scale = value / -zero_point).
    """
    rows, cols = weight.shape
    chunk = max(1, (64 << 20) // max(1, weight.itemsize * cols))  # ~64 MB of rows at a time: a 1B model's embedding
    if rows > chunk:  # (1 GB in fp32) would otherwise need ~4 GB of temporaries; rows are independent
        parts = [quantize_rows(weight[i:i + chunk], block, bits) for i in range(0, rows, chunk)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([sc for _, sc in parts])
    zero = 1 << (bits - 1)
    blocks = weight.reshape(rows, cols // block, block)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
    scales = extreme / -float(zero)
    codes = np.clip(np.rint(blocks / np.where(scales == 0, 1, scales)), -zero, zero - 1).astype(np.int16) + zero
    codes = codes.astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4) if bits == 4 else codes
    return packed, scales[..., 0].astype(weight.dtype)


def quantize_token_embedding(model, block: int, accuracy_level: int = 0, bits: int = 4,
                             head_codes: tuple[np.ndarray, np.ndarray] | None = None, base: Path | None = None) -> dict | None:
    """Quantise the token embedding (the Gather reading ``input_ids``) to ``bits`` (4 or 8) in place, and the LM head with it.

    A tied head appears in the export as ``MatMul(x, Transpose(embedding))``; it becomes a MatMulNBits that
    reads the same packed table as the GatherBlockQuantized, so the file holds the codes and the scales once
    (the lookup reads the scales through a Reshape, which ONNX Runtime folds at load). ``head_codes``: 4-bit
    codes calibrated for the head (:func:`calibrate_int4`), used by both instead of round-to-nearest. ``base``: where
    the table's external data is, if it has any (read into a standalone copy, see :func:`~edgeprune.onnx.graph.loaded_copy`).
    Returns what was done, or None when the graph has no such embedding or its width is not a multiple of ``block``.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == "input_ids"), None)
    if gather is None or any(a.name == "axis" and a.i != 0 for a in gather.attribute):
        return None
    from edgeprune.onnx.graph import tensor_array

    from onnx import TensorProto

    table = gather.input[0]
    dims = list(inits[table].dims)
    if len(dims) != 2 or dims[1] % block or inits[table].data_type != TensorProto.FLOAT:
        return None
    rows, cols = dims
    if head_codes is None:  # round to nearest; calibrated codes need no read of the table (1 GB in fp32 for a 1B)
        weight = tensor_array(inits[table], base) if base is not None else numpy_helper.to_array(inits[table])
        packed, scales = quantize_rows(weight, block, bits)
        del weight
    else:
        packed, scales = head_codes
    packed = packed.reshape(rows, cols // block, -1)
    q_name, s_name = table + f"_Q{bits}", table + "_scales"
    graph.initializer.extend([
        numpy_helper.from_array(packed, q_name),
        numpy_helper.from_array(np.ascontiguousarray(scales.reshape(rows, cols // block), dtype=np.float32), s_name),
        numpy_helper.from_array(np.array([rows, cols // block, 1], np.int64), table + "_scales_shape"),
        numpy_helper.from_array(np.array([0] * 2 + [cols], np.int64), table + "_gather_shape"),
    ])

    def transposed(node) -> bool:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        return node.op_type == "Transpose" and node.input[0] == table and perm == [1, 0]

    heads = {n.output[0] for n in graph.node if transposed(n)}
    new_nodes, tied_heads = [], 0
    for node in graph.node:
        if node is gather:
            # Codes gathered as [.., blocks, block], then back to [.., cols]; ids are [batch, seq] in these graphs.
            new_nodes += [
                helper.make_node("Reshape", [s_name, table + "_scales_shape"], [s_name + "_3d"], name=node.name + "_Q_scales"),
                helper.make_node("GatherBlockQuantized", [q_name, node.input[1], s_name + "_3d"], [node.output[0] + "_blocks"],
                                 name=node.name + "_Q4", domain="com.microsoft", gather_axis=0, quantize_axis=2, block_size=block, bits=bits),
                helper.make_node("Reshape", [node.output[0] + "_blocks", table + "_gather_shape"], [node.output[0]], name=node.name + "_Q4_reshape"),
            ]
        elif node.op_type == "MatMul" and node.input[1] in heads:
            new_nodes.append(helper.make_node("MatMulNBits", [node.input[0], q_name, s_name], list(node.output), name=node.name + "_Q4",
                                              domain="com.microsoft", K=cols, N=rows, bits=bits, block_size=block,
                                              **({"accuracy_level": accuracy_level} if accuracy_level else {})))
            tied_heads += 1
        else:
            new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input} | {o.name for o in graph.output}
    new_nodes = [n for n in new_nodes if not (transposed(n) and n.output[0] not in used)]
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    used = {i for n in new_nodes for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used and (t.name == table or t.name.startswith(table + "_"))]:
        graph.initializer.remove(t)  # the float table once nothing reads it
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return {"table": table, "shape": [rows, cols], "tied_heads": tied_heads, "block_size": block, "bits": bits,
            "head": ("shared table (GPTQ codes for the head)" if head_codes is not None else "shared table") if tied_heads
            else "lookup only"}


def _nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Unpack uint8 bytes holding two 4-bit codes each (low nibble first) along the last axis."""
    low, high = packed & 0x0F, packed >> 4
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def zero_codes(model, base: Path, initializer: str, scheme: str) -> np.ndarray | None:
    """Bool [out, in]: where the quantised weight of ``initializer`` dequantises to exactly 0 (code == zero point)."""
    from edgeprune.onnx.graph import tensor_array

    inits = {t.name: t for t in model.graph.initializer}

    def arr(name):
        return tensor_array(inits[name], base) if name in inits else None

    if scheme == "int8":
        q, zp = arr(initializer + "_quantized"), arr(initializer + "_zero_point")
        if q is None:
            return None
        zp = np.zeros((), q.dtype) if zp is None else zp
        if zp.size > 1:  # per channel: along whichever axis it matches
            zp = zp.reshape(1, -1) if zp.size == q.shape[1] else zp.reshape(-1, 1)
        return (q == zp).T  # MatMulInteger weight is [in, out]
    weight, start, rows = packed_rows(model).get(initializer, (initializer + "_Q4", 0, None))
    node = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == weight), None)
    if node is None:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    k, n, block, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs.get("bits", 4)
    rows = n if rows is None else rows
    b = arr(node.input[1]).reshape(n, -1)[start:start + rows]  # a packed node: this linear's rows only
    if bits == 8:  # a layer kept at 8 bits: one byte per code, zero point 128
        return b[:, :k] == np.uint8(128)
    codes = _nibbles(b, k)  # [N, K]: out, in
    if len(node.input) > 3 and node.input[3]:
        k_blocks = -(-k // block)
        zp = _nibbles(arr(node.input[3]).reshape(n, -1)[start:start + rows], k_blocks)
        zp = np.repeat(zp, block, axis=1)[:, :k]
    else:
        zp = np.uint8(8)  # MatMulNBits' default zero point for symmetric 4-bit codes
    return codes == zp


def check_quantized(path: Path, torch_layers: dict[str, torch.nn.Linear], fp32_layers: dict[str, str], patterns: dict[str, str],
                    scheme: str) -> list[QuantLayer]:
    """Per pruned layer: do its zeros dequantise to exactly 0, and does its N:M pattern hold on the codes?"""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = []
    for layer, linear in torch_layers.items():
        zero = linear.weight.detach().cpu() == 0
        init = fp32_layers.get(layer)
        codes_zero = zero_codes(model, path.parent, init, scheme) if init else None
        pattern = patterns.get(layer)
        if codes_zero is None or codes_zero.shape != tuple(zero.shape):
            out.append(QuantLayer(layer, init, int(zero.sum()), None, pattern, None))
            continue
        codes_zero = torch.from_numpy(np.ascontiguousarray(codes_zero))
        nm_ok = None
        if pattern:
            spec = parse_sparsity(pattern)
            nm_ok = is_nm((~codes_zero).float(), spec.n, spec.m)
        out.append(QuantLayer(layer, init, int(zero.sum()), int((zero & codes_zero).sum()), pattern, nm_ok))
    return out
