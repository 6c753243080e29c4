"""ONNX: verified export (one merged decoder graph with a KV cache, or an encoder graph), quantisation of an
exported folder, evaluation through ONNX Runtime, and the mobile format. This file only re-exports the public
names: configs.py holds ExportConfig and QuantizeConfig, workflow.py export() and quantize().

    edgeprune export out/smol-2of4 --out out/smol-2of4-onnx
"""

from edgeprune.onnx.configs import INT4_METHODS, ONNX_FILE, QUANT_SCHEMES, ExportConfig, QuantizeConfig
from edgeprune.onnx.workflow import ExportReport, export, quantize

__all__ = ["INT4_METHODS", "ONNX_FILE", "QUANT_SCHEMES", "ExportConfig", "ExportReport", "QuantizeConfig", "export", "quantize"]
