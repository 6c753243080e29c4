"""What ``edgeprune structured`` runs: remove whole attention heads and MLP channels so the dense matrices really
shrink (the path to speed on CPUs, where ONNX Runtime has no sparse kernels).

Flow: model + calibration → per-unit scores (one dense pass) → search per-block shapes under a parameter or
measured-latency budget → mask + reform (ridge re-fit of the output projections) → physically smaller
linears → Hugging Face folder (see ``layout.py`` for how per-block sizes are stored and reloaded).

    edgeprune structured smollm2-135m --target-params 0.75 --out out/smol-structured
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import CalibConfig, calibration_batch
from edgeprune.errors import EdgepruneError
from edgeprune.structured.layout import auto_map_entry, block_params, model_layout, remove_units, save_layout_folder, unit_cost
from edgeprune.structured.reform import reform_model
from edgeprune.structured.scores import SCORES, UnitScores, score_model
from edgeprune.structured.search import SEARCHES, Arch, Cost, ParamCost, Space, dense_arch, evolve, greedy_arch, kept_units, uniform_arch

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class StructuredConfig:
    """Everything ``edgeprune structured`` takes, as the Python API and recipes take it."""

    target_params: float | None = 0.75  # fraction of the blocks' linear parameters to keep
    target_latency_ms: float | None = None  # or: decode ms/token on the latency device, measured with ONNX Runtime
    target_speedup: float | None = None  # or: decode this many times faster than the dense model on the latency device
    latency_device: str | None = None  # device profile (name or .toml) the latency budget is measured on
    score: str = "output"  # per-unit importance: output, wanda-sp, magnitude
    search: str = "evolution"  # evolution, greedy, uniform
    reform: bool = True  # re-fit kept weights to the dense block outputs
    drop_blocks: bool = False  # evolution may also remove whole blocks (measured: worse held-out quality, no clear speed gain)
    calib: CalibConfig = field(default_factory=CalibConfig)
    search_samples: int = 8  # calibration windows the search's loss uses (the first ones, cut to search_seqlen)
    search_seqlen: int = 256
    population: int = 8
    generations: int = 10
    channel_step: int = 32  # MLP channels are kept in multiples of this (at most 1/16 of a block's channels)
    reform_damp: float = 0.01
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.target_params is None and self.target_latency_ms is None and self.target_speedup is None:
            raise EdgepruneError("no target given", "pass --target-params F and/or --target-latency-ms X (or --target-speedup S) --device D")
        if self.target_latency_ms is not None and self.target_speedup is not None:
            raise EdgepruneError("both --target-latency-ms and --target-speedup given", "pass one latency budget")
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise EdgepruneError(f"--target-speedup {self.target_speedup} is not above 1", "pass e.g. --target-speedup 1.25")
        if self.target_speedup is not None and not self.latency_device:
            raise EdgepruneError("a speed-up target needs a device to measure on", "add --device devices/this-host.toml (or a profile name)")
        if self.target_params is not None and not 0 < self.target_params <= 1:
            raise EdgepruneError(f"--target-params {self.target_params} is not in (0, 1]",
                                 "pass the fraction of block parameters to keep, e.g. --target-params 0.75")
        if self.target_latency_ms is not None:
            if self.target_latency_ms <= 0:
                raise EdgepruneError(f"--target-latency-ms {self.target_latency_ms} must be positive", "pass e.g. --target-latency-ms 15")
            if not self.latency_device:
                raise EdgepruneError("a latency budget needs a device to measure on", "add --device devices/this-host.toml (or a profile name)")
        if self.search not in SEARCHES:
            raise EdgepruneError(f"unknown search '{self.search}'", f"choose one of: {', '.join(SEARCHES)}")
        SCORES.get(self.score)
        for key in ("search_samples", "search_seqlen", "population", "generations", "channel_step", "batch_size"):
            if getattr(self, key) < (2 if key in ("population", "search_seqlen") else 1):
                raise EdgepruneError(f"structured {key.replace('_', ' ')} {getattr(self, key)} is too small", f"raise {key}")


@dataclass
class StructuredReport:
    """What ``structured`` did: the chosen shapes, sizes, the search and the reformation gains."""

    score: str
    search: str
    target: dict
    params_before: int
    params_after: int
    layout: list[dict]
    search_log: dict
    reform: list[dict]
    seconds: float
    latency: dict | None = None
    removed_blocks: list[int] = field(default_factory=list)  # indices in the source model

    @property
    def kept_fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"kept_fraction": round(self.kept_fraction, 6)}


def spaces_and_cost(model: nn.Module, adapter, channel_step: int, drop_blocks: bool = False) -> tuple[tuple[Space, ...], ParamCost]:
    """The search space of every block and what each choice costs in parameters."""
    spaces, heads, chans, fixed = [], [], [], []
    for block in adapter.blocks(model):
        units = adapter.units(block)
        groups, per_group = (units.num_kv_heads, units.group_size) if units.group_size > 1 else (1, units.num_heads)
        spaces.append(Space(groups, per_group, units.channels, max(1, min(channel_step, units.channels // 16)), drop_blocks))
        cost = unit_cost(block, adapter)
        heads.append(cost.head)
        chans.append(cost.channel)
        fixed.append(cost.fixed)
    spaces = tuple(spaces)
    return spaces, ParamCost(spaces, tuple(heads), tuple(chans), tuple(fixed))


@contextlib.contextmanager
def masked(model: nn.Module, adapter, kept: list[tuple[torch.Tensor, torch.Tensor]]):
    """Run the model as if the units outside ``kept`` were removed (their output-projection inputs are zeroed)."""
    handles = []
    for block, (heads, channels) in zip(adapter.blocks(model), kept):
        units = adapter.units(block)
        for name, n, keep, width in ((units.head_cols, units.num_heads, heads, units.head_dim), (units.channel_cols, units.channels, channels, 1)):
            linear = block.get_submodule(name)
            mask = torch.zeros(n, device=linear.weight.device, dtype=linear.weight.dtype)
            mask[keep.to(mask.device)] = 1
            mask = mask.repeat_interleave(width)
            handles.append(linear.register_forward_pre_hook(lambda _m, args, mask=mask: (args[0] * mask, *args[1:])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _fitness(loaded, ids: torch.Tensor, spaces, scores, batch_size: int) -> Callable[[Arch], float]:
    """The search's calibration loss: next-token NLL (decoders) or relative hidden-state error vs dense (encoders)."""
    model, adapter = loaded.model, loaded.adapter

    @torch.no_grad()
    def run(arch: Arch | None) -> list[torch.Tensor]:
        ctx = masked(model, adapter, kept_units(arch, spaces, scores)) if arch is not None else contextlib.nullcontext()
        with ctx:
            if loaded.is_decoder:
                return [model(input_ids=b, use_cache=False).logits for b in ids.split(batch_size)]
            return [model(input_ids=b).last_hidden_state for b in ids.split(batch_size)]

    if loaded.is_decoder:
        def nll(arch: Arch) -> float:
            total = sum(float(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]).float(), b[:, 1:].reshape(-1), reduction="sum"))
                        for lg, b in zip(run(arch), ids.split(batch_size)))
            return total / ids[:, 1:].numel()
        return nll

    dense = run(None)
    ref = sum(float(d.double().pow(2).sum()) for d in dense)

    def hidden_error(arch: Arch) -> float:
        return sum(float((h - d).double().pow(2).sum()) for h, d in zip(run(arch), dense)) / ref
    return hidden_error


def choose_arch(loaded, config: StructuredConfig, scores: list[UnitScores], calib_ids: torch.Tensor,
                progress: Progress | None = None) -> tuple[Arch, tuple[Space, ...], dict, dict | None]:
    """Run the search: the architecture, the spaces, the search log and (for a latency budget) the latency model."""
    spaces, params = spaces_and_cost(loaded.model, loaded.adapter, config.channel_step, config.drop_blocks and config.search == "evolution")
    budgets: list[tuple[Cost, float, str]] = []  # each cost with its budget; an architecture must meet all
    if config.target_params is not None:
        budgets.append((params, config.target_params * params(dense_arch(spaces)), "parameters"))
    latency = None
    if config.target_latency_ms is not None or config.target_speedup is not None:
        from edgeprune.structured.latency import latency_cost

        lat_cost, latency = latency_cost(loaded, spaces, config.latency_device, progress)
        # a speed-up is against the dense model as measured in the same latency model, so run-to-run drift cancels
        ms = config.target_latency_ms or lat_cost(dense_arch(spaces)) / config.target_speedup
        latency["budget_ms"] = round(ms, 3)
        budgets.append((lat_cost, ms, "ms"))
    # one cost for the search: the most-spent budget's fraction, within budget when ≤ 1
    cost, budget = (lambda arch: max(c(arch) / b for c, b, _ in budgets)), 1.0
    step = (lambda i, n: progress("search", i, n)) if progress else None
    smallest_arch = tuple((1, s.min_channels) for s in spaces)
    if latency is not None:
        latency["predicted_smallest_ms"] = round(lat_cost(smallest_arch), 3)
    for c, b, unit in budgets:
        if c(smallest_arch) > b:
            raise EdgepruneError(f"the budget ({b:.4g} {unit}) is below the smallest model the search can reach "
                                 f"({c(smallest_arch):.4g} {unit}: one head per KV group and {spaces[0].min_channels} channels per block)",
                                 "raise the target")
    if cost(dense_arch(spaces)) <= budget:
        arch, log = dense_arch(spaces), {"note": "the dense model already meets the budget: nothing removed"}
    elif config.search == "uniform":
        arch, log = uniform_arch(spaces, cost, budget), {}
    elif config.search == "greedy":
        arch, log = greedy_arch(dense_arch(spaces), spaces, scores, cost, budget), {}
    else:
        ids = calib_ids[: config.search_samples, : config.search_seqlen]
        fitness = _fitness(loaded, ids, spaces, scores, config.batch_size)
        arch, search_log = evolve(spaces, scores, cost, budget, fitness, config.population, config.generations, config.seed, step)
        log = dataclasses.asdict(search_log)
    if latency is not None:
        latency["predicted_ms"] = round(lat_cost(arch), 3)
        latency["predicted_dense_ms"] = round(lat_cost(dense_arch(spaces)), 3)
    return arch, spaces, log, latency


def structured(model: str, out: str | Path, config: StructuredConfig = StructuredConfig(), overwrite: bool = False,
               progress: Progress | None = None) -> StructuredReport:
    """Remove heads and MLP channels from ``model`` under ``config``'s budget; write a smaller Hugging Face folder."""
    from edgeprune.io import check_out_dir
    from edgeprune.models.loading import load_model
    from edgeprune.pruning.hidden import policy_for
    from edgeprune.runtime import resolve_device

    from edgeprune.data import check_text
    from edgeprune.specs import resolve_spec

    start = time.perf_counter()
    device = resolve_device(config.device)
    resolve_spec(model)
    check_out_dir(out, overwrite)
    check_text(config.calib.source, "calib", config.calib.tokens)
    if config.latency_device:
        from edgeprune.profiling.devices import load_device

        load_device(config.latency_device)  # an unknown profile fails before any work
    loaded = load_model(model, device=device)
    auto_map_entry(loaded.model.config.model_type)  # fails before the work when the folder could not be written
    calib_ids = calibration_batch(loaded.tokenizer, config.calib, loaded.model).to(device)
    before = sum(block_params(b, loaded.adapter) for b in loaded.adapter.blocks(loaded.model))

    step = lambda name: (lambda i, n: progress(name, i, n)) if progress else None  # noqa: E731
    policy = policy_for(loaded.path, Path(out).absolute().parent)  # hidden states in the model's dtype, as a prune keeps them
    scores = score_model(loaded.model, loaded.adapter, calib_ids, config.score, config.batch_size, step("score"), policy)
    arch, spaces, log, latency = choose_arch(loaded, config, scores, calib_ids, progress)
    kept = kept_units(arch, spaces, scores)
    reform_log = reform_model(loaded.model, loaded.adapter, kept, calib_ids, config.reform, config.reform_damp, config.batch_size,
                              step("reform"), policy)
    for block, (heads, channels) in zip(loaded.adapter.blocks(loaded.model), kept):
        if heads.numel():
            remove_units(block, loaded.adapter, heads, channels)
    removed = [i for i, (heads, _) in enumerate(kept) if heads.numel() == 0]
    if removed:
        loaded.adapter.keep_blocks(loaded.model, [i for i in range(len(kept)) if i not in removed])
    after = sum(block_params(b, loaded.adapter) for b in loaded.adapter.blocks(loaded.model))
    target = {k: v for k, v in (("params", config.target_params), ("latency_ms", config.target_latency_ms),
                                ("speedup", config.target_speedup), ("device", config.latency_device)) if v is not None}
    report = StructuredReport(config.score, config.search, target, before, after, model_layout(loaded.model, loaded.adapter),
                              log, reform_log, 0.0, latency, removed)
    report.seconds = round(time.perf_counter() - start, 2)
    save_structured(loaded, report, out, config, int(calib_ids.numel()), overwrite)
    return report


def save_structured(loaded, report: StructuredReport, out, config: StructuredConfig, calib_tokens: int, overwrite: bool) -> None:
    """Write the smaller model as a Hugging Face folder that reloads with transformers (trust_remote_code)."""
    from edgeprune import __version__
    from edgeprune.io import atomic_dir
    from edgeprune.metadata import write_metadata
    from edgeprune.pruning.workflow import _copy_extra_files

    with atomic_dir(out, overwrite) as tmp:
        save_layout_folder(loaded.model.to("cpu"), loaded.adapter, loaded.tokenizer, tmp)
        _copy_extra_files(loaded.path if loaded.gguf_file is None else None, tmp)
        write_metadata(tmp, {
            "edgeprune_version": __version__,
            "source_model": loaded.source,
            "architecture": loaded.adapter.family,
            "task": loaded.adapter.task,
            "method": "structured",
            "structured": report.to_dict(),
            "config": dataclasses.asdict(config),
            "calibration": dataclasses.asdict(config.calib) | {"tokens": calib_tokens},
            "seconds": report.seconds,
        })

