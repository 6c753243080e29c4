"""Pruning: methods register here (one module each: attention, magnitude, sparsegpt, wanda; the math in kernels.py,
the per-block loop in engine.py); :func:`prune` in workflow.py runs one on a model and writes a HF folder. This file
imports the methods, so that they are registered, and re-exports the public names.
"""

from edgeprune.pruning import attention, magnitude, sparsegpt, wanda  # noqa: F401  (register methods)
from edgeprune.pruning.engine import Pruner, PruneReport, prune_model
from edgeprune.pruning.registry import PRUNERS
from edgeprune.pruning.workflow import PruneConfig, check_prune, make_pruner, prune, save_pruned

__all__ = ["PRUNERS", "PruneConfig", "PruneReport", "Pruner", "check_prune", "make_pruner", "prune", "prune_model", "save_pruned"]
