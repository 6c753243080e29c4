"""The ``attention`` method: W_Q/W_K masks optimised against the real attention matrix.

Objective (Liang et al., "Beyond Linear Approximations", ICLR 2025):
``L(M) = ½‖softmax(QₘKₘᵀ·s) − softmax(QKᵀ·s)‖²_F + ½λ‖M‖²_F``, here with separate
masks on W_Q and W_K, the model's RoPE, GQA and causal mask, on calibration
hidden states that already went through the pruned blocks before.

Per block:
1. Q/K: scores start from Wanda's |W|·‖X‖; the forward always uses the exact
   binary mask (top-k per row, or per N:M group) while gradients reach the
   scores through a sigmoid surrogate around the keep threshold (straight-through
   estimator). Adam on the scores; the exact mask with the lowest loss on a held
   set of calibration sequences is kept, so it is never worse than its start.
   The kept Q/K values are then re-fitted by OBS with that mask fixed.
2. V, O and the MLP: the attention loss says nothing about them. They are pruned
   stage by stage (v → o → gate/up → down) by OBS towards the *dense* block's
   signal: each linear sees the inputs produced by the already-pruned parts of
   the block, and its target is what the dense block computes there, so the
   non-linear effects of upstream pruning (softmax, SiLU gate) are compensated.
   The least-squares target carries a ridge towards the original weights, so
   directions the calibration text barely excites keep their dense values.

Defaults were chosen by ``benchmarks/attention_sweep.py`` and
``benchmarks/pruning_quality.py``; the figures are in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from edgeprune.pruning.attention_math import attention_error, attention_probs
from edgeprune.pruning.engine import BlockContext, LinearResult, Pruner
from edgeprune.pruning.kernels import ColumnSquareNorms, Hessian, dense_target_weight, obs_prune, wanda_scores
from edgeprune.pruning.registry import PRUNERS
from edgeprune.sparsity import SparsitySpec, topk_mask


@dataclass(frozen=True)
class AttentionConfig:
    steps: int = 40  # Adam steps on the Q/K scores per block
    lr: float = 0.02  # in units of per-row standard deviations of log-scores (sweep: 0.02 beats 0.05 and 0.1)
    lam: float = 0.0  # λ of the paper's ½λ‖M‖² on the relaxed mask
    temperature: float = 0.5  # width of the sigmoid surrogate around the threshold
    relaxation: str = "sigmoid"  # "sigmoid" or "ste" (identity straight-through)
    batch: int = 4  # sequences per optimisation step
    check_samples: int = 4  # held sequences that pick the best exact mask
    check_every: int = 10
    refit_qk: bool = True  # OBS re-fit of kept Q/K values with the optimised mask fixed
    others: str = "dense-target"  # V/O/MLP: "dense-target" OBS, "sequential" OBS, or "wanda"
    blocksize: int = 128
    percdamp: float = 0.01
    per_row: bool = True  # unstructured OBS masks balanced per output row (as Q/K are)


def _threshold(scores: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """Midpoint between the weakest kept and the strongest pruned score, per row or per N:M group."""
    if spec.is_nm:
        groups = scores.reshape(-1, spec.m).sort(dim=1, descending=True).values
        thr = (groups[:, spec.n - 1] + groups[:, spec.n]) / 2
        return thr.repeat_interleave(spec.m).reshape(scores.shape)
    keep = scores.shape[1] - int(scores.shape[1] * spec.fraction)
    if keep in (0, scores.shape[1]):
        return scores.min(dim=1, keepdim=True).values - 1
    ordered = scores.sort(dim=1, descending=True).values
    return ((ordered[:, keep - 1] + ordered[:, keep]) / 2).unsqueeze(1)


def _standardised_log(scores: torch.Tensor) -> torch.Tensor:
    s = scores.clamp_min(1e-12).log()
    return (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp_min(1e-6)


class _MaskScores:
    """Learnable scores for one weight; forward uses the exact mask, backward a relaxation."""

    def __init__(self, init: torch.Tensor, spec: SparsitySpec, cfg: AttentionConfig):
        self.scores = _standardised_log(init).requires_grad_(True)
        self.spec, self.cfg = spec, cfg

    def exact(self) -> torch.Tensor:
        return topk_mask(self.scores.detach(), self.spec)

    def relaxed(self) -> tuple[torch.Tensor, torch.Tensor]:
        hard = self.exact().float()
        if self.cfg.relaxation == "ste":
            soft = self.scores
        else:
            thr = _threshold(self.scores.detach(), self.spec)
            soft = torch.sigmoid((self.scores - thr) / self.cfg.temperature)
        return hard + soft - soft.detach(), soft


def optimise_qk_masks(
    x: torch.Tensor, parts, context, spec_q: SparsitySpec, spec_k: SparsitySpec, col_norms: torch.Tensor,
    cfg: AttentionConfig, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Optimise W_Q and W_K keep-masks on attention inputs ``x`` [samples, seq, hidden]."""
    wq, wk = parts.q.weight.detach().float(), parts.k.weight.detach().float()
    q = _MaskScores(wanda_scores(wq, col_norms), spec_q, cfg)
    k = _MaskScores(wanda_scores(wk, col_norms), spec_k, cfg)
    n_check = min(cfg.check_samples, x.shape[0] - 1)
    check_x, train_x = x[:n_check], x[n_check:]
    probe_x = train_x[: cfg.batch]  # a fixed training batch, to report the objective's own progress
    with torch.no_grad():
        check_dense, probe_dense = attention_probs(check_x, parts, context), attention_probs(probe_x, parts, context)

    def loss_on(xs, dense, mq, mk) -> float:
        with torch.no_grad():
            return float(attention_error(attention_probs(xs, parts, context, wq * mq, wk * mk), dense))

    # Cache the dense attention of every training sequence when it fits in memory (~1 GiB).
    heads, seq = parts.num_heads, train_x.shape[1]
    cached = None
    if train_x.shape[0] * heads * seq * seq * 4 <= 1 << 30:
        with torch.no_grad():
            cached = torch.cat([attention_probs(xs, parts, context) for xs in train_x.split(cfg.batch)])

    best = (loss_on(check_x, check_dense, q.exact(), k.exact()), q.exact(), k.exact())
    start_loss, history = best[0], []
    probe_start = loss_on(probe_x, probe_dense, q.exact(), k.exact())
    opt = torch.optim.Adam([q.scores, k.scores], lr=cfg.lr)
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(train_x.shape[0], generator=generator)[: cfg.batch]
        idx = idx.to(train_x.device)
        xb = train_x[idx]
        if cached is not None:
            dense = cached[idx]
        else:
            with torch.no_grad():
                dense = attention_probs(xb, parts, context)
        mq, soft_q = q.relaxed()
        mk, soft_k = k.relaxed()
        loss = attention_error(attention_probs(xb, parts, context, wq * mq, wk * mk), dense)
        if cfg.lam:
            loss = loss + 0.5 * cfg.lam * (soft_q.pow(2).mean() + soft_k.pow(2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if step % cfg.check_every == 0 or step == cfg.steps:
            mq_exact, mk_exact = q.exact(), k.exact()
            value = loss_on(check_x, check_dense, mq_exact, mk_exact)
            if value < best[0]:
                best = (value, mq_exact, mk_exact)
    diag = {
        "start": start_loss,
        "best": best[0],
        "probe_start": probe_start,
        "probe_end": loss_on(probe_x, probe_dense, q.exact(), k.exact()),
        "train": history,
    }
    return best[1], best[2], diag


@PRUNERS.register("attention")
class AttentionPruner(Pruner):
    name = "attention"
    Config = AttentionConfig

    def __init__(self, config: AttentionConfig = AttentionConfig()):
        if config.relaxation not in ("sigmoid", "ste"):
            raise ValueError("relaxation must be 'sigmoid' or 'ste'")
        if config.others not in ("dense-target", "sequential", "wanda"):
            raise ValueError("others must be 'dense-target', 'sequential' or 'wanda'")
        self.config = config
        self.diagnostics: list[dict] = []

    def settings(self) -> dict:
        return asdict(self.config)

    def _obs(self, weight, hessian, spec, keep=None):
        cfg = self.config
        return obs_prune(weight, hessian, spec, keep=keep, blocksize=cfg.blocksize, percdamp=cfg.percdamp, per_row=cfg.per_row)

    def prune_block(self, ctx: BlockContext) -> dict[str, LinearResult]:
        cfg = self.config
        parts = ctx.adapter.attention(ctx.block)
        linears = ctx.linears()
        results: dict[str, LinearResult] = {}

        with torch.no_grad():
            x_attn = torch.cat([parts.attn_input(x) for x in ctx.batches()])
        norms, hess = ColumnSquareNorms(x_attn.shape[-1], x_attn.device), Hessian(x_attn.shape[-1], x_attn.device)
        norms.add(x_attn)
        hess.add(x_attn)
        spec_q, spec_k = ctx.specs.get(parts.q_name), ctx.specs.get(parts.k_name)
        if spec_q is not None or spec_k is not None:
            dense_spec = SparsitySpec(0.0)  # optimise only the side(s) being pruned
            mq, mk, diag = optimise_qk_masks(
                x_attn, parts, ctx.context, spec_q or dense_spec, spec_k or dense_spec, norms.value, cfg, ctx.generator
            )
            self.diagnostics.append({"block": ctx.index, "attention_loss_start": diag["start"], "attention_loss_best": diag["best"]})
            for name, spec, mask in ((parts.q_name, spec_q, mq), (parts.k_name, spec_k, mk)):
                if spec is None:
                    continue
                weight = linears[name].weight.detach()
                if cfg.refit_qk:
                    weight, _ = self._obs(weight, hess.value, spec, keep=mask)
                results[name] = LinearResult(mask, weight)
            ctx.apply(results)

        for stage_no, stage in enumerate(ctx.stages()):
            names = [n for n in stage if n not in results]
            if not names:
                continue
            if stage_no == 0:  # V shares the attention input: no upstream pruning to compensate
                stats = {n: norms if cfg.others == "wanda" else hess for n in names}
            elif cfg.others == "dense-target":
                stats = ctx.collect_pairs(names)
            elif cfg.others == "sequential":
                stats = ctx.collect(names, lambda f: Hessian(f, ctx.inputs.device))
            else:
                stats = ctx.collect(names, lambda f: ColumnSquareNorms(f, ctx.inputs.device))
            stage_results = {}
            for name in names:
                weight, spec, st = linears[name].weight.detach(), ctx.specs[name], stats[name]
                if cfg.others == "wanda":
                    stage_results[name] = LinearResult(topk_mask(wanda_scores(weight.float(), st.value), spec))
                    continue
                if hasattr(st, "cross"):
                    target = dense_target_weight(weight.float(), st.pp.value, st.cross, cfg.percdamp)
                    new, mask = self._obs(target, st.pp.value, spec)
                else:
                    new, mask = self._obs(weight, st.value, spec)
                stage_results[name] = LinearResult(mask, new)
            ctx.apply(stage_results)
            results.update(stage_results)
        return results

