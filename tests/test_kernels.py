"""Pruning math on hand-made tensors: Wanda scores, magnitude, SparseGPT's OBS update."""

import torch

from edgeprune.pruning.kernels import ColumnSquareNorms, Hessian, Int4Grid, dense_target_weight, gptq_int4, layerwise_mask, obs_prune, wanda_scores
from edgeprune.sparsity import SparsitySpec, topk_mask


def test_wanda_score_weighs_by_input_norm():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    norms = ColumnSquareNorms(4)
    norms.add(torch.tensor([[10.0, 0.0, 0.1, 2.0], [0.0, 0.0, 0.1, 0.0]]))
    scores = wanda_scores(w, norms.value)
    # column norms ‖x_j‖₂ / sqrt(n): sqrt([50, 0, 0.01, 2])
    expected = w.abs() * torch.tensor([50.0, 0.0, 0.01, 2.0]).sqrt()
    assert torch.allclose(scores, expected)
    # a big weight on a silent input is pruned first
    assert topk_mask(scores, SparsitySpec(0.5)).tolist() == [[True, False, False, True]]


def test_magnitude_threshold_is_layerwise():
    w = torch.tensor([[10.0, 9.0, 8.0, 7.0], [1.0, 2.0, 3.0, 4.0]])
    assert layerwise_mask(w.abs(), SparsitySpec(0.5)).tolist() == [[True] * 4, [False] * 4]


def _problem(rows=8, cols=32, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    w = torch.randn(rows, cols, generator=g)
    h = Hessian(cols)
    h.add(x)
    return w, x, h.value


def test_obs_exact_sparsity_and_better_reconstruction_than_masking():
    w, x, H = _problem()
    new, keep = obs_prune(w, H, SparsitySpec(0.5), blocksize=8)
    assert keep.sum().item() == w.numel() // 2  # SparseGPT's unstructured sparsity is exact per column block
    assert (new[~keep] == 0).all()
    err_obs = ((x @ new.T - x @ w.T) ** 2).sum()
    err_mask = ((x @ (w * keep).T - x @ w.T) ** 2).sum()
    assert err_obs < 0.8 * err_mask


def test_obs_nm_and_fixed_mask():
    w, x, H = _problem()
    new, keep = obs_prune(w, H, SparsitySpec(0.5, 2, 4))
    assert keep.reshape(-1, 4).sum(1).eq(2).all()
    fixed = topk_mask(torch.rand(w.shape, generator=torch.Generator().manual_seed(3)), SparsitySpec(0.5, 2, 4))
    new2, keep2 = obs_prune(w, H, SparsitySpec(0.5, 2, 4), keep=fixed)
    assert torch.equal(keep2, fixed)
    assert (new2[~fixed] == 0).all()
    # re-fitting the kept weights beats just zeroing the others
    assert ((x @ new2.T - x @ w.T) ** 2).sum() < ((x @ (w * fixed).T - x @ w.T) ** 2).sum()


def test_dense_target_compensates_input_error():
    g = torch.Generator().manual_seed(5)
    xd = torch.randn(512, 16, generator=g)
    xp = xd + 0.3 * torch.randn(512, 16, generator=g)  # upstream pruning error
    w = torch.randn(4, 16, generator=g)
    acc_h, acc_c = Hessian(16), torch.zeros(16, 16)
    acc_h.add(xp)
    acc_c = xd.T @ xp / 512
    w_star = dense_target_weight(w, acc_h.value, acc_c, percdamp=0.0)
    target = xd @ w.T
    assert ((xp @ w_star.T - target) ** 2).sum() < ((xp @ w.T - target) ** 2).sum()


def _rtn_int4(weight: torch.Tensor, group: int) -> torch.Tensor:
    blocks = weight.reshape(weight.shape[0], -1, group)
    extreme = blocks.gather(2, blocks.abs().argmax(2, keepdim=True))
    scale = torch.where(extreme == 0, torch.ones_like(extreme), extreme / -8)
    return (torch.clamp(torch.round(blocks / scale), -8, 7) * scale).reshape(weight.shape)


def test_gptq_int4_is_on_grid_keeps_zeros_and_beats_round_to_nearest():
    torch.manual_seed(0)
    x = torch.randn(2048, 64) @ torch.randn(64, 64)  # correlated inputs, as activations are
    h = Hessian(64)
    h.add(x)
    weight = torch.randn(24, 64)
    weight[:, ::4] = 0  # pruned weights
    grid = Int4Grid(24, 64, group=32)
    quantised, keep = obs_prune(weight, h.value, SparsitySpec(0.5), keep=weight != 0, quantizer=grid)
    assert torch.equal(quantised[:, ::4], torch.zeros(24, 16))  # pruned weights stay exactly zero
    assert torch.equal(grid.codes[:, ::4], torch.zeros(24, 16, dtype=torch.int8))
    assert grid.codes.min() >= -8 and grid.codes.max() <= 7
    dequant = grid.codes.float() * grid.scales.repeat_interleave(32, dim=1)
    assert torch.equal(quantised, dequant)  # exactly what MatMulNBits will compute from codes and scales
    err_gptq = ((quantised - weight) @ x.T).pow(2).sum()
    err_rtn = ((_rtn_int4(weight, 32) - weight) @ x.T).pow(2).sum()
    assert err_gptq < 0.8 * err_rtn


def test_gptq_act_order_keeps_zeros_and_static_group_scales():
    torch.manual_seed(1)
    x = torch.randn(2048, 64) @ torch.randn(64, 64)
    h = Hessian(64)
    h.add(x)
    weight = torch.randn(16, 64)
    weight[:, 1::4] = 0
    new, grid = gptq_int4(weight, h.value, group=32, act_order=True)
    assert torch.equal(new[:, 1::4], torch.zeros(16, 16))
    assert torch.equal(new, grid.codes.float() * grid.scales.repeat_interleave(32, dim=1))  # natural column order
    extreme = weight.reshape(16, 2, 32).abs().amax(2)
    assert torch.allclose(grid.scales.abs(), extreme / 8)  # static: from the original weights
    err = ((new - weight) @ x.T).pow(2).sum()
    assert err < ((_rtn_int4(weight, 32) - weight) @ x.T).pow(2).sum()
