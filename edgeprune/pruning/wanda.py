"""Wanda (Sun et al., 2023): score |W|·‖X‖₂, compared within each output row (N:M: within each group).

As in the reference code, all linears of a block are hooked in one forward pass
of the block on the pruned-so-far model's hidden states, then pruned together.
"""

from __future__ import annotations

from edgeprune.pruning.engine import BlockContext, LinearResult, Pruner
from edgeprune.pruning.kernels import ColumnSquareNorms, wanda_scores
from edgeprune.pruning.registry import PRUNERS
from edgeprune.sparsity import topk_mask


@PRUNERS.register("wanda")
class WandaPruner(Pruner):
    name = "wanda"

    def prune_block(self, ctx: BlockContext) -> dict[str, LinearResult]:
        norms = ctx.collect(list(ctx.specs), lambda f: ColumnSquareNorms(f, ctx.inputs.device))
        linears = ctx.linears()
        return {
            name: LinearResult(topk_mask(wanda_scores(linears[name].weight.detach().float(), norms[name].value), spec))
            for name, spec in ctx.specs.items()
        }
