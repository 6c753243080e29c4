"""Input-channel permutations that raise N:M quality (the idea of RIA's channel reallocation and NVIDIA ASP).

N:M keeps the top N of every M *consecutive* input channels, so two important
channels that share a group compete. Reordering the channels spreads important
weights across groups; the model absorbs the reorder exactly (the producer of
those channels is permuted the same way), so it costs nothing at run time.

``nm_permutation(scores, n, m)`` returns an order of the input channels that
raises the score kept by N:M projection: a balanced start (channels sorted by
importance and dealt to groups in a zig-zag), then greedy channel swaps between
groups, each accepted only when it increases the kept score.
"""

from __future__ import annotations

import torch


def kept_score(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Total score an N:M projection keeps: sum over rows and groups of the top-N scores."""
    groups = scores.reshape(scores.shape[0], -1, m)
    return groups.topk(n, dim=-1).values.sum()


def _group_kept(scores: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """Kept score per group for column index sets ``cols`` [groups, m] → [groups]."""
    block = scores[:, cols]  # [rows, groups, m]
    return block.topk(n, dim=-1).values.sum(dim=(0, 2))


def nm_permutation(scores: torch.Tensor, n: int, m: int, sweeps: int = 2, seed: int = 0) -> torch.Tensor:
    """A permutation ``p`` of the input channels; ``scores[:, p]`` keeps more under N:M than ``scores``."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not divisible by M={m}")
    scores = scores.float()
    n_groups = cols // m
    # Balanced start: deal channels, strongest first, to groups in a zig-zag.
    order = scores.sum(0).argsort(descending=True)
    slots = torch.arange(cols)
    rnd, pos = slots // n_groups, slots % n_groups
    group_of = torch.where(rnd % 2 == 0, pos, n_groups - 1 - pos)
    layout = torch.empty(n_groups, m, dtype=torch.long)
    layout[group_of, rnd] = order
    gen = torch.Generator().manual_seed(seed)
    kept = _group_kept(scores, layout, n)
    # Greedy swaps: for random pairs of groups try the best single-channel exchange.
    for _ in range(sweeps):
        pairing = torch.randperm(n_groups, generator=gen)
        a, b = pairing[: n_groups // 2], pairing[n_groups // 2 : 2 * (n_groups // 2)]
        for i in range(m):
            for j in range(m):
                trial_a, trial_b = layout[a].clone(), layout[b].clone()
                trial_a[:, i], trial_b[:, j] = layout[b][:, j], layout[a][:, i]
                gain = _group_kept(scores, trial_a, n) + _group_kept(scores, trial_b, n) - kept[a] - kept[b]
                better = gain > 1e-9 * kept.mean()
                if better.any():
                    ga, gb = a[better], b[better]
                    layout[ga], layout[gb] = trial_a[better], trial_b[better]
                    kept[ga] = _group_kept(scores, layout[ga], n)
                    kept[gb] = _group_kept(scores, layout[gb], n)
    perm = layout.reshape(-1)
    if kept_score(scores[:, perm], n, m) < kept_score(scores, n, m):
        return torch.arange(cols)  # never worse than the identity
    return perm


def segment_permutations(scores: torch.Tensor, consumer_segments: int, producer_segments: int, n: int, m: int) -> torch.Tensor:
    """One permutation per producer segment, ``[producer_segments, width]``, from consumer scores [rows, cols].

    Consumer segments that read the same producer segment share its permutation, so their
    score columns are stacked as extra rows when searching.
    """
    rows, cols = scores.shape
    width = cols // consumer_segments
    share = consumer_segments // producer_segments
    seg = scores.reshape(rows, consumer_segments, width)
    perms = []
    for g in range(producer_segments):
        stacked = seg[:, g * share : (g + 1) * share].permute(1, 0, 2).reshape(-1, width)
        perms.append(nm_permutation(stacked, n, m) if width % m == 0 else torch.arange(width))
    return torch.stack(perms)


@torch.no_grad()
def apply_permutation(linears: dict, consumer: str, producers, perms: torch.Tensor, consumer_segments: int) -> None:
    """Reorder producer rows and consumer columns; the block computes exactly the same function."""
    producer_segments, width = perms.shape
    rows_idx = (torch.arange(producer_segments).unsqueeze(1) * width + perms).reshape(-1)
    share = consumer_segments // producer_segments
    cols_idx = torch.cat([h * width + perms[h // share] for h in range(consumer_segments)])
    for name in producers:
        lin = linears[name]
        lin.weight.copy_(lin.weight[rows_idx.to(lin.weight.device)])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[rows_idx.to(lin.bias.device)])
    lin = linears[consumer]
    lin.weight.copy_(lin.weight[:, cols_idx.to(lin.weight.device)])
