"""Training-free search for how many heads and MLP channels each block keeps, under a global budget.

An architecture gives every block (query heads kept per KV group, MLP channels kept); the units kept are
the highest-scored ones of that block. ``uniform`` keeps the same shape in every block (the classic
baseline), ``greedy`` removes the globally cheapest units first (score per parameter), and ``evolution``
starts from them (and from uniform MLP widths with every head kept) and evolves the per-block shapes on the calibration loss of the masked model
(in the spirit of Shen et al., "Search for Efficient Large Language Models", NeurIPS 2024).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.structured.scores import UnitScores

SEARCHES = ("evolution", "greedy", "uniform")

#: per block: (query heads kept per KV group, MLP channels kept); (0, 0) = the whole block is removed
Arch = tuple[tuple[int, int], ...]
DROPPED = (0, 0)


@dataclass(frozen=True)
class Space:
    """The choices of one block: ``groups`` KV groups of up to ``per_group`` query heads, up to ``channels``."""

    groups: int
    per_group: int
    channels: int
    step: int  # channels move in chunks of this size (keeps matrix widths friendly to kernels)
    droppable: bool = False  # the search may remove the whole block

    @property
    def min_channels(self) -> int:
        return min(self.step, self.channels)


class Cost(Protocol):
    """What the budget is spent on: parameters, or predicted latency in ms."""

    def __call__(self, arch: Arch) -> float: ...


@dataclass(frozen=True)
class ParamCost:
    """Parameters of the blocks' linears for an architecture."""

    spaces: tuple[Space, ...]
    head: tuple[int, ...]  # per block: parameters of one query head
    channel: tuple[int, ...]
    fixed: tuple[int, ...]

    def __call__(self, arch: Arch) -> float:
        return float(sum(f + h * k * s.groups + c_cost * c
                         for (k, c), s, h, c_cost, f in zip(arch, self.spaces, self.head, self.channel, self.fixed) if k))


@dataclass
class SearchLog:
    """What the search tried and chose: fitness of the starting points and the best per generation."""

    fitness: dict[str, float] = field(default_factory=dict)  # "greedy", "uniform", "uniform-channels", "best"
    generations: list[float] = field(default_factory=list)
    evaluated: int = 0


def dense_arch(spaces: Sequence[Space]) -> Arch:
    return tuple((s.per_group, s.channels) for s in spaces)


def kept_units(arch: Arch, spaces: Sequence[Space], scores: Sequence[UnitScores]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block: the indices of the query heads and channels an architecture keeps (the top-scored ones)."""
    out = []
    for (k, c), space, sc in zip(arch, spaces, scores):
        if k == 0:
            out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        by_group = sc.heads.reshape(space.groups, space.per_group)
        top = by_group.topk(k, dim=1).indices + torch.arange(space.groups)[:, None] * space.per_group
        out.append((top.reshape(-1).sort().values, sc.channels.topk(c).indices.sort().values))
    return out


def uniform_arch(spaces: Sequence[Space], cost: Cost, budget: float, keep_heads: bool = False) -> Arch:
    """Every block the same: heads kept at the budget's ratio (rounded; all of them with ``keep_heads``), then the
    most channels that fit."""
    ratio = budget / cost(dense_arch(spaces))
    arch = []
    for s in spaces:
        k = s.per_group if keep_heads else min(s.per_group, round(s.per_group * ratio))
        if k < 1:
            raise EdgepruneError(f"a uniform keep ratio of {ratio:.0%} removes every attention head of a block",
                                 "raise the target, or use --search greedy/evolution")
        arch.append([k, s.channels])
    widths = sorted({w for s in spaces for w in (*range(s.step, s.channels, s.step), s.channels)}, reverse=True)
    for c in widths:  # the largest common channel count within budget
        trial = tuple((k, min(c, s.channels)) for (k, _), s in zip(arch, spaces))
        if cost(trial) <= budget:
            return trial
    raise EdgepruneError(f"the target ({ratio:.0%}) is below what one head and one channel chunk per block cost",
                         "raise the target")


def _chunk_score(sc: UnitScores, space: Space, k: int, c: int) -> tuple[float, float]:
    """Scores of the next units a block would lose: one head per group, and the next channel chunk."""
    heads = sc.heads.reshape(space.groups, space.per_group).sort(dim=1).values
    head_loss = float(heads[:, space.per_group - k].sum()) if k > 1 else float("inf")
    chans = sc.channels.sort(descending=True).values
    chan_loss = float(chans[c - space.step:c].sum()) if c - space.step >= space.min_channels else float("inf")
    return head_loss, chan_loss


def greedy_arch(start: Arch, spaces: Sequence[Space], scores: Sequence[UnitScores], cost: Cost, budget: float) -> Arch:
    """Remove, across all blocks, the unit (head slice or channel chunk) with the least score per cost saved, until within budget."""
    arch = [list(a) for a in start]
    heap: list[tuple[float, int, str]] = []

    def push(i: int):
        k, c = arch[i]
        if k == 0:
            return
        head_loss, chan_loss = _chunk_score(scores[i], spaces[i], k, c)
        base = cost(tuple(map(tuple, arch)))
        for kind, loss, new in (("head", head_loss, (k - 1, c)), ("chan", chan_loss, (k, c - spaces[i].step))):
            if loss != float("inf"):
                trial = [tuple(a) for a in arch]
                trial[i] = new
                saved = base - cost(tuple(trial))
                heapq.heappush(heap, (loss / max(saved, 1e-9), i, kind))

    for i in range(len(arch)):
        push(i)
    while cost(tuple(map(tuple, arch))) > budget:
        if not heap:
            raise EdgepruneError("the target is below what one head and one channel chunk per block cost", "raise the target")
        _, i, kind = heapq.heappop(heap)
        if kind == "head":
            arch[i][0] -= 1
        else:
            arch[i][1] -= spaces[i].step
        heap = [e for e in heap if e[1] != i]
        heapq.heapify(heap)
        push(i)
    return tuple(map(tuple, arch))


def _repair(arch: list[list[int]], spaces: Sequence[Space], scores: Sequence[UnitScores], cost: Cost, budget: float) -> Arch:
    """Bring a mutated architecture back within budget (drop the least-scored chunks) and fill slack (add the best)."""
    arch = list(greedy_arch(tuple(map(tuple, arch)), spaces, scores, cost, budget))
    while True:
        best, pick = -1.0, None
        for i, ((k, c), s) in enumerate(zip(arch, spaces)):
            if k == 0 or c + s.step > s.channels:
                continue
            trial = list(arch)
            trial[i] = (k, c + s.step)
            if cost(tuple(trial)) <= budget:
                gain = float(scores[i].channels.sort(descending=True).values[c:c + s.step].sum())
                if gain > best:
                    best, pick = gain, trial
        if pick is None:
            return tuple(arch)
        arch = pick


def _mutate(arch: Arch, spaces: Sequence[Space], rng: random.Random) -> list[list[int]]:
    out = [list(a) for a in arch]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.1 and spaces[i].droppable:
            if out[i][0]:
                out[i] = list(DROPPED)
            else:  # bring a removed block back at half width; the repair makes room for it
                out[i] = [max(1, spaces[i].per_group // 2), max(spaces[i].min_channels, spaces[i].channels // 2 // spaces[i].step * spaces[i].step)]
        elif out[i][0] == 0:
            continue
        elif roll < 0.3 and spaces[i].per_group > 1:
            out[i][0] = min(spaces[i].per_group, max(1, out[i][0] + rng.choice((-1, 1))))
        else:
            j = rng.randrange(len(out))
            move = spaces[i].step * rng.randint(1, 4)
            if out[j][0] and out[i][1] - move >= spaces[i].min_channels and out[j][1] + move <= spaces[j].channels:
                out[i][1] -= move
                out[j][1] += move
    if not any(k for k, _ in out):  # never every block
        return [list(a) for a in arch]
    return out


def evolve(
    spaces: Sequence[Space], scores: Sequence[UnitScores], cost: Cost, budget: float, fitness: Callable[[Arch], float],
    population: int = 8, generations: int = 6, seed: int = 0, progress: Callable[[int, int], None] | None = None,
) -> tuple[Arch, SearchLog]:
    """Evolve per-block shapes on ``fitness`` (lower is better), every candidate within ``budget``."""
    rng = random.Random(seed)
    log = SearchLog()
    seen: dict[Arch, float] = {}

    def score(arch: Arch) -> float:
        if arch not in seen:
            seen[arch] = fitness(arch)
        return seen[arch]

    greedy = greedy_arch(dense_arch(spaces), spaces, scores, cost, budget)
    pool = [greedy]
    log.fitness["greedy"] = score(greedy)
    for name, keep_heads in (("uniform", False), ("uniform-channels", True)):  # with 3 heads per group, ratios round coarsely
        try:
            start = uniform_arch(spaces, cost, budget, keep_heads)
        except EdgepruneError:
            continue
        log.fitness[name] = score(start)
        if start not in pool:
            pool.append(start)
    droppable = sorted((i for i, s in enumerate(spaces) if s.droppable), key=lambda i: scores[i].block)
    for d in (1, 2, 4, 6, 8):  # seeds: the d blocks that change their input least removed, their parameters spread over the rest
        if d > len(spaces) // 2 or d > len(droppable) or len(pool) >= population:
            break
        seed_arch = [list(DROPPED) if i in droppable[:d] else list(a) for i, a in enumerate(dense_arch(spaces))]
        try:
            dropped = _repair(seed_arch, spaces, scores, cost, budget)
        except EdgepruneError:
            continue
        if dropped not in pool:
            pool.append(dropped)
    tries = 0
    while len(pool) < population and tries < 50 * population:
        tries += 1
        child = _repair(_mutate(rng.choice(pool[:2]), spaces, rng), spaces, scores, cost, budget)
        if child not in pool:
            pool.append(child)
    for g in range(generations):
        pool.sort(key=score)
        parents = pool[: max(2, population // 2)]
        children: list[Arch] = []
        tries = 0
        while len(children) < population - len(parents) and tries < 50 * population:
            tries += 1
            a, b = rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
            mixed = [list(a[i] if rng.random() < 0.5 else b[i]) for i in range(len(a))]
            child = _repair(_mutate(tuple(map(tuple, mixed)), spaces, rng), spaces, scores, cost, budget)
            if child not in seen and child not in children:
                children.append(child)
        pool = parents + children
        log.generations.append(min(score(a) for a in pool))
        if progress:
            progress(g + 1, generations)
    best = min(seen, key=seen.get)  # every candidate ever scored, the starting points included
    log.fitness["best"] = score(best)
    log.evaluated = len(seen)
    return best, log
