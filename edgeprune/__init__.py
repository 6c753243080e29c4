"""edgeprune: prune transformer models (attention-aware masks, N:M), export to ONNX, profile on devices.

Public API (imports are lazy so ``import edgeprune`` stays cheap)::

    import edgeprune
    lm = edgeprune.load_model("smollm2-135m")
    edgeprune.prune("smollm2-135m", "out/smollm2-2of4", edgeprune.PruneConfig(method="attention", sparsity="2:4"))
    edgeprune.evaluate("out/smollm2-2of4")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "edgeprune.models.loading",
    "LoadedModel": "edgeprune.models.loading",
    "BUNDLED": "edgeprune.models.loading",
    "prune": "edgeprune.pruning",
    "PruneConfig": "edgeprune.pruning",
    "PRUNERS": "edgeprune.pruning",
    "CalibConfig": "edgeprune.data",
    "evaluate": "edgeprune.evaluation",
    "EvalResult": "edgeprune.evaluation",
    "to_nm": "edgeprune.sparsity",
    "is_nm": "edgeprune.sparsity",
    "check_nm": "edgeprune.sparsity",
    "parse_sparsity": "edgeprune.sparsity",
    "pack": "edgeprune.sparsity.packed",
    "unpack": "edgeprune.sparsity.packed",
    "PackReport": "edgeprune.sparsity.packed",
    "convert_nm": "edgeprune.pruning.convert",
    "export": "edgeprune.onnx",
    "ExportConfig": "edgeprune.onnx",
    "QuantizeConfig": "edgeprune.onnx",
    "quantize": "edgeprune.onnx",
    "NMConfig": "edgeprune.pruning.convert",
    "structured": "edgeprune.structured",
    "StructuredConfig": "edgeprune.structured",
    "EvalConfig": "edgeprune.evaluation",
    "ProfileConfig": "edgeprune.profiling",
    "run_recipe": "edgeprune.recipes",
    "load_recipe": "edgeprune.recipes",
    "profile": "edgeprune.profiling",
    "Workload": "edgeprune.profiling",
    "SshOptions": "edgeprune.profiling",
    "load_device": "edgeprune.profiling.devices",
    "EdgepruneError": "edgeprune.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeprune' has no attribute '{name}'")
