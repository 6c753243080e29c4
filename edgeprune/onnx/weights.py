"""Sparsity after export: read the weight initializers of an ONNX graph and check that the
zeros pruning put into each linear layer (and its N:M pattern) are still there.

ONNX MatMul stores a linear weight as [in, out] (the transpose of ``nn.Linear.weight``),
Gemm with ``transB=1`` as [out, in]; every check here first brings it back to [out, in] so
N:M groups run along the input dimension, as :mod:`edgeprune.sparsity` defines them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.sparsity import is_nm, parse_sparsity


@dataclass(frozen=True)
class LayerSparsity:
    """One pruned linear layer, found in the ONNX graph by its values."""

    layer: str  # torch module name, e.g. model.layers.0.self_attn.q_proj
    initializer: str | None  # ONNX initializer holding it (None: not found)
    shape: tuple[int, int]  # ONNX shape as stored
    layout: str | None  # "in,out" (MatMul) or "out,in" (Gemm transB=1)
    torch_zeros: int
    onnx_zeros: int | None
    pattern: str | None  # N:M pattern it was pruned to, from edgeprune.json
    nm_ok: bool | None  # N:M holds on the ONNX weight (None: no pattern to check)
    unchanged: bool = False  # the ONNX weight holds exactly the torch values

    @property
    def zeros_preserved(self) -> bool:
        return self.onnx_zeros is not None and self.onnx_zeros >= self.torch_zeros


@dataclass
class SparsityReport:
    layers: list[LayerSparsity] = field(default_factory=list)
    initializers: dict[str, dict] = field(default_factory=dict)  # name → {"shape", "zeros", "size"}, for every ≥2-D initializer

    @property
    def torch_zeros(self) -> int:
        return sum(l.torch_zeros for l in self.layers)

    @property
    def onnx_zeros(self) -> int:
        return sum(l.onnx_zeros or 0 for l in self.layers)

    @property
    def lost(self) -> list[LayerSparsity]:
        """Layers that had zeros in PyTorch but not (all of) them in ONNX."""
        return [l for l in self.layers if l.torch_zeros and not l.zeros_preserved]

    @property
    def nm_violations(self) -> list[LayerSparsity]:
        return [l for l in self.layers if l.nm_ok is False]

    def to_dict(self) -> dict:
        return {
            "torch_zeros": self.torch_zeros,
            "onnx_zeros": self.onnx_zeros,
            "zeros_preserved": not self.lost,
            "nm_ok": not self.nm_violations if any(l.pattern for l in self.layers) else None,
            "layers": [l.__dict__ | {"shape": list(l.shape)} for l in self.layers],
            "initializers": self.initializers,
        }


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _module_name(node_name: str) -> str:
    """'/model/layers.0/self_attn/q_proj/MatMul' → 'model.layers.0.self_attn.q_proj' (the torch exporter's scopes)."""
    return ".".join(part for part in node_name.split("/")[:-1] if part)


def linear_weights(graph) -> dict[str, tuple[object, str, str]]:
    """Initializers used as the weight of a MatMul/Gemm, as (initializer, layout, module name from the node's scope),
    keyed by initializer name. Read a value with :func:`~edgeprune.onnx.graph.tensor_array` (external data too)."""
    inits = {t.name: t for t in graph.initializer}
    found: dict[str, tuple[object, str, str]] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        layout = "in,out"
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            layout = "out,in"
        tensor = inits[node.input[1]]
        if len(tensor.dims) == 2 and tensor.name not in found:
            found[tensor.name] = (tensor, layout, _module_name(node.name))
    return found


def layer_patterns(metadata: dict | None) -> dict[str, str]:
    """Layer name → N:M pattern it was pruned to, from a source folder's edgeprune.json."""
    out = {}
    for record in (metadata or {}).get("layers", []):
        pattern = str(record.get("pattern", ""))
        if ":" in pattern:
            out[record["name"]] = pattern
    return out


def check_sparsity(onnx_path: Path, torch_layers: dict[str, torch.nn.Linear], patterns: dict[str, str]) -> SparsityReport:
    """Match each torch linear to the ONNX initializer holding exactly its values; count zeros, check N:M."""
    import onnx

    from edgeprune.onnx.graph import tensor_array

    # One weight in memory at a time (a 1B model's graph holds 5.6 GB of them): digests first, values re-read on a match.
    model = onnx.load(str(onnx_path), load_external_data=False)
    base = onnx_path.parent
    report = SparsityReport()
    for tensor in model.graph.initializer:
        if len(tensor.dims) >= 2:
            array = tensor_array(tensor, base)
            report.initializers[tensor.name] = {"shape": list(array.shape), "zeros": int((array == 0).sum()), "size": int(array.size)}

    by_digest: dict[tuple, tuple[str, object, str]] = {}
    by_scope: dict[str, tuple[str, object, str]] = {}
    for name, (tensor, layout, scope) in linear_weights(model.graph).items():
        array = tensor_array(tensor, base)
        out_in = array.T if layout == "in,out" else array
        by_digest.setdefault((out_in.shape, out_in.dtype.str, _digest(out_in)), (name, tensor, layout))
        by_scope.setdefault(scope, (name, tensor, layout))
        del array, out_in

    for layer, linear in torch_layers.items():
        w = linear.weight.detach().cpu().numpy()
        torch_zeros = int((w == 0).sum())
        pattern = patterns.get(layer)
        # Exact values first; the node scope is a fallback that lets a changed weight still be reported.
        exact = by_digest.get((w.shape, w.dtype.str, _digest(w)))
        hit = exact or by_scope.get(layer)
        if hit is None or int(np.prod(hit[1].dims)) != w.size:
            report.layers.append(LayerSparsity(layer, None, tuple(w.shape), None, torch_zeros, None, pattern, None))
            continue
        name, tensor, layout = hit
        array = tensor_array(tensor, base)
        out_in = torch.from_numpy(np.ascontiguousarray(array.T if layout == "in,out" else array))
        nm_ok = None
        if pattern:
            spec = parse_sparsity(pattern)
            nm_ok = is_nm(out_in, spec.n, spec.m)
        report.layers.append(
            LayerSparsity(layer, name, tuple(array.shape), layout, torch_zeros, int((array == 0).sum()), pattern, nm_ok, exact is not None)
        )
    return report
