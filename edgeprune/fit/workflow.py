"""What ``edgeprune fit`` runs: the best model that meets a device's budget.

Flow: candidates (dense / structured keep ratios / N:M where the device has kernels, × int4 / int8) → the dense
candidates measured for real (export, quantise, ``profile`` on the device, ``eval``) → every other candidate's PyTorch
model made (structured pruning, cached) and *predicted*: latency with the measured latency model of ``structured``
built on graphs quantised the same way, scaled to the measured dense figure; size and peak memory from the
parameters removed; quality from perplexity (encoders: embedding cosine) on a small held-out slice, shifted by what
the quantisation cost the dense model → a shortlist on the predicted Pareto front near the budget → the shortlist
measured for real → the best held-out quality among the measured candidates that meet every limit.

Every stage is cached under ``OUT/cache`` (one folder per stage, named by what it depends on, finished when its
meta.json is there): a re-run with another budget measures nothing twice, and a stopped run resumes.

    edgeprune fit smollm2-135m --device this-host --max-decode-ms 8 --out runs/fit
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeprune.data import EMBEDDED
from edgeprune.errors import EdgepruneError
from edgeprune.fit.budget import Budget, resolve_budget
from edgeprune.fit.candidates import Candidate, generate_candidates
from edgeprune.onnx.configs import QuantizeConfig
from edgeprune.profiling.workflow import Workload
from edgeprune.structured.workflow import StructuredConfig

MiB = 2**20
from edgeprune.metadata import FIT_SCHEMA_VERSION
META = "meta.json"


@dataclass(frozen=True)
class FitConfig:
    """What ``edgeprune fit`` takes besides the model, device and output, as the Python API and recipes take it."""

    budget: Budget = Budget()  # limits given explicitly; they replace the device profile's budget fields
    keeps: tuple[float, ...] = (0.75, 0.55)  # structured candidates: fractions of the block parameters kept
    schemes: tuple[str, ...] = ("int4", "int8")
    drop_blocks: tuple[bool, ...] = (False, True)  # structured candidates with and without whole-block removal
    nm_patterns: tuple[str, ...] = ("2:4",)  # only used when the device profile declares nm_kernels
    shortlist: int = 3  # candidates measured per round, best predicted quality first
    margin: float = 0.15  # a candidate predicted within this fraction above a limit is still worth measuring
    measure_all: bool = False  # measure every candidate (checks the predictions and the proxy's choice)
    threads: int | None = None  # None: the device profile's intra_op_threads, else every usable core
    text: str = EMBEDDED  # held-out text for quality (never the calibration split)
    seqlen: int = 512  # tokens per perplexity window
    proxy_windows: int = 4  # windows (encoders: sentences ×8) of the held-out text the quality proxy reads
    eval_windows: int | None = None  # None: the whole held-out text
    structured: StructuredConfig = StructuredConfig()  # template: target_params and drop_blocks come from each candidate
    quantize: QuantizeConfig = QuantizeConfig()  # template: scheme and head_bits come from each candidate
    workload: Workload = Workload(prompt_lengths=(128,), decode_tokens=32, op_profile=False)
    where: str = "device"  # device | local, as `profile`
    rounds: int = 3  # profile rounds, order alternating; timings are medians, pruned ones as ratios to the reference in the same rounds
    side_by_side: int = 16  # turns per graph when candidates are timed beside the reference in one process (0: off)
    cache: str | None = None  # the stage cache (default OUT/cache); another fit's cache is reused where stages match

    def __post_init__(self):
        if self.shortlist < 1:
            raise EdgepruneError(f"shortlist {self.shortlist} must be 1 or more", "pass e.g. --shortlist 3")
        if not 0 <= self.margin < 1:
            raise EdgepruneError(f"margin {self.margin} is not in [0, 1)", "pass e.g. --margin 0.15")
        if self.proxy_windows < 1:
            raise EdgepruneError(f"proxy_windows {self.proxy_windows} must be 1 or more", "pass e.g. proxy_windows = 4")
        if self.rounds < 1:
            raise EdgepruneError(f"rounds {self.rounds} must be 1 or more", "pass e.g. --rounds 3")
        if self.side_by_side < 0:
            raise EdgepruneError(f"side_by_side {self.side_by_side} must be 0 or more", "pass e.g. --side-by-side 16")
        if self.where not in ("device", "local"):
            raise EdgepruneError(f"where '{self.where}' is unknown", "use device or local")


@dataclass
class Entry:
    """One candidate's predicted and measured figures (figure keys as in :mod:`edgeprune.fit.budget`)."""

    candidate: Candidate
    predicted: dict = field(default_factory=dict)  # figures + "quality" (the proxy)
    measured: dict = field(default_factory=dict)  # figures + "quality" (the whole held-out text)
    basis: str = ""  # how ``predicted`` was obtained
    misses: dict = field(default_factory=dict)  # limit key → measured / limit, for each limit it fails
    shortlisted: bool = False

    @property
    def is_measured(self) -> bool:
        return bool(self.measured)

    def to_dict(self) -> dict:
        return {"key": self.candidate.key, "label": self.candidate.label, "candidate": dataclasses.asdict(self.candidate),
                "predicted": self.predicted, "measured": self.measured, "basis": self.basis, "misses": self.misses,
                "meets_budget": self.is_measured and not self.misses, "shortlisted": self.shortlisted}


@dataclass
class FitReport:
    model: str
    device: str
    threads: int
    budget: dict  # the limits as figures
    budget_rule: str  # the budget as given (relative limits with the figure they came to)
    quality_metric: str  # perplexity (lower is better) or embedding_cosine (higher is better)
    entries: list[Entry]
    chosen: str | None
    rounds: int
    seconds: float
    latency_models: dict = field(default_factory=dict)
    shortlist_choice: str | None = None  # what the shortlist rounds alone chose (with measure_all: a check of the proxy)
    measured_all: bool = False
    profile_rounds: int = 1  # profile rounds per measurement (timings are medians; pruned ones relative to dense int4)
    side_by_side: int = 0  # turns per graph when pruned candidates were timed beside dense int4 in one process (0: not)
    schema_version: int = FIT_SCHEMA_VERSION

    def entry(self, key: str) -> Entry:
        return next(e for e in self.entries if e.candidate.key == key)

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "entries"}
        return out | {"entries": [e.to_dict() for e in self.entries]}


# --- quality as one lower-is-better number --------------------------------------------------------------


def quality_value(result, is_decoder: bool) -> float:
    """Perplexity for decoders; 1 − embedding cosine for encoders (so lower is better for both)."""
    return float(result.perplexity) if is_decoder else 1.0 - float(result.embedding_cosine)


def apply_quant_cost(proxy_float: float, dense_float: float, dense_quant: float, is_decoder: bool) -> float:
    """A pruned float model's quality proxy after quantisation: perplexity × what quantisation multiplied the dense
    model's by; for encoders, the cosine error + what quantisation added to the dense model's."""
    if is_decoder:
        return proxy_float * dense_quant / dense_float
    return proxy_float + (dense_quant - dense_float)


# --- the choice ------------------------------------------------------------------------------------------


def pareto_front(entries: list[Entry], keys: tuple[str, ...]) -> list[Entry]:
    """Entries no other entry beats on every one of ``keys`` of their predictions (lower is better), ties kept."""
    def dominates(a: Entry, b: Entry) -> bool:
        pa, pb = [a.predicted.get(k, math.inf) for k in keys], [b.predicted.get(k, math.inf) for k in keys]
        return all(x <= y for x, y in zip(pa, pb)) and any(x < y for x, y in zip(pa, pb))

    return [e for e in entries if not any(dominates(o, e) for o in entries if o is not e)]


def shortlist(entries: list[Entry], budget: Budget, margin: float, size: int, keys: tuple[str, ...]) -> list[Entry]:
    """The next unmeasured candidates to measure: those predicted to meet every limit (within ``margin``) and, once a
    measured candidate meets the budget, to beat its quality; the predicted Pareto front of quality against ``keys``
    first, best predicted quality first; at most ``size``."""
    pending = [e for e in entries if not e.is_measured and e.predicted]
    near = [e for e in pending if all(r <= 1 + margin for r in budget.misses(e.predicted).values())]
    best = choose(entries, budget)
    if best is not None:  # only what is predicted to beat the best measured candidate that meets the budget
        near = [e for e in near if e.predicted["quality"] < best.measured["quality"]]
    front = pareto_front(near, ("quality", *keys))
    rest = [e for e in near if e not in front]
    ranked = sorted(front, key=lambda e: e.predicted["quality"]) + sorted(rest, key=lambda e: e.predicted["quality"])
    return ranked[:size]


def choose(entries: list[Entry], budget: Budget) -> Entry | None:
    """The measured candidate with the best held-out quality among those whose measured figures meet every limit."""
    fits = [e for e in entries if e.is_measured and not budget.misses(e.measured)]
    return min(fits, key=lambda e: e.measured["quality"]) if fits else None


def closest(entries: list[Entry], budget: Budget) -> tuple[Entry, dict, str]:
    """The candidate that misses the budget by least (its worst measured / limit ratio; predictions where nothing
    was measured), with its misses and whether they were measured or predicted."""
    def worst(e: Entry, figures: dict) -> float:
        return max(budget.misses(figures).values(), default=0.0)

    measured = [e for e in entries if e.is_measured]
    if measured:
        best = min(measured, key=lambda e: worst(e, e.measured))
        return best, budget.misses(best.measured), "measured"
    predicted = [e for e in entries if e.predicted]
    best = min(predicted, key=lambda e: worst(e, e.predicted))
    return best, budget.misses(best.predicted), "predicted"


def no_fit_error(entries: list[Entry], budget: Budget) -> EdgepruneError:
    from edgeprune.fit.budget import BUDGET_KEYS

    entry, misses, how = closest(entries, budget)
    figures = entry.measured if how == "measured" else entry.predicted
    parts = [f"{BUDGET_KEYS[k][0]} {figures.get(k, math.nan):.4g} {BUDGET_KEYS[k][1]} > {budget.limits()[k]:g} ({r:.2f}×)"
             for k, r in sorted(misses.items(), key=lambda kv: -kv[1])]
    return EdgepruneError(f"no candidate meets the budget ({budget.describe()}); closest: {entry.candidate.label}, {how} "
                          f"{'; '.join(parts)}", "loosen the budget, or add smaller candidates with --keep")


# --- the cache -------------------------------------------------------------------------------------------


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Cache:
    """One folder per finished stage under ``root``; a stage whose inputs changed is made again."""

    def __init__(self, root: Path, log: Callable[[str], None]):
        self.root, self.log = root, log

    def read(self, name: str, depends: dict) -> dict | None:
        """The stage's result when it was made from exactly ``depends``, else None."""
        meta = self.root / name / META
        if meta.is_file():
            data = json.loads(meta.read_text())
            if data.get("key") == _digest(depends):
                return data["result"]
        return None

    def key(self, name: str) -> str:
        """The key a finished stage was made with (what later stages depend on)."""
        return json.loads((self.root / name / META).read_text())["key"]

    def stage(self, name: str, depends: dict, make: Callable[[Path], dict]) -> tuple[Path, dict]:
        from edgeprune.io import atomic_dir, write_json

        folder, key = self.root / name, _digest(depends)
        result = self.read(name, depends)
        if result is not None:
            return folder, result
        self.log(f"{name}…")
        start = time.perf_counter()
        with atomic_dir(folder, overwrite=True) as tmp:
            result = make(tmp)
            write_json(tmp / META, {"key": key, "depends": depends, "result": result,
                                    "seconds": round(time.perf_counter() - start, 1)})
        return folder, result


# --- the run ---------------------------------------------------------------------------------------------


def _figures(variant, run, is_decoder: bool) -> dict:
    out = {"size_mb": variant.size_bytes / MiB, "memory_mb": run.memory.peak_mb if run.memory else None}
    if is_decoder and run.decoder:
        d = run.decoder[0]
        out |= {"decode_ms": d.decode_ms_per_token, "ttft_ms": d.prefill.p90}
    elif run.encoder:
        out["latency_ms"] = run.encoder[0].latency.p90
    return out


REFERENCE = "reference"  # the dense int4 graph, profiled again alongside later candidates
TIMINGS = ("decode_ms", "ttft_ms", "latency_ms")


def combine_rounds(rounds: list[dict], reference: list[dict] | None = None, reference_figures: dict | None = None,
                   side_by_side: dict[str, tuple[list[float], list[float]]] | None = None) -> dict:
    """One candidate's profile rounds as one result: each figure's median, and with a reference profiled in the same
    rounds, each timing as the median per-round ratio to it × the reference's own figure. ``side_by_side``: timing →
    (the candidate's turns, the reference's turns) timed in one process (:func:`~edgeprune.profiling.workflow.interleaved`);
    such a timing is the median per-turn ratio × the reference's figure instead. Any failed round fails it."""
    import statistics

    failed = next((r for r in rounds if not r["ok"]), None)
    if failed is not None:
        return failed
    figures = {}
    for key in rounds[0]["figures"]:
        values = [r["figures"][key] for r in rounds]
        if any(v is None for v in values):
            figures[key] = None
            continue
        paired = reference is not None and reference_figures and reference_figures.get(key) and key in TIMINGS and all(
            r["ok"] and r["figures"].get(key) for r in reference)
        if paired and side_by_side and key in side_by_side:
            mine, theirs = side_by_side[key]
            figures[key] = statistics.median(m / t for m, t in zip(mine, theirs)) * reference_figures[key]
        elif paired:
            ratio = statistics.median(v / r["figures"][key] for v, r in zip(values, reference))
            figures[key] = ratio * reference_figures[key]
        else:
            figures[key] = statistics.median(values)
    return {"figures": figures, "ok": True, "reason": None, "rounds": [r["figures"] for r in rounds],
            "reference_rounds": [r["figures"] for r in reference] if reference else None,
            "side_by_side": {k: {"turns": list(m), "reference_turns": list(t)} for k, (m, t) in (side_by_side or {}).items()} or None}


class _Fit:
    reference: Entry | None = None  # dense int4, once measured

    def __init__(self, model: str, device, out: Path, config: FitConfig, log: Callable[[str], None]):
        from edgeprune.models.loading import load_model

        self.model_spec, self.device, self.out, self.config, self.log = model, device, out, config, log
        self.cache = Cache(Path(config.cache) if config.cache else out / "cache", log)
        self.loaded = load_model(model)
        self.is_decoder = self.loaded.is_decoder
        import os

        self.threads = config.threads or device.intra_op_threads or len(os.sched_getaffinity(0))
        self.source = {"model": model, "device": device.to_dict(), "threads": self.threads, "text": config.text}

    # stages -----------------------------------------------------------------------------------------

    def torch_model(self, c: Candidate) -> tuple[str, dict]:
        """The candidate's PyTorch model: the source itself, or a structured / N:M folder (cached)."""
        if c.structure == "dense":
            return self.model_spec, {"removed_params": 0}
        if c.sparsity:
            from edgeprune.pruning import PruneConfig, prune

            config = PruneConfig(method=c.nm_method, sparsity=c.sparsity)
            folder, result = self.cache.stage(f"torch-{c.structure}", {"model": self.model_spec, "prune": dataclasses.asdict(config)},
                                              lambda tmp: {"sparsity": prune(self.model_spec, tmp / "model", config).overall_sparsity,
                                                           "removed_params": 0})
            return str(folder / "model"), result
        from edgeprune.structured import structured

        config = dataclasses.replace(self.config.structured, target_params=c.keep, drop_blocks=c.drop_blocks,
                                     target_latency_ms=None, target_speedup=None, latency_device=None)

        def make(tmp: Path) -> dict:
            report = structured(self.model_spec, tmp / "model", config)
            return {"params_before": report.params_before, "params_after": report.params_after,
                    "removed_params": report.params_before - report.params_after, "removed_blocks": report.removed_blocks,
                    "layout": report.layout, "search_loss": report.search_log.get("best_fitness")}

        folder, result = self.cache.stage(f"torch-{c.structure}", {"model": self.model_spec, "structured": dataclasses.asdict(config)}, make)
        return str(folder / "model"), result

    def exported(self, c: Candidate) -> Path:
        from edgeprune.onnx import ExportConfig, export

        model, _ = self.torch_model(c)
        folder, _ = self.cache.stage(f"onnx-{c.structure}", {"torch": self.torch_key(c)},
                                     lambda tmp: {"files": export(model, tmp / "model", ExportConfig()).files})
        return folder / "model"

    def quantized(self, c: Candidate) -> Path:
        from edgeprune.onnx import quantize

        graph = self.exported(c)
        config = dataclasses.replace(self.config.quantize, scheme=c.scheme, head_bits=c.head_bits if c.scheme == "int4" else 4)
        folder, _ = self.cache.stage(f"quant-{c.key}", {"onnx": self.cache.key(f"onnx-{c.structure}"), "quantize": dataclasses.asdict(config)},
                                     lambda tmp: {"bytes": quantize(graph, tmp / "model", config).bytes})
        return folder / "model"

    def torch_key(self, c: Candidate) -> str:
        """What the candidate's PyTorch model depends on: the source, or its structured / N:M stage's key."""
        return _digest({"model": self.model_spec}) if c.structure == "dense" else self.cache.key(f"torch-{c.structure}")

    def quality(self, model: str | Path, name: str, windows: int | None, depends: dict) -> float:
        from edgeprune.evaluation import evaluate

        reference = None if self.is_decoder else self.model_spec

        def make(tmp: Path) -> dict:
            result = evaluate(str(model), text=self.config.text, reference=reference, seqlen=self.config.seqlen, max_windows=windows,
                              attention=False)
            return {"value": quality_value(result, self.is_decoder), "result": dataclasses.asdict(result)}

        _, result = self.cache.stage(name, depends | {"text": self.config.text, "seqlen": self.config.seqlen, "windows": windows}, make)
        return result["value"]

    def measure(self, entries: list[Entry]) -> None:
        """Export, quantise, profile (together, ``rounds`` times in alternating order) and evaluate on the whole held-out text.

        Once :attr:`reference` (dense int4) is measured, it is profiled again in every round with later candidates, and
        their timings are the median of their per-round ratio to it × its own measured figure: what a noisy machine
        does to one round, it does to both."""
        from edgeprune.profiling import profile

        ref = self.reference if self.reference is not None and self.reference not in entries else None
        depends = {}
        for e in entries:
            self.quantized(e.candidate)
            depends[e.candidate.key] = {"graph": self.cache.key(f"quant-{e.candidate.key}"), "rounds": self.config.rounds,
                                        "side_by_side": self.config.side_by_side} | self.source
            if ref is not None:
                depends[e.candidate.key]["reference"] = self.cache.key(f"profile-{self.device.name}-{ref.candidate.key}")
        todo = [e for e in entries if self.cache.read(f"profile-{self.device.name}-{e.candidate.key}", depends[e.candidate.key]) is None]
        if todo:
            import tempfile

            graphs = [(e.candidate.key, self.quantized(e.candidate)) for e in todo]
            if ref is not None:
                graphs.append((REFERENCE, self.quantized(ref.candidate)))
            rounds: dict[str, list[dict]] = {key: [] for key, _ in graphs}
            for r in range(self.config.rounds):
                order = graphs if r % 2 == 0 else graphs[::-1]
                self.log(f"profiling {len(todo)} candidate(s) on {self.device.name}, round {r + 1}/{self.config.rounds}…")
                with tempfile.TemporaryDirectory(prefix="edgeprune-fit-profile-") as tmp:
                    report = profile([g for _, g in order], self.device, [self.threads], Path(tmp) / "report",
                                     workload=self.config.workload, names=[k for k, _ in order], where=self.config.where)
                for (key, _), variant in zip(order, report.variants):
                    run = variant.runs[0]
                    rounds[key].append({"figures": _figures(variant, run, self.is_decoder) if run.ok else {}, "ok": run.ok,
                                        "reason": run.reason})
            side: dict[str, dict] = {}
            if ref is not None and self.config.side_by_side and (self.config.where == "local" or not self.device.remote):
                from edgeprune.profiling.workflow import interleaved

                w = self.config.workload
                key = "decode_ms" if self.is_decoder else "latency_ms"
                self.log(f"timing {len(todo)} candidate(s) beside {ref.candidate.label} in one process…")
                ms = interleaved([g for _, g in graphs], self.device, self.threads, prompt=w.prompt_lengths[0],
                                 decode_tokens=w.decode_tokens, seq_len=w.seq_lengths[0], sequences=self.config.side_by_side,
                                 runs=self.device.runs, timeout_s=w.timeout_s)
                side = {k: {key: (turns, ms[-1])} for (k, _), turns in zip(graphs[:-1], ms[:-1])}
            for e in todo:
                result = combine_rounds(rounds[e.candidate.key], rounds.get(REFERENCE), ref.measured if ref is not None else None,
                                        side.get(e.candidate.key))
                self.cache.stage(f"profile-{self.device.name}-{e.candidate.key}", depends[e.candidate.key], lambda _tmp, result=result: result)
        for e in entries:
            measured = self.cache.read(f"profile-{self.device.name}-{e.candidate.key}", depends[e.candidate.key])
            if not measured["ok"]:
                self.log(f"{e.candidate.label}: could not be measured ({measured['reason']})")
                e.measured = {"failed": measured["reason"]}
                continue
            quality = self.quality(self.quantized(e.candidate), f"eval-{e.candidate.key}", self.config.eval_windows,
                                   {"graph": self.cache.key(f"quant-{e.candidate.key}")})
            e.measured = dict(measured["figures"]) | {"quality": quality}


def fit(model: str, device, out: str | Path, config: FitConfig = FitConfig(), log: Callable[[str], None] | None = None) -> FitReport:
    """Find the best model that meets ``config.budget`` (and the device profile's budget fields) on ``device``; write
    OUT/model (the chosen ONNX folder), OUT/report.{json,md,html}, and OUT/cache (every stage, reused by re-runs).

    Raises :class:`EdgepruneError` naming the closest candidate when nothing meets the budget (nothing is written then
    but the cache)."""
    from edgeprune.io import check_writable
    from edgeprune.profiling.devices import DeviceProfile, load_device
    from edgeprune.specs import resolve_spec

    start = time.perf_counter()
    log = log or (lambda _msg: None)
    resolve_spec(model)
    device = device if isinstance(device, DeviceProfile) else load_device(device)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / "cache").is_dir()):
        raise EdgepruneError(f"output '{out}' exists and is not a fit folder", "choose a new --out (a fit folder is reused to resume)")
    check_writable(out)
    candidates = generate_candidates(config.keeps, config.schemes, config.drop_blocks, device.nm_kernels, config.nm_patterns)
    state = _Fit(model, device, out, config, log)
    budget = resolve_budget(config.budget.limits() | {"relative": config.budget.relative}, device, state.is_decoder)
    entries = [Entry(c) for c in candidates]
    speed_key = "decode_ms" if state.is_decoder else "latency_ms"

    # 1. the dense candidates, measured: the unpruned alternative, and the base every prediction scales from
    dense = [e for e in entries if e.candidate.structure == "dense"]
    state.measure(dense)
    for e in dense:
        e.predicted, e.basis = dict(e.measured), "measured"
    reference = next((e for e in dense if e.candidate.scheme == "int4" and e.candidate.head_bits == 4), dense[0])
    state.reference = reference if reference.measured.get(speed_key) else None
    rule, relative = budget.describe(), budget.relative
    budget = budget.absolute(reference.measured, reference.candidate.label)
    if relative:
        rule = f"{rule} → {budget.describe()} ({reference.candidate.label} as measured in this run)"
    dense_float = state.quality(model, "proxy-dense", config.proxy_windows, {"model": model})
    dense_proxy = {e.candidate.key: state.quality(state.quantized(e.candidate), f"proxy-{e.candidate.key}", config.proxy_windows,
                                                  {"graph": state.cache.key(f"quant-{e.candidate.key}")}) for e in dense}

    # 2. everything else predicted
    latency_models = {}
    for e in entries:
        if e.candidate.structure == "dense":
            continue
        c = e.candidate
        base = next(d for d in dense if d.candidate.scheme == c.scheme and d.candidate.head_bits == (c.head_bits if c.scheme == "int4" else 8))
        torch_folder, info = state.torch_model(c)
        log(f"predicting {c.label}")
        proxy_float = state.quality(torch_folder, f"proxy-torch-{c.structure}", config.proxy_windows, {"torch": state.torch_key(c)})
        e.predicted["quality"] = apply_quant_cost(proxy_float, dense_float, dense_proxy[base.candidate.key], state.is_decoder)
        if not base.measured.get(speed_key):
            e.basis = f"no prediction: {base.candidate.label} could not be measured"
            e.predicted = {}
            continue
        ratio = 1.0
        if c.keep < 1:
            cost, arch, dense_arch, model_info = predicted_latency(state, c, info)
            latency_models[c.scheme] = model_info
            ratio = cost(arch) / cost(dense_arch)
        bytes_per_param = (0.5 + 4 / config.quantize.block_size) if c.scheme == "int4" else 1.0
        saved_mb = info.get("removed_params", 0) * bytes_per_param / MiB
        for key in ("decode_ms", "ttft_ms", "latency_ms"):
            if base.measured.get(key) is not None:
                e.predicted[key] = base.measured[key] * ratio
        e.predicted["size_mb"] = base.measured["size_mb"] - saved_mb
        if base.measured.get("memory_mb") is not None:
            e.predicted["memory_mb"] = base.measured["memory_mb"] - saved_mb
        e.basis = (f"{base.candidate.label} measured × latency model ratio {ratio:.3f}; size and memory − {saved_mb:.1f} MiB of "
                   f"removed weights; quality: float proxy × the dense model's quantisation cost")

    # 3. shortlist → measure, round after round, while a candidate is predicted to meet the budget and to beat the best
    #    measured one. With measure_all every candidate is measured first and the rounds only reveal what they pick,
    #    so the report can show whether the shortlist alone would have found the best model.
    measure = state.measure
    if config.measure_all:
        rest = [e for e in entries if not e.is_measured]
        state.measure(rest)
        stored = {e.candidate.key: e.measured for e in rest}
        for e in rest:
            e.measured = {}

        def measure(picked: list[Entry]) -> None:
            for e in picked:
                e.measured = stored[e.candidate.key]
    rounds = 0
    while True:
        picked = shortlist(entries, budget, config.margin, config.shortlist, (speed_key, "memory_mb", "size_mb"))
        if not picked:
            break
        rounds += 1
        for e in picked:
            e.shortlisted = True
        log(f"round {rounds}: {'revealing' if config.measure_all else 'measuring'} {', '.join(e.candidate.label for e in picked)}")
        measure(picked)
    by_shortlist = choose(entries, budget)
    if config.measure_all:
        for e in rest:
            e.measured = stored[e.candidate.key]
    for e in entries:
        if e.is_measured:
            e.misses = budget.misses(e.measured)
    chosen = choose(entries, budget)
    report = FitReport(model, device.name, state.threads, budget.limits(), rule, "perplexity" if state.is_decoder else "embedding_cosine",
                       entries, chosen.candidate.key if chosen else None, rounds, round(time.perf_counter() - start, 1), latency_models,
                       by_shortlist.candidate.key if by_shortlist else None, config.measure_all, config.rounds,
                       config.side_by_side if config.where == "local" or not device.remote else 0)
    if chosen is None:
        raise no_fit_error(entries, budget)
    write_fit(report, state.quantized(chosen.candidate), out)
    return report


def predicted_latency(state: _Fit, c: Candidate, info: dict):
    """The latency model of ``c``'s scheme (measured once, cached), ``c``'s architecture and the dense one."""
    from edgeprune.structured.latency import cost_from_dict, cost_to_dict, latency_cost
    from edgeprune.structured.search import DROPPED, dense_arch
    from edgeprune.structured.workflow import spaces_and_cost

    spaces, _ = spaces_and_cost(state.loaded.model, state.loaded.adapter, state.config.structured.channel_step, True)

    def make(_tmp: Path) -> dict:
        cost, measured = latency_cost(state.loaded, spaces, state.device, scheme=c.scheme, threads=state.threads, rounds=state.config.rounds)
        return {"cost": cost_to_dict(cost), "measured": measured}

    _, result = state.cache.stage(f"latency-{state.device.name}-{c.scheme}", {"source": state.source, "channel_step": state.config.structured.channel_step,
                                                                                 "rounds": state.config.rounds}, make)
    removed, layout = set(info.get("removed_blocks", [])), iter(info["layout"])
    arch = []
    for i, space in enumerate(spaces):
        if i in removed:
            arch.append(DROPPED)
            continue
        shape = next(layout)
        arch.append((shape["num_heads"] // space.groups, shape["channels"]))
    return cost_from_dict(result["cost"], spaces), tuple(arch), dense_arch(spaces), result["measured"]


def write_fit(report: FitReport, chosen_graph: Path, out: Path) -> None:
    """OUT/model (the chosen graph's folder + fit.json) and OUT/report.{json,md,html}, each written whole then renamed."""
    from edgeprune.io import atomic_dir, atomic_file, write_json
    from edgeprune.report.fit import to_html, to_markdown

    with atomic_dir(out / "model", overwrite=True) as tmp:
        shutil.copytree(chosen_graph, tmp, dirs_exist_ok=True)
        write_json(tmp / "fit.json", {"chosen": report.chosen, "budget": report.budget, "device": report.device,
                                      "entry": report.entry(report.chosen).to_dict()})
    data = report.to_dict()
    for name, text in (("report.json", json.dumps(data, indent=2, default=str) + "\n"), ("report.md", to_markdown(data)),
                       ("report.html", to_html(data))):
        with atomic_file(out / name, overwrite=True) as tmp:
            tmp.write_text(text)
