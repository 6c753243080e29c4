"""Convert an unstructured-pruned (or dense) model folder to N:M by re-fitting, not just projecting.

The re-fit runs the ``attention`` method inside the N:M constraint, starting from
the model's current weights (so pruned weights start pruned): Q/K masks are
optimised on the attention loss, the other linears re-fitted by OBS towards the
input model's block outputs. Plain projection (top-N of |W| in every M) is
measured on the same held-out text so the gain is reported, not assumed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeprune.data import CalibConfig, calibration_batch, eval_windows, load_text
from edgeprune.errors import EdgepruneError
from edgeprune.metadata import read_metadata
from edgeprune.pruning.engine import prune_model
from edgeprune.pruning.workflow import PruneConfig, make_pruner, save_pruned
from edgeprune.sparsity import parse_sparsity


@dataclass(frozen=True)
class NMConfig:
    """Everything ``edgeprune nm`` takes, as the Python API and recipes take it."""

    pattern: str = "2:4"
    method: str = "attention"  # the method that re-fits inside the pattern
    calib: CalibConfig = field(default_factory=CalibConfig)
    device: str = "cpu"
    overrides: dict[str, str] = field(default_factory=dict)  # glob on layer name → "dense" or another N:M
    options: dict[str, Any] = field(default_factory=dict)  # method hyperparameters
    permute: bool = False  # reorder input channels first (absorbed exactly)
    compare: bool = True  # also measure plain projection on held-out text and report the gain
    eval_text: str = "pydoc"
    eval_max_windows: int = 8

    def __post_init__(self):
        spec = parse_sparsity(self.pattern)
        if not spec.is_nm:
            raise EdgepruneError(f"'{self.pattern}' is not an N:M pattern", "use --pattern N:M, e.g. 2:4")

    def prune_config(self) -> PruneConfig:
        return PruneConfig(method=self.method, sparsity=self.pattern, calib=self.calib, device=self.device,
                           overrides=self.overrides, options=self.options, permute=self.permute)


def convert_nm(
    model_dir: str | Path,
    out: str | Path,
    nm: NMConfig = NMConfig(),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Re-fit ``model_dir`` to the N:M pattern ``nm.pattern``; returns the quality comparison."""
    config = nm.prune_config()
    compare_projection, eval_text, eval_max_windows = nm.compare, nm.eval_text, nm.eval_max_windows
    from edgeprune.data import check_text
    from edgeprune.evaluation.metrics import perplexity
    from edgeprune.models.loading import load_model
    from edgeprune.pruning.workflow import check_prune

    spec, pruner, device = check_prune(model_dir, out, config, overwrite)
    if compare_projection:
        check_text(eval_text, "eval", 1, "eval text")
    loaded = load_model(model_dir, device=device)
    calib_ids = calibration_batch(loaded.tokenizer, config.calib, loaded.model)
    windows = eval_windows(loaded.tokenizer, load_text(eval_text, "eval"), 512, eval_max_windows) if loaded.is_decoder else None

    comparison: dict = {"from": str(model_dir), "pattern": str(spec), "eval_text": eval_text}
    if compare_projection and windows is not None:
        projected = copy.deepcopy(loaded.model)
        prune_model(projected, loaded.adapter, make_pruner("magnitude"), spec, None, config.overrides, error_samples=0)
        comparison["input_perplexity"] = perplexity(loaded.model, windows)
        comparison["projection_perplexity"] = perplexity(projected, windows)
        del projected
    report = prune_model(
        loaded.model, loaded.adapter, pruner, spec, calib_ids, config.overrides, config.batch_size, device, progress,
        permute=config.permute,
    )
    if windows is not None:
        comparison["refit_perplexity"] = perplexity(loaded.model, windows)
        if "projection_perplexity" in comparison:
            comparison["gain_over_projection"] = 1 - comparison["refit_perplexity"] / comparison["projection_perplexity"]
    source = _dense_source(Path(model_dir)) or str(model_dir)
    loaded.source = source
    save_pruned(loaded, report, out, config, device, int(calib_ids.numel()), overwrite, extra={"conversion": comparison})
    return comparison


def _dense_source(folder: Path) -> str | None:
    meta = read_metadata(folder, strict=False)
    return meta.get("source_model") if meta is not None else None


__all__ = ["NMConfig", "convert_nm"]
