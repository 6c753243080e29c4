"""The one sequential calibration pipeline, and the plumbing every pruning method shares.

:func:`sequential` is the only loop that runs blocks over calibration data: calibration tokens are embedded once;
then each block is handed to its client (a pruning method, GPTQ int4 calibration, structured scoring, reformation)
on the hidden states produced by the *already compressed* blocks before it, and its output as the client left it
becomes the next block's input (as in SparseGPT and Wanda, and llm-compressor's sequential pipeline). With a
stream, each block is read from the checkpoint before its turn and written out and released after it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models.base import Adapter
from edgeprune.pruning.attention_math import attention_error, attention_probs
from edgeprune.pruning.hidden import HiddenPolicy, as_block_input, fill
from edgeprune.pruning.kernels import ColumnSquareNorms, CrossHessian, wanda_scores
from edgeprune.runtime import give_back_memory
from edgeprune.sparsity import SparsitySpec, parse_sparsity
from edgeprune.sparsity.permute import apply_permutation, kept_score, segment_permutations


@dataclass
class LinearResult:
    """A method's decision for one linear: the keep-mask, and optionally updated weights."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None


@dataclass
class BlockContext:
    """One block being pruned, with its calibration inputs and helpers to gather statistics."""

    index: int
    prefix: str
    block: nn.Module
    adapter: Adapter
    inputs: torch.Tensor  # [samples, seq, hidden], outputs of the pruned blocks before
    context: Any  # per-sequence extras every block call needs (e.g. rotary cos/sin)
    specs: dict[str, SparsitySpec]  # per linear name (relative to the block); absent = keep dense
    batch_size: int
    dense_block: nn.Module | None  # an untouched copy of the block, for dense targets
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    hidden_policy: HiddenPolicy | None = None  # where the outputs go (None: in memory)
    _dense_inputs: dict | None = field(default=None, repr=False)
    _outputs: torch.Tensor | None = field(default=None, repr=False)

    def keep_dense_copy(self) -> nn.Module:
        """Snapshot the block as it is now (before compression) as ``dense_block``, the target of dense-output fits."""
        self.dense_block = copy.deepcopy(self.block)
        return self.dense_block

    def outputs(self) -> torch.Tensor:
        """The block's outputs on ``inputs`` as the block is now; computed once, and what the next block reads."""
        if self._outputs is None:
            self._outputs = run_block_batched(self.adapter, self.block, self.inputs, self.context, self.batch_size, self.hidden_policy)
        return self._outputs

    def batches(self):
        for start in range(0, self.inputs.shape[0], self.batch_size):
            yield as_block_input(self.inputs[start : start + self.batch_size], self.block)

    def linears(self, block: nn.Module | None = None) -> dict[str, nn.Linear]:
        return self.adapter.block_linears(self.block if block is None else block)

    def stages(self) -> list[dict[str, nn.Linear]]:
        """The block's linear stages, restricted to those that will be pruned."""
        return [s for s in ({n: lin for n, lin in st.items() if n in self.specs} for st in self.adapter.stages(self.block)) if s]

    def _representatives(self, names: list[str]) -> dict[str, str]:
        """Map each name to the first name of its stage: linears of one stage read the same input."""
        first = {n: next(iter(stage)) for stage in self.adapter.stages(self.block) for n in stage}
        return {n: first[n] for n in names}

    @torch.no_grad()
    def collect(self, names: list[str], make: Callable[[int], Any]) -> dict[str, Any]:
        """Run the (partly pruned) block over all inputs; feed each named linear's inputs to an accumulator.

        Linears that share an input (one stage) share one accumulator.
        """
        linears = self.linears()
        reps = self._representatives(names)
        accs = {r: make(linears[r].in_features) for r in set(reps.values())}
        for x in self.batches():
            self.adapter.read_inputs(self.block, x, self.context, {r: acc.add for r, acc in accs.items()})
        return {n: accs[r] for n, r in reps.items()}

    @torch.no_grad()
    def dense_inputs(self) -> dict[str, list[torch.Tensor]]:
        """Every linear's inputs in the untouched dense block, per batch (computed once per block)."""
        if self._dense_inputs is None:
            store: dict[str, list[torch.Tensor]] = {n: [] for n in self.linears(self.dense_block)}
            for x in self.batches():
                self.adapter.read_inputs(self.dense_block, x, self.context, {n: store[n].append for n in store})
            self._dense_inputs = store
        return self._dense_inputs

    @torch.no_grad()
    def collect_pairs(self, names: list[str]) -> dict[str, CrossHessian]:
        """Like :meth:`collect`, pairing each linear's pruned-path input with its dense twin's input."""
        dense = self.dense_inputs()
        linears = self.linears()
        reps = self._representatives(names)
        accs = {r: CrossHessian(linears[r].in_features, self.inputs.device) for r in set(reps.values())}
        for b, x in enumerate(self.batches()):
            taps = {r: lambda xp, r=r, b=b: accs[r].add(xp, dense[r][b]) for r in accs}
            self.adapter.read_inputs(self.block, x, self.context, taps)
        return {n: accs[r] for n, r in reps.items()}

    def apply(self, results: dict[str, LinearResult]) -> None:
        apply_results(self.linears(), results)


def sequential(
    adapter: Adapter,
    model: nn.Module,
    calib_ids: torch.Tensor | None,
    batch_size: int = 8,
    device: str | None = None,
    specs: dict[str, dict[str, SparsitySpec]] | None = None,
    stream=None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    hidden_policy: HiddenPolicy | None = None,
) -> Iterator[BlockContext]:
    """Calibrate → compress → propagate, block by block: yields each block's :class:`BlockContext`.

    The caller gathers statistics and changes the block while it holds the context; when it asks for the next one,
    the block's outputs as changed (:meth:`BlockContext.outputs`) become the next block's inputs. Without
    ``calib_ids`` the contexts have no inputs (data-free methods). ``stream`` (a
    :class:`~edgeprune.models.streaming.StreamedModel`) holds one block in memory at a time. ``hidden_policy`` says where
    the hidden states between blocks live (:mod:`edgeprune.pruning.hidden`; None: in memory).
    """
    blocks = adapter.blocks(model)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    hidden, context = None, None
    resumed = stream.resumed if stream is not None else None
    if resumed is not None:  # a stopped streamed run: its blocks are on disk, and the hidden states after the last
        hidden, context = resumed["hidden"], resumed["context"]
        gen.set_state(resumed["generator"])
    elif calib_ids is not None:
        with stream.embedding() if stream is not None else contextlib.nullcontext():
            hidden, context = embed_calibration(adapter, model, calib_ids if device is None else calib_ids.to(device), batch_size, hidden_policy)
    for i, block in enumerate(blocks):
        if resumed is not None and i < resumed["next_block"]:
            continue
        with stream.block(i, block) if stream is not None else contextlib.nullcontext():
            prefix = adapter.block_prefix(model, i)
            ctx = BlockContext(i, prefix, block, adapter, hidden, context, (specs or {}).get(prefix, {}), batch_size, None, gen, hidden_policy)
            yield ctx
            if hidden is not None:
                hidden = ctx.outputs()
            ctx.dense_block = ctx._dense_inputs = None
        if stream is not None:
            stream.save_progress(i + 1, hidden, context, gen)
        give_back_memory()  # what the block's work freed: otherwise the heap grows block by block (runtime.py)
        if progress:
            progress(i + 1, len(blocks))


@torch.no_grad()
def embed_calibration(adapter: Adapter, model: nn.Module, ids: torch.Tensor, batch_size: int,
                      policy: HiddenPolicy | None = None) -> tuple[torch.Tensor, Any]:
    """Hidden states entering block 0 for all calibration ids (in batches), and the context every block needs."""
    context = []

    def chunks():
        for b in ids.split(batch_size):
            x, ctx = adapter.embed(model, b)
            if not context:
                context.append(ctx)
            yield x

    states = fill(chunks(), len(ids), policy)
    return states, context[0]


@torch.no_grad()
def run_block_batched(adapter: Adapter, block: nn.Module, hidden: torch.Tensor, context: Any, batch_size: int,
                      policy: HiddenPolicy | None = None) -> torch.Tensor:
    """One block over all calibration hidden states: the next block's inputs (placed by ``policy``)."""
    return fill((adapter.run_block(block, as_block_input(x, block), context) for x in hidden.split(batch_size)), len(hidden), policy)


def apply_results(linears: dict[str, nn.Linear], results: dict[str, LinearResult]) -> None:
    """The one place where masks become zeros in weights."""
    with torch.no_grad():
        for name, res in results.items():
            weight = linears[name].weight
            new = weight if res.weight is None else res.weight.to(weight.dtype)
            # where(), not a product: pruned entries become +0.0, never -0.0
            weight.copy_(torch.where(res.mask.to(weight.device), new, torch.zeros((), dtype=weight.dtype, device=weight.device)))


class Pruner(ABC):
    """A pruning method. Subclasses decide masks for one block; the engine does the rest."""

    name: str = ""
    needs_calibration: bool = True
    #: frozen dataclass of the method's hyperparameters, or None
    Config: type | None = None

    @abstractmethod
    def prune_block(self, ctx: BlockContext) -> dict[str, LinearResult]: ...

    def settings(self) -> dict:
        return {}


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, int]
    sparsity: float
    pattern: str


@dataclass
class PruneReport:
    method: str
    sparsity: str
    layers: list[LayerRecord]
    attention_error: list[dict]  # per block: {"block": i, "error": float}
    seconds: float
    settings: dict
    diagnostics: list = field(default_factory=list)
    permutations: list = field(default_factory=list)

    @property
    def overall_sparsity(self) -> float:
        """Fraction of zeros over all prunable linear weights."""
        total = sum(l.shape[0] * l.shape[1] for l in self.layers)
        zeros = sum(l.sparsity * l.shape[0] * l.shape[1] for l in self.layers)
        return zeros / max(total, 1)


def resolve_specs(adapter: Adapter, model: nn.Module, default: SparsitySpec, overrides: dict[str, str]) -> dict[str, dict[str, SparsitySpec]]:
    """Per block, per linear: the spec to prune with. Overrides map glob patterns on full names to a spec or 'dense'."""
    out: dict[str, dict[str, SparsitySpec]] = {}
    for i, block in enumerate(adapter.blocks(model)):
        prefix = adapter.block_prefix(model, i)
        specs: dict[str, SparsitySpec] = {}
        for name, linear in adapter.block_linears(block).items():
            full = f"{prefix}.{name}"
            spec: SparsitySpec | None = default
            for pattern, value in overrides.items():
                if fnmatch.fnmatchcase(full, pattern):
                    spec = None if str(value).strip().lower() == "dense" else parse_sparsity(value)
            if spec is not None:
                spec.check_width(linear.in_features, full)
                specs[name] = spec
        out[prefix] = specs
    if not any(adapter.block_linears(b) for b in adapter.blocks(model)):
        raise EdgepruneError("the model has no prunable linear layers", "pass a model with transformer blocks")
    if not any(out.values()):
        raise EdgepruneError("nothing to prune: every linear layer is kept dense", "drop some 'dense' overrides")
    return out


def permute_block(ctx: BlockContext) -> list[dict]:
    """Reorder the input channels of the block's N:M consumers (exactly absorbed) to raise the kept score."""
    todo = [cp for cp in ctx.adapter.permutations(ctx.block) if getattr(ctx.specs.get(cp.consumer), "is_nm", False)]
    if not todo:
        return []
    names = [cp.consumer for cp in todo]
    norms = ctx.collect(names, lambda f: ColumnSquareNorms(f, ctx.inputs.device)) if ctx.inputs is not None else {}
    linears = ctx.linears()
    log = []
    for cp in todo:
        spec = ctx.specs[cp.consumer]
        weight = linears[cp.consumer].weight.detach().float()
        scores = wanda_scores(weight, norms[cp.consumer].value) if cp.consumer in norms else weight.abs()
        perms = segment_permutations(scores.cpu(), cp.consumer_segments, cp.producer_segments, spec.n, spec.m)
        before = float(kept_score(scores, spec.n, spec.m))
        apply_permutation(linears, cp.consumer, cp.producers, perms, cp.consumer_segments)
        new_scores = wanda_scores(linears[cp.consumer].weight.detach().float(), norms[cp.consumer].value) if cp.consumer in norms else linears[cp.consumer].weight.detach().abs()
        after = float(kept_score(new_scores, spec.n, spec.m))
        log.append({"block": ctx.index, "layer": cp.consumer, "kept_score_gain": round(after / before - 1, 6)})
    return log


@torch.no_grad()
def _block_attention_error(adapter: Adapter, block, dense_block, x: torch.Tensor, context) -> float:
    parts, dparts = adapter.attention(block), adapter.attention(dense_block)
    xin = dparts.attn_input(x)
    return float(attention_error(attention_probs(xin, parts, context), attention_probs(xin, dparts, context)))


def prune_model(
    model: nn.Module,
    adapter: Adapter,
    pruner: Pruner,
    spec: SparsitySpec,
    calib_ids: torch.Tensor | None,
    overrides: dict[str, str] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    error_samples: int = 8,
    permute: bool = False,
    stream=None,
    hidden_policy: HiddenPolicy | None = None,
) -> PruneReport:
    """Prune ``model`` in place, block by block. Returns what was done, per layer.

    With ``stream`` (a :class:`~edgeprune.models.streaming.StreamedModel`) the model lives on the meta device: each
    block is read from the checkpoint before it is pruned and written out and released after, so memory holds one
    block at a time. ``hidden_policy`` places the calibration hidden states between blocks (None: in memory). The arithmetic
    is the same either way."""
    start = time.perf_counter()
    specs = resolve_specs(adapter, model, spec, overrides or {})
    if stream is None:
        model.to(device)
    if pruner.needs_calibration and calib_ids is None:
        raise EdgepruneError(f"method '{pruner.name}' needs calibration data", "pass --calib")
    layers: list[LayerRecord] = []
    errors: list[dict] = []
    permutations: list[dict] = []
    if stream is not None:  # what a stopped run must not lose: restored on resume, saved after every block
        if stream.resumed is not None:
            state = stream.resumed["state"]
            layers, errors, permutations = [LayerRecord(**r) for r in state["layers"]], state["errors"], state["permutations"]
            if hasattr(pruner, "diagnostics"):
                pruner.diagnostics = state["diagnostics"]
        stream.state = lambda: {"layers": [dataclasses.asdict(r) for r in layers], "errors": errors,
                                "permutations": permutations, "diagnostics": list(getattr(pruner, "diagnostics", []))}
    ids = calib_ids if pruner.needs_calibration or error_samples else None
    for ctx in sequential(adapter, model, ids, batch_size, device, specs, stream, progress=progress, hidden_policy=hidden_policy):
        if permute:
            permutations += permute_block(ctx)
        dense_block = ctx.keep_dense_copy()
        ctx.apply(pruner.prune_block(ctx))
        for name, linear in adapter.block_linears(ctx.block).items():
            w = linear.weight
            layers.append(LayerRecord(f"{ctx.prefix}.{name}", tuple(w.shape), float((w == 0).float().mean()), str(ctx.specs.get(name, "dense"))))
        if ctx.inputs is not None and error_samples:
            errors.append({"block": ctx.index, "error": _block_attention_error(adapter, ctx.block, dense_block, as_block_input(ctx.inputs[:error_samples], ctx.block), ctx.context)})
        del dense_block
    seconds = time.perf_counter() - start
    diagnostics = list(getattr(pruner, "diagnostics", []))
    return PruneReport(pruner.name, str(spec), layers, errors, seconds, pruner.settings(), diagnostics, permutations)
