"""Pure pruning math: running statistics, scores, masks and the OBS weight update.

No hooks, no models: tensors in, tensors out. The plumbing that gathers the
statistics lives in ``engine.py``.
"""

from __future__ import annotations

import torch

from edgeprune.sparsity import SparsitySpec, topk_mask


class ColumnSquareNorms:
    """Running mean of ‖x_j‖² per input feature j (Wanda's statistic)."""

    def __init__(self, features: int, device="cpu"):
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum += (x * x).sum(0).double()
        self.rows += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        # Wanda normalises by the number of samples; the scale does not change any ranking.
        return (self.sum / max(self.rows, 1)).float()


class Hessian:
    """Running ``XᵀX / n`` of a linear's inputs (SparseGPT's H, up to the constant 2)."""

    def __init__(self, features: int, device="cpu"):
        self.sum = torch.zeros(features, features, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # fp32 product (fast), fp64 running sum (no drift)
        self.sum += (x.T @ x).double()
        self.rows += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return (self.sum / max(self.rows, 1)).float()


class CrossHessian:
    """``XₚᵀXₚ/n`` and ``X_dᵀXₚ/n`` for inputs seen by a pruned linear (Xₚ) and its dense twin (X_d)."""

    def __init__(self, features: int, device="cpu"):
        self.pp = Hessian(features, device)
        self.dp = torch.zeros(features, features, dtype=torch.float64, device=device)

    def add(self, x_pruned: torch.Tensor, x_dense: torch.Tensor) -> None:
        xp = x_pruned.reshape(-1, x_pruned.shape[-1]).float()
        xd = x_dense.reshape(-1, x_dense.shape[-1]).float()
        self.pp.add(xp)
        self.dp += (xd.T @ xp).double()

    @property
    def cross(self) -> torch.Tensor:
        return (self.dp / max(self.pp.rows, 1)).float()


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs()


def wanda_scores(weight: torch.Tensor, col_sq_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ (Sun et al., 2023)."""
    return weight.abs() * col_sq_norms.sqrt().unsqueeze(0)


def layerwise_mask(scores: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """One threshold for the whole matrix (classic magnitude pruning); N:M stays per group."""
    if spec.is_nm:
        return topk_mask(scores, spec)
    flat = scores.flatten()
    n_prune = int(flat.numel() * spec.fraction)
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat, stable=True)[:n_prune]] = False
    return mask.reshape(scores.shape)


def _damped_inverse_cholesky(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ after SparseGPT's dead-input fix and λ = percdamp·mean(diag H)."""
    H = hessian.to(torch.float64, copy=True)  # (not clone().double(): no fp32 copy on the way, 0.25 GB at 8192²)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    weight[:, dead] = 0
    H.diagonal().add_(percdamp * torch.diag(H).mean())
    # each step replaces H, so at most two d × d fp64 matrices live at once (a 1B's down_proj: 8192², 0.5 GB each)
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    return H.float()


class Int4Grid:
    """Symmetric 4-bit codes in groups of ``group`` input columns, as ONNX Runtime's MatMulNBits reads them.

    Code ``q`` in [-8, 7] dequantises to ``q·scale``, so 0 stays exactly 0; a group's scale is its
    largest-magnitude kept value / -8. Without ``order`` the columns arrive in their natural order and
    each group's scale is chosen when the sweep reaches it, from the already-updated weights (GPTQ's
    group-wise scheme). With ``order`` (the column processed at each step, GPTQ's act-order) the scales
    are fixed up front from ``weight`` ("static groups"), since a group's columns arrive scattered.
    ``codes`` [rows, cols] and ``scales`` [rows, cols/group] are in the natural column order.
    """

    def __init__(self, rows: int, cols: int, group: int = 32, device="cpu", order: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None):
        if cols % group:
            raise ValueError(f"{cols} columns are not a multiple of the group size {group}")
        self.group = group
        self.order = order
        self.codes = torch.zeros(rows, cols, dtype=torch.int8, device=device)
        self.scales = torch.zeros(rows, cols // group, device=device)
        if order is not None:
            blocks = weight.reshape(rows, cols // group, group)
            extreme = blocks.gather(2, blocks.abs().argmax(2, keepdim=True)).squeeze(2)
            self.scales = torch.where(extreme == 0, torch.ones_like(extreme), extreme / -8.0)

    def __call__(self, block: torch.Tensor, pruned: torch.Tensor, local: int, col: int, w: torch.Tensor) -> torch.Tensor:
        """Quantise column ``col`` of the sweep (``w``, position ``local`` in ``block``); ``pruned`` marks weights that become 0."""
        orig = col if self.order is None else int(self.order[col])
        g = orig // self.group
        if self.order is None and col % self.group == 0:
            values = torch.where(pruned[:, local:local + self.group], 0.0, block[:, local:local + self.group])
            extreme = values.gather(1, values.abs().argmax(1, keepdim=True)).squeeze(1)
            self.scales[:, g] = torch.where(extreme == 0, torch.ones_like(extreme), extreme / -8.0)
        scale = self.scales[:, g]
        codes = torch.where(pruned[:, local], 0.0, torch.clamp(torch.round(w / scale), -8, 7))
        self.codes[:, orig] = codes.to(torch.int8)
        return codes * scale


def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group: int = 32, act_order: bool = False,
              percdamp: float = 0.01) -> tuple[torch.Tensor, Int4Grid]:
    """GPTQ to symmetric int4 (Frantar et al., 2022) with every exactly-zero (pruned) weight held at 0.

    Returns the dequantised weight and the grid holding codes and scales. ``act_order`` processes columns
    by decreasing Hessian diagonal (the inputs with the most energy first) with static group scales.
    """
    keep = weight != 0
    rows, cols = weight.shape
    spec = SparsitySpec(0.0)  # the mask is fixed: keep
    if not act_order:
        grid = Int4Grid(rows, cols, group, weight.device)
        new, _ = obs_prune(weight, hessian, spec, keep=keep, quantizer=grid, percdamp=percdamp)
        return new, grid
    order = torch.argsort(torch.diag(hessian), descending=True, stable=True)
    grid = Int4Grid(rows, cols, group, weight.device, order=order, weight=weight.float())
    new, _ = obs_prune(weight[:, order], hessian[order][:, order], spec, keep=keep[:, order], quantizer=grid, percdamp=percdamp)
    out = torch.empty_like(new)
    out[:, order] = new
    return out, grid


def obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: SparsitySpec,
    keep: torch.Tensor | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    per_row: bool = False,
    quantizer: Int4Grid | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh, 2023): OBS pruning with lazy block updates.

    Columns are processed left to right in blocks of ``blocksize``; inside a block
    the mask is chosen adaptively by ``w² / [H⁻¹]²_jj`` (per block for unstructured,
    per M columns for N:M) and each pruned weight's error is spread over the
    remaining columns. If ``keep`` is given the mask is fixed and only the weight
    update runs. ``per_row`` selects the unstructured mask within each row of
    the block instead of across the whole block, so every output row ends
    with exactly the requested sparsity. With ``quantizer`` every kept weight is
    also rounded to its grid and the rounding error spread the same way (GPTQ,
    Frantar et al. 2022, which SparseGPT combines with pruning in one sweep).
    Returns (new weight, keep mask).
    """
    W = weight.detach().clone().float()
    rows, cols = W.shape
    if quantizer is not None and blocksize % quantizer.group:
        blocksize = quantizer.group * max(1, blocksize // quantizer.group)  # groups must not straddle blocks
    Hinv = _damped_inverse_cholesky(hessian, W, percdamp)
    prune = torch.zeros_like(W, dtype=torch.bool)
    fixed = None if keep is None else ~keep.to(W.device)
    n_prune_group = (spec.m - spec.n) if spec.is_nm else 0

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = torch.diag(Hinv1)
        if fixed is not None:
            mask1 = fixed[:, i1:i2].clone()
        elif spec.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            metric = W1**2 / diag.reshape(1, -1) ** 2
            if per_row:  # cumulative counts keep each row's total exact across blocks
                k = int(i2 * spec.fraction) - int(i1 * spec.fraction)
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
                mask1.scatter_(1, torch.argsort(metric, dim=1, stable=True)[:, :k], True)
            else:
                n_prune = int(metric.numel() * spec.fraction)
                mask1 = torch.zeros(metric.numel(), dtype=torch.bool, device=W.device)
                mask1[torch.argsort(metric.flatten(), stable=True)[:n_prune]] = True
                mask1 = mask1.reshape(metric.shape)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if fixed is None and spec.is_nm and i % spec.m == 0:
                metric = W1[:, i : i + spec.m] ** 2 / diag[i : i + spec.m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(metric, n_prune_group, dim=1, largest=False)[1], True)
            q = w.masked_fill(mask1[:, i], 0) if quantizer is None else quantizer(W1, mask1, i, i1 + i, w)  # the grid zeroes pruned
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # rank-1 update in place (no outer-product temporary)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        prune[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), ~prune


def dense_target_weight(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """The dense W* minimising ‖W* Xₚ − W X_d‖² + λ‖W* − W‖²: W* = (W C + λW)(H + λI)⁻¹.

    C = X_dᵀXₚ/n, H = XₚᵀXₚ/n, λ = percdamp·mean(diag H). Feeding W* to :func:`obs_prune`
    makes the pruned linear reproduce the *dense* block's signal although its inputs
    already carry upstream pruning error. The ridge pulls W* towards W (not towards 0)
    in directions the calibration data barely excites, so text unlike the calibration
    set still sees the original weights there.
    """
    H = hessian.double().clone()
    lam = percdamp * torch.diag(H).mean().clamp_min(1e-12)
    H += torch.eye(H.shape[0], dtype=H.dtype, device=H.device) * lam
    rhs = (weight.double() @ cross.double() + lam * weight.double()).T  # (in, out)
    return torch.linalg.solve(H, rhs).T.to(weight.dtype)
