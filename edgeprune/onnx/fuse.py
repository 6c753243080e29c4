"""Fused attention for exported Llama-family decoders: ONNX Runtime's ``GroupQueryAttention``.

optimum's merged decoder graph spells every attention block out in ~150 small ops (shape arithmetic,
RoPE halves, KV-cache concat, GQA head repetition, the causal mask, softmax with a NaN guard). With
int4 weights those ops, not the matrix products, set SmolLM2's decode time: ~7,400 nodes in all. This
pass replaces each block's attention core, from the q/k/v projections to the o_proj input, with one
``com.microsoft.GroupQueryAttention`` node (cache append, causal mask and GQA inside the kernel), preceded by
``com.microsoft.RotaryEmbedding`` on q and k in the layers the adapter says use RoPE (SmolLM3 skips it in some),
then drops what no output needs. The q/k/v/o ``MatMul`` nodes and their weights are left exactly as
they were, so the sparsity checks and the quantiser see the same linears.

RMSNorm: the exported ``Pow → ReduceMean → Add(eps) → Sqrt → Div → Mul → Mul(weight)`` chain becomes ONNX Runtime's
``SimplifiedLayerNormalization``, and with the residual ``Add`` in front of it ``com.microsoft.SkipSimplifiedLayerNormalization``
(its fourth output is the residual sum the next block reads), as the GenAI model builder writes them (:func:`fuse_norms`).

Padding: the kernel is told that every row holds the whole sequence (``seqlens_k`` = total length - 1) and
an additive ``attention_bias`` built from ``attention_mask`` hides the padded keys, while ``position_ids`` (kept
as an input, as optimum's graph has it) places each token for RoPE. So left-padded batches, as optimum's
``ORTModelForCausalLM`` and ONNX Runtime GenAI feed them, give the same logits on every real token as PyTorch,
and so do right-padded and unpadded ones. ``past_key_values.*`` / ``present.*`` keep optimum's names and shapes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError

ATTENTION_OP = "GroupQueryAttention"
ROTARY_OP = "RotaryEmbedding"
_PROJ = re.compile(r"^/model/layers\.(\d+)/self_attn/([qkvo])_proj/MatMul$")
_P = "/edgeprune_attention/"


@dataclass
class FuseReport:
    attention: str  # "GroupQueryAttention", or "unfused" with the reason
    layers: int
    nodes_before: int
    nodes_after: int
    reason: str | None = None
    norms: int = 0  # RMSNorms fused (SimplifiedLayerNormalization)
    skip_norms: int = 0  # of which with their residual Add (SkipSimplifiedLayerNormalization)

    def to_dict(self) -> dict:
        return asdict(self)


def _rotary_tables(model, max_positions: int):
    """cos/sin caches [positions, rotary_dim/2] exactly as the model's own rotary embedding computes them
    (its rope scaling and attention scaling included)."""
    import torch

    rotary = model.model.rotary_emb
    positions = torch.arange(max_positions, dtype=torch.long)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    half = cos.shape[-1] // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def _skip(reason: str, nodes: int) -> FuseReport:
    return FuseReport(attention="unfused", layers=0, nodes_before=nodes, nodes_after=nodes, reason=reason)


def fuse_attention(onnx_path: Path, model, adapter) -> FuseReport:
    """Rewrite ``onnx_path`` in place (via a temporary file) with fused attention; the report says what happened.

    ``model`` is the PyTorch model the graph was exported from (head sizes, RoPE tables, sliding window), and
    ``adapter`` its architecture adapter (which layers apply RoPE).
    Graphs this pass does not recognise are left untouched, with the reason in the report.
    """
    import os

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    cfg = model.config
    graph_model = onnx.load(str(onnx_path), load_external_data=False)
    graph = graph_model.graph
    before = len(graph.node)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return _skip("sliding-window attention is not fused", before)
    if not hasattr(getattr(model, "model", None), "rotary_emb"):
        return _skip("the model has no rotary embedding module", before)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rotary_dim = int(head_dim * getattr(cfg, "partial_rotary_factor", 1.0))
    if rotary_dim != head_dim:
        return _skip("partial rotary embeddings are not fused", before)

    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    proj: dict[int, dict[str, onnx.NodeProto]] = {}
    for n in graph.node:
        m = _PROJ.match(n.name)
        if m and n.op_type == "MatMul":
            proj.setdefault(int(m.group(1)), {})[m.group(2)] = n
    n_layers = cfg.num_hidden_layers
    rope_layers = [adapter.uses_rope(block) for block in adapter.blocks(model)]
    if sorted(proj) != list(range(n_layers)) or any(len(p) != 4 for p in proj.values()):
        return _skip("the graph does not have one q/k/v/o projection per decoder layer", before)
    outputs = {o.name for o in graph.output}
    inputs = {x.name: x for x in graph.input}

    def projected(node) -> str:
        """The projection's output, after its bias Add when it has one (Qwen2)."""
        out = node.output[0]
        users = consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and any(i in inits for i in users[0].input):
            return users[0].output[0]
        return out

    def width(node) -> int:
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            raise KeyError(node.name)
        return int(weight.dims[1])

    try:
        widths = {i: (width(p["q"]), width(p["k"])) for i, p in proj.items()}
    except KeyError as exc:
        return _skip(f"{exc.args[0]} has no 2-D weight initialiser", before)
    for i, (q, k) in widths.items():
        if q % head_dim or k % head_dim or (q // head_dim) % (k // head_dim):
            return _skip(f"layer {i}: {q // head_dim} query heads are not a multiple of {k // head_dim} KV heads", before)
        if f"present.{i}.key" not in outputs or f"past_key_values.{i}.key" not in inputs:
            return _skip(f"layer {i} has no KV-cache input/output pair", before)

    cos, sin = _rotary_tables(model, int(cfg.max_position_embeddings))

    def constant(name, value):  # a Constant node, not an initialiser: stays inline even when weights go external
        return helper.make_node("Constant", [], [_P + name], value=numpy_helper.from_array(value, _P + name), name=_P + name)

    if "input_ids" not in inputs or "attention_mask" not in inputs:
        return _skip("the graph has no input_ids / attention_mask inputs", before)
    float_type = inputs["past_key_values.0.key"].type.tensor_type.elem_type
    lowest = np.finfo(helper.tensor_dtype_to_np_dtype(float_type)).min

    def node(op, inputs_, name, **attrs):
        return helper.make_node(op, [i if i in ("attention_mask", "input_ids") else _P + i for i in inputs_], [_P + name],
                                name=_P + name, **attrs)

    new_nodes = [
        constant("axes12", np.array([1, 2], np.int64)), constant("one", np.array(1, np.int64)),
        constant("index0", np.array([0], np.int64)), constant("index1", np.array([1], np.int64)),
        constant("zero_bias", np.array(0, helper.tensor_dtype_to_np_dtype(float_type))),
        constant("masked_bias", np.array(lowest, helper.tensor_dtype_to_np_dtype(float_type))),
        # total length T = attention_mask.shape[1]; every row counts as holding all T positions (padding is the bias's job)
        node("Shape", ["attention_mask"], "mask_shape"),
        node("Gather", ["mask_shape", "index1"], "total_1d", axis=0),
        node("Gather", ["mask_shape", "index0"], "batch_1d", axis=0),
        node("Squeeze", ["total_1d"], "total"),
        node("Cast", ["total"], "total_len", to=TensorProto.INT32),
        node("Sub", ["total", "one"], "last"),
        node("Cast", ["last"], "last_i32", to=TensorProto.INT32),
        node("Expand", ["last_i32", "batch_1d"], "seqlens_k"),
        # additive bias [batch, 1, new tokens, T]: 0 on real keys, the lowest float on padded ones
        node("Cast", ["attention_mask"], "keep", to=TensorProto.BOOL),
        node("Where", ["keep", "zero_bias", "masked_bias"], "bias_2d"),
        node("Unsqueeze", ["bias_2d", "axes12"], "bias_4d"),
        node("Shape", ["input_ids"], "ids_shape"),
        node("Gather", ["ids_shape", "index1"], "new_1d", axis=0),
        node("Concat", ["batch_1d", "index1", "new_1d", "total_1d"], "bias_shape", axis=0),
        node("Expand", ["bias_4d", "bias_shape"], "attention_bias"),
    ]
    if "position_ids" not in inputs:
        return _skip("the graph has no position_ids input", before)
    new_inits = [
        numpy_helper.from_array(np.ascontiguousarray(cos), _P + "cos_cache"),
        numpy_helper.from_array(np.ascontiguousarray(sin), _P + "sin_cache"),
    ]
    replaced, attn_info = set(), []
    for i in range(n_layers):
        p = proj[i]
        q_heads, kv_heads = widths[i][0] // head_dim, widths[i][1] // head_dim
        attn_out = f"/model/layers.{i}/self_attn/{ATTENTION_OP}_output_0"
        rotated = {"q": projected(p["q"]), "k": projected(p["k"])}  # as they are in layers without RoPE (SmolLM3)
        if rope_layers[i]:  # RoPE at the given positions, so the cache holds what PyTorch's does
            for which, heads in (("q", q_heads), ("k", kv_heads)):
                rotated[which] = f"/model/layers.{i}/self_attn/{which}_rotary/{ROTARY_OP}_output_0"
                new_nodes.append(helper.make_node(
                    ROTARY_OP, [projected(p[which]), "position_ids", _P + "cos_cache", _P + "sin_cache"], [rotated[which]],
                    name=f"/model/layers.{i}/self_attn/{which}_rotary/{ROTARY_OP}", domain="com.microsoft", num_heads=heads,
                    interleaved=0))
        new_nodes.append(helper.make_node(
            ATTENTION_OP,
            [rotated["q"], rotated["k"], projected(p["v"]), f"past_key_values.{i}.key", f"past_key_values.{i}.value",
             _P + "seqlens_k", _P + "total_len", "", "", "", _P + "attention_bias"],
            [attn_out, f"present.{i}.key", f"present.{i}.value"],
            name=f"/model/layers.{i}/self_attn/{ATTENTION_OP}", domain="com.microsoft",
            num_heads=q_heads, kv_num_heads=kv_heads, scale=float(head_dim) ** -0.5, do_rotary=0,
        ))
        p["o"].input[0] = attn_out
        attn_info.append(helper.make_tensor_value_info(  # typed, so onnx shape inference (the int8 quantiser) can see through it
            attn_out, inputs[f"past_key_values.{i}.key"].type.tensor_type.elem_type, ["batch_size", "sequence_length", q_heads * head_dim]))
        replaced.update((f"present.{i}.key", f"present.{i}.value"))

    kept = [n for n in graph.node if not replaced.intersection(n.output)] + new_nodes
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    # ONNX Runtime's own graph helper: drop what no output needs (nodes, initialisers), then re-order
    tidy = OnnxModel(graph_model)
    tidy.prune_graph()
    tidy.topological_sort()
    graph.value_info.clear()  # stale shapes of removed tensors
    graph.value_info.extend(attn_info)
    norms, skip_norms = fuse_norms(graph_model, float_type)
    tidy.prune_graph()  # the chains the norms replaced
    tidy.topological_sort()
    if not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    tmp = onnx_path.with_name(onnx_path.name + ".fusing")
    try:
        onnx.save(graph_model, str(tmp))  # external weights (if any) keep their file and offsets: only nodes changed
        os.replace(tmp, onnx_path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EdgepruneError(f"could not write the fused graph ({type(exc).__name__}: {exc})", "export with --no-fuse") from None
    return FuseReport(attention=ATTENTION_OP, layers=n_layers, nodes_before=before, nodes_after=len(graph.node),
                      norms=norms, skip_norms=skip_norms)


def fuse_norms(graph_model, float_type: int) -> tuple[int, int]:
    """Rewrite the exported RMSNorm chains in place; returns (norms fused, of which with their residual Add).

    Matched from each ``Pow(x, 2)``: ``ReduceMean`` over the last axis → ``Add(eps)`` → ``Sqrt`` → ``Div(1, ·)`` →
    ``Mul(x, ·)`` → (float→float ``Cast``) → ``Mul(weight, ·)``, where ``x`` may itself be a no-op float ``Cast`` of the
    norm's input. When that input is an ``Add`` of two computed tensors (the residual stream), the Add is folded in:
    ``SkipSimplifiedLayerNormalization(a, b, weight)`` whose fourth output (a + b) replaces the Add's output for
    every other reader. Nodes left without readers are dropped by the caller's graph pruning. The new outputs get
    typed value_info (``float_type``), so onnx shape inference (the int8 quantiser) can see through these ops.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = graph_model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def const(name):
        n = producer.get(name)
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        t = inits.get(name)
        return numpy_helper.to_array(t) if t is not None else None

    def scalar(name) -> float | None:
        value = const(name)
        return float(value.ravel()[0]) if value is not None and value.size == 1 else None

    def stored(name) -> str | None:
        """The initialiser behind ``name``, also through optimum's Identity nodes for deduplicated (equal) weights."""
        while name not in inits and producer.get(name) is not None and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return name if name in inits else None

    def only_reader(name, op):
        users = readers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def float_cast(n) -> bool:
        return n is not None and n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT

    fused, skipped, drop, add_nodes, renames, typed = 0, 0, set(), {}, {}, []
    for pow_ in [n for n in graph.node if n.op_type == "Pow"]:
        if scalar(pow_.input[1]) != 2.0:
            continue
        x = pow_.input[0]
        mean = only_reader(pow_.output[0], "ReduceMean")
        axes = const(mean.input[1]) if mean is not None and len(mean.input) > 1 else None
        if mean is None or axes is None or list(np.ravel(axes)) != [-1]:
            continue
        add = only_reader(mean.output[0], "Add")
        eps = scalar(add.input[1]) if add is not None else None
        sqrt = only_reader(add.output[0], "Sqrt") if add is not None else None
        div = only_reader(sqrt.output[0], "Div") if sqrt is not None else None
        if eps is None or div is None or div.input[1] != sqrt.output[0] or scalar(div.input[0]) != 1.0:
            continue
        scale = only_reader(div.output[0], "Mul")
        if scale is None or x not in scale.input:
            continue
        chain = [pow_, mean, add, sqrt, div, scale]
        last = scale
        cast = only_reader(scale.output[0], "Cast")
        if float_cast(cast):
            chain.append(cast)
            last = cast
        weigh = only_reader(last.output[0], "Mul")
        weight = next((stored(i) for i in weigh.input if stored(i)), None) if weigh is not None else None
        if weight is None:
            continue
        chain.append(weigh)
        source, x_cast = x, producer.get(x)
        if float_cast(x_cast):
            source = x_cast.input[0]
        residual = producer.get(source)
        inputs = [x, weight]
        op, domain, outputs = "SimplifiedLayerNormalization", "", [weigh.output[0]]
        if (residual is not None and residual.op_type == "Add" and len(residual.input) == 2
                and not any(i in inits or const(i) is not None for i in residual.input)):
            op, domain = "SkipSimplifiedLayerNormalization", "com.microsoft"
            inputs = [residual.input[0], residual.input[1], weight]
            outputs = [weigh.output[0], "", "", x]  # the sum, under the name the norm and the next residual read
            drop.add(id(residual))
            if float_cast(x_cast):
                drop.add(id(x_cast))
                renames[source] = x  # other readers of the Add's own output
            skipped += 1
        node = helper.make_node(op, inputs, outputs, name=weigh.name.rsplit("/", 1)[0] + "/" + op, epsilon=eps,
                                **({"axis": -1, "stash_type": 1} if op == "SimplifiedLayerNormalization" else {}))
        node.domain = domain
        add_nodes[id(weigh)] = node
        width = inits[weight].dims
        typed += [helper.make_tensor_value_info(o, float_type, ["batch_size", "sequence_length", *width]) for o in outputs if o]
        drop.update(id(n) for n in chain if n is not weigh)
        fused += 1
    if not fused or renames.keys() & {o.name for o in graph.output}:
        return 0, 0  # nothing matched, or a residual sum is also a graph output: the graph stays as it was
    nodes = []
    for n in graph.node:
        if id(n) in drop:
            continue
        n = add_nodes.get(id(n), n)
        for k, i in enumerate(n.input):
            if i in renames:
                n.input[k] = renames[i]
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    known = {v.name for v in graph.value_info}
    graph.value_info.extend(v for v in typed if v.name not in known)
    if skipped and not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused, skipped

