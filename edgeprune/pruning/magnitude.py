"""Magnitude pruning: drop the smallest |W| with one threshold per layer (N:M: per group). No calibration."""

from __future__ import annotations

from edgeprune.pruning.engine import BlockContext, LinearResult, Pruner
from edgeprune.pruning.kernels import layerwise_mask, magnitude_scores
from edgeprune.pruning.registry import PRUNERS


@PRUNERS.register("magnitude")
class MagnitudePruner(Pruner):
    name = "magnitude"
    needs_calibration = False

    def prune_block(self, ctx: BlockContext) -> dict[str, LinearResult]:
        linears = ctx.linears()
        return {
            name: LinearResult(layerwise_mask(magnitude_scores(linears[name].weight.detach()), spec))
            for name, spec in ctx.specs.items()
        }
