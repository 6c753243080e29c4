"""What ``edgeprune export`` and ``edgeprune quantize`` take, as frozen dataclasses (the Python API and recipes take the
same ones), with the names they accept and the graph's file name. A leaf: the exporter and the quantiser both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeprune.data import CalibConfig
from edgeprune.errors import EdgepruneError

ONNX_FILE = "model.onnx"
QUANT_SCHEMES = ("int8", "int4")
INT4_METHODS = ("gptq", "rtn")


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight quantisation after export: int8 (dynamic, per output channel) or int4 (MatMulNBits, block-wise)."""

    scheme: str = "int4"  # as `edgeprune quantize` (tests/test_cli.py checks that CLI and config defaults agree)
    block_size: int = 32  # int4: weights per scale along the input dimension
    symmetric: bool = True  # int4: symmetric codes (zero point 8) or an asymmetric zero point per block
    head: bool = True  # also the token embedding and the LM head (one shared block table when tied; int8: 8 bits)
    head_bits: int = 4  # int4: bits for that table (one table when the head is tied); 8 adds 14 MB on SmolLM2 for ~5% lower perplexity
    accuracy_level: int = 4  # int4: MatMulNBits compute type; 4 = int8 activations (fastest on CPU), 0 = fp32 as stored
    method: str = "gptq"  # int4 (symmetric): gptq = calibrated codes (pruned zeros held at 0), rtn = round to nearest
    calib: CalibConfig = field(default_factory=CalibConfig)  # int4 gptq: calibration text
    act_order: bool = True  # int4 gptq: columns by decreasing input energy, with static group scales
    eight_bit_budget: float = 0.0  # int4 gptq: share of linear weights that may stay at 8 bits (largest GPTQ error first, whole stages)
    damp: float = 0.01  # int4 gptq: Hessian dampening, as a fraction of its mean diagonal
    pack: bool = True  # int4: linears that read the same input (q/k/v, gate/up) become one MatMulNBits + Split

    def __post_init__(self):
        if self.method not in INT4_METHODS:
            raise EdgepruneError(f"unknown int4 method '{self.method}'", f"use one of {', '.join(INT4_METHODS)}")
        if self.scheme not in QUANT_SCHEMES:
            raise EdgepruneError(f"unknown quantisation '{self.scheme}'", "use int8 or int4")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise EdgepruneError(f"int4 block size {self.block_size} is not a power of two >= 16", "use 32, 64 or 128")
        if not 0 <= self.eight_bit_budget < 1:
            raise EdgepruneError(f"eight_bit_budget {self.eight_bit_budget} is not in [0, 1)", "use e.g. 0.04, or 0 for all 4-bit")
        if not self.damp > 0:
            raise EdgepruneError(f"GPTQ damp {self.damp} is not positive", "use e.g. --damp 0.01 (a fraction of the Hessian's mean diagonal)")
        if self.head_bits not in (4, 8):
            raise EdgepruneError(f"head bits {self.head_bits} is not 4 or 8", "use head_bits = 4 (size, speed) or 8 (quality)")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise EdgepruneError(f"int4 accuracy level {self.accuracy_level} is not one of 0-4", "use 4 (int8 compute) or 0 (fp32)")
        if self.scheme == "int4" and self.accuracy_level == 0 and (self.eight_bit_budget > 0 or self.head and self.head_bits == 8):
            # ORT 1.32's 8-bit MatMulNBits at fp32 compute ran SmolLM2 10-25x slower than at level 4 (BENCHMARKS §9)
            raise EdgepruneError("8-bit layers at int4 accuracy level 0 decode 10-25x slower on CPU",
                                 "with --accuracy-level 0 use --head-bits 4 --eight-bit-budget 0")


@dataclass(frozen=True)
class ExportConfig:
    """What ``edgeprune export`` takes, as the Python API and recipes take it."""

    pooling: bool = False  # encoders: add mean pooling + L2 normalisation → output "sentence_embedding"
    verify: bool = True  # compare with PyTorch; fail when a tolerance is exceeded
    atol: float = 1e-3  # max |torch − onnx| allowed on any output
    min_cosine: float = 0.9999  # pooled embeddings: lowest cosine to PyTorch allowed
    new_tokens: int = 32  # decoders: greedy tokens that must match exactly
    opset: int | None = None  # None: optimum's default for the architecture
    fuse: bool = True  # Llama-family decoders: attention as ORT's GroupQueryAttention (SmolLM2 int4 decode 1.67x faster here)
    quantize: QuantizeConfig | None = None  # also write model_int8.onnx / model_int4.onnx next to the float graph
    ort_format: bool = False  # also write .ort files (ORT mobile / minimal builds) and required_operators.config
