"""Weight quantisation of an exported graph with ONNX Runtime's quantisers, and the check that
pruned zeros survive it: a weight that was exactly zero must dequantise to exactly zero
(its quantised code equals the zero point), so N:M patterns hold in the quantised graph too.

int8: dynamic quantisation, per output channel, symmetric int8 weights (MatMulInteger).
int4: block-wise MatMulNBits along the input dimension (block_size, symmetric or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.onnx import QuantizeConfig
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


def quantize_graph(src: Path, dst: Path, config: QuantizeConfig, external_data: bool) -> None:
    """Write a weight-quantised copy of ``src`` to ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if config.scheme == "int8":
        # MatMul only: embeddings (Gather) stay float, as the pruned layers are all MatMuls.
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                         use_external_data_format=external_data)
        return
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=config.block_size, is_symmetric=config.symmetric)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external_data)


def _nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Unpack uint8 bytes holding two 4-bit codes each (low nibble first) along the last axis."""
    low, high = packed & 0x0F, packed >> 4
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def zero_codes(model, base: Path, initializer: str, scheme: str) -> np.ndarray | None:
    """Bool [out, in]: where the quantised weight of ``initializer`` dequantises to exactly 0 (code == zero point)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}

    def arr(name):
        return numpy_helper.to_array(inits[name], base_dir=str(base)) if name in inits else None

    if scheme == "int8":
        q, zp = arr(initializer + "_quantized"), arr(initializer + "_zero_point")
        if q is None:
            return None
        zp = np.zeros((), q.dtype) if zp is None else zp
        if zp.size > 1:  # per channel: along whichever axis it matches
            zp = zp.reshape(1, -1) if zp.size == q.shape[1] else zp.reshape(-1, 1)
        return (q == zp).T  # MatMulInteger weight is [in, out]
    node = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == initializer + "_Q4"), None)
    if node is None:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    codes = _nibbles(arr(node.input[1]).reshape(n, -1), k)  # [N, K]: out, in
    if len(node.input) > 3 and node.input[3]:
        k_blocks = -(-k // block)
        zp = _nibbles(arr(node.input[3]).reshape(n, -1), k_blocks)
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
