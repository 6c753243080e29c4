"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with a calibration Hessian and weight updates.

Block size 128, 1% dampening, lazy batch updates, adaptive mask selection; as in
the reference code all linears of a block are calibrated in one pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeprune.pruning.engine import BlockContext, LinearResult, Pruner
from edgeprune.pruning.kernels import Hessian, obs_prune
from edgeprune.pruning.registry import PRUNERS


@dataclass(frozen=True)
class SparseGPTConfig:
    blocksize: int = 128
    percdamp: float = 0.01


@PRUNERS.register("sparsegpt")
class SparseGPTPruner(Pruner):
    name = "sparsegpt"
    Config = SparseGPTConfig

    def __init__(self, config: SparseGPTConfig = SparseGPTConfig()):
        self.config = config

    def settings(self) -> dict:
        return asdict(self.config)

    def prune_block(self, ctx: BlockContext) -> dict[str, LinearResult]:
        hessians = ctx.collect(list(ctx.specs), lambda f: Hessian(f, ctx.inputs.device))
        linears = ctx.linears()
        out = {}
        for name, spec in ctx.specs.items():
            weight, mask = obs_prune(
                linears[name].weight.detach(), hessians[name].value, spec, blocksize=self.config.blocksize, percdamp=self.config.percdamp
            )
            out[name] = LinearResult(mask, weight)
        return out
