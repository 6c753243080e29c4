"""Recipes: a TOML file lists a pipeline's steps (prune → nm → export → quantize → eval → profile → report);
:func:`run_recipe` runs them into numbered step folders that are cached, resumable and never half-written.

    edgeprune run export/smollm2-135m-2of4-attention-int4.toml --device devices/this-host.toml --out runs/smol

A recipe file::

    [recipe]
    name = "smollm2-135m-2of4-attention-int4"
    model = "smollm2-135m"
    devices = ["this-host"]     # device profiles by name (devices/NAME.toml) or path

    [prune]                      # each step table takes the fields of the API's config dataclass
    method = "attention"
    sparsity = "2:4"

    [export]
    [quantize]
    scheme = "int4"
    [eval]
    [profile]
    [report]

Steps run in the order their tables appear. Unless ``baseline = false``, the dense source model is
exported and evaluated too (``dense-export``, ``dense-eval``) so profile and report compare against it; when the
recipe prunes and quantises, the dense export is also quantised the same way and evaluated (``dense-int4-quantize``,
``dense-int4-eval``), so the report can say what pruning bought against the unpruned model at the same precision.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from edgeprune.errors import EdgepruneError
from edgeprune.metadata import RUN_SCHEMA_VERSION as SCHEMA_VERSION
from edgeprune.progress import reporting
from edgeprune.registry import Registry
from edgeprune.shipped import shipped_dir
from edgeprune.tomlconf import build, line_of, parse_set, set_path, unwrap_optional

META_FILE = "meta.json"  # written last: a step folder without it is unfinished
CONFIG_FILE = "step.json"  # the step's resolved config (not config.json: HF folders have one)
EVAL_FILE = "eval.json"

TORCH, ONNX = "PyTorch", "ONNX"  # the kinds of model a step reads or writes


# --- steps -----------------------------------------------------------------------------------------


class StepContext:
    """What a step sees: its input model, the run (for earlier results) and the progress display."""

    def __init__(self, run: "_Run", model: Path | str, progress: "RunProgress"):
        self.run = run
        self.model = model
        self.progress = progress


@dataclass(frozen=True)
class ReportConfig:
    """The final report: one report.md and report.html per run (copied to the run folder)."""

    title: str = ""  # default: the recipe's name


@dataclass(frozen=True)
class Step:
    """A kind of step: the config dataclass its table takes, what model it reads and writes, and how it runs."""

    config: type
    needs: str | None  # TORCH, ONNX, or None (any model, or none)
    makes: str | None  # TORCH or ONNX when its folder is the new model; None when it only records results
    run: Callable[[StepContext, Any, Path], dict]
    help: str
    changes_model: bool = True  # prune/nm/quantize make a variant; export/eval/profile/report do not


STEPS: Registry[Step] = Registry("recipe step")


def _prune(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.pruning import prune

    report = prune(str(ctx.model), out, config, overwrite=True, progress=ctx.progress.layers)
    return {"overall_sparsity": report.overall_sparsity, "layers": len(report.layers), "prune_seconds": round(report.seconds, 1)}


def _nm(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.pruning.convert import convert_nm

    return convert_nm(str(ctx.model), out, config, overwrite=True, progress=ctx.progress.layers)


def _structured(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.structured import structured

    report = structured(str(ctx.model), out, config, overwrite=True, progress=lambda _stage, done, total: ctx.progress.layers(done, total))
    return {"kept_fraction": round(report.kept_fraction, 4), "params_after": report.params_after,
            "structured_seconds": round(report.seconds, 1)}


def _fit(ctx: StepContext, config, out: Path) -> dict:
    """Search on the run's first device; the step folder is the chosen ONNX model (fit's report in fit-report/). The
    candidates are cached in the run folder (fit-cache/), so a stopped run, or one with another budget, resumes."""
    from edgeprune.fit import fit

    work = ctx.run.out / "fit-cache"
    report = fit(str(ctx.model), ctx.run.devices[0], work, config, log=ctx.progress.message)
    shutil.copytree(work / "model", out, dirs_exist_ok=True)
    (out / "fit-report").mkdir()
    for name in ("report.json", "report.md", "report.html"):
        shutil.copy2(work / name, out / "fit-report" / name)
    chosen = report.entry(report.chosen)
    return {"chosen": chosen.candidate.label, "budget": report.budget, "measured": chosen.measured,
            "candidates": len(report.entries), "measured_candidates": sum(e.is_measured for e in report.entries)}


def _export(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.onnx import export

    report = export(str(ctx.model), out, config, overwrite=True)
    return {"files": report.files, "max_abs_diff": report.verify.worst[1] if report.verify else None,
            "zeros_kept": report.sparsity.onnx_zeros if report.sparsity else None}


def _quantize(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.onnx import quantize

    report = quantize(ctx.model, out, config, overwrite=True)
    return {"scheme": report.scheme, "bytes": report.bytes, "zeros_preserved": not report.lost}


def _eval(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.evaluation import evaluate
    from edgeprune.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(evaluate(str(ctx.model), **dataclasses.asdict(config)))
    write_json(out / EVAL_FILE, data)
    return {k: data[k] for k in ("perplexity", "embedding_cosine") if data.get(k) is not None}


def _profile(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.profiling import profile

    models, names = ctx.run.profile_targets()
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for device in ctx.run.devices:
        report = profile(models, config.device(device), config.threads, out / device.name, strict=config.strict,
                         workload=config.workload, overwrite=True, progress=ctx.progress.message, names=names,
                         backend=config.backend)
        summary[device.name] = {v.name: all(r.ok for r in v.runs) for v in report.variants}
    return {"devices": summary}


def _report(ctx: StepContext, config, out: Path) -> dict:
    from edgeprune.report.run import write_run_report

    out.mkdir(parents=True, exist_ok=True)
    return write_run_report(ctx.run.summary(), out, config.title or ctx.run.recipe.name)


def _register_steps() -> None:
    from edgeprune.evaluation import EvalConfig
    from edgeprune.fit import FitConfig
    from edgeprune.onnx import ExportConfig, QuantizeConfig
    from edgeprune.profiling import ProfileConfig
    from edgeprune.pruning import PruneConfig
    from edgeprune.pruning.convert import NMConfig
    from edgeprune.structured import StructuredConfig

    for name, step in {
        "prune": Step(PruneConfig, TORCH, TORCH, _prune, "prune weights (unstructured or N:M) with a registered method"),
        "nm": Step(NMConfig, TORCH, TORCH, _nm, "convert a pruned model to N:M by re-fitting inside the pattern"),
        "structured": Step(StructuredConfig, TORCH, TORCH, _structured,
                           "remove attention heads and MLP channels under a size or latency budget (really smaller)"),
        "fit": Step(FitConfig, TORCH, ONNX, _fit, "the best model (dense/structured × int4/int8) that meets the device's budget, "
                                                  "measured on the run's first device"),
        "export": Step(ExportConfig, TORCH, ONNX, _export, "export to ONNX, verified against PyTorch", changes_model=False),
        "quantize": Step(QuantizeConfig, ONNX, ONNX, _quantize, "quantise the exported graph (int8 / int4), zeros kept"),
        "eval": Step(EvalConfig, None, None, _eval, "held-out perplexity or embedding cosine of the current model", changes_model=False),
        "profile": Step(ProfileConfig, ONNX, None, _profile, "latency and memory with ONNX Runtime on each device profile",
                        changes_model=False),
        "report": Step(ReportConfig, None, None, _report, "report.md and report.html comparing the variant with the dense model",
                       changes_model=False),
    }.items():
        if name not in STEPS:
            STEPS.register(name)(step)


# --- the recipe file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeHeader:
    """The [recipe] table."""

    name: str
    model: str
    description: str = ""
    devices: tuple[str, ...] = ("this-host",)
    baseline: bool = True  # also export + evaluate + profile the dense source, to compare against


@dataclass(frozen=True)
class RecipeStep:
    kind: str
    config: Any
    line: int | None


@dataclass(frozen=True)
class Recipe:
    path: Path
    text: str
    header: RecipeHeader
    steps: tuple[RecipeStep, ...]
    sets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.header.name

    def step(self, kind: str) -> RecipeStep | None:
        return next((s for s in self.steps if s.kind == kind), None)


def recipes_dir() -> Path:
    """The shipped recipes: export/ of the checkout, or its copy inside an installed wheel."""
    return shipped_dir("export")


def find_recipe(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    shipped = recipes_dir() / f"{spec}.toml"
    if path.suffix != ".toml" and len(path.parts) == 1 and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in recipes_dir().glob("*.toml")) if recipes_dir().is_dir() else []
    raise EdgepruneError(f"recipe '{spec}' not found", f"pass a .toml file or one of: {', '.join(names)}" if names else "pass a .toml file")


def _check_set_path(data: dict, keys: tuple[str, ...], assignment: str):
    """--set must name a step of the recipe (or [recipe]) and a field its config has; returns the field's type."""
    import typing

    head = keys[0]
    if head != "recipe" and head not in STEPS:
        raise EdgepruneError(f"--set {assignment}: unknown step '{head}'", f"steps: recipe, {', '.join(STEPS.names())}")
    if head != "recipe" and head not in data:
        raise EdgepruneError(f"--set {assignment}: the recipe has no [{head}] step", "add the step to the recipe first")
    cls = RecipeHeader if head == "recipe" else STEPS.get(head).config
    for depth, key in enumerate(keys[1:], 1):
        hints = typing.get_type_hints(cls)
        if not dataclasses.is_dataclass(cls) or key not in hints:
            known = ", ".join(hints) if dataclasses.is_dataclass(cls) else ""
            raise EdgepruneError(f"--set {assignment}: [{'.'.join(keys[:depth])}] has no key '{key}'",
                                 f"known keys: {known}" if known else "remove it")
        cls, _ = unwrap_optional(hints[key])
        if typing.get_origin(cls) is dict:
            return None  # free-form tables: overrides, options
    return cls


def load_recipe(spec: str | Path, sets: Sequence[str] = ()) -> Recipe:
    """Read, override (``sets`` like ``prune.sparsity=0.5``) and validate a recipe; errors name the file, key and line."""
    _register_steps()
    path = find_recipe(spec)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgepruneError(f"recipe {path} is not valid TOML: {exc}", "fix the syntax on that line") from None
    for assignment in sets:
        keys, value, raw = parse_set(assignment)
        if len(keys) < 2:
            raise EdgepruneError(f"--set {assignment}: name a step and a key", "write it like --set prune.sparsity=0.5")
        if _check_set_path(data, keys, assignment) is str:
            value = value if isinstance(value, str) else raw  # prune.sparsity=0.5 means the string "0.5"
        set_path(data, keys, value)
    if not isinstance(data.get("recipe"), dict):
        raise EdgepruneError(f"{path}: no [recipe] table", 'start the file with [recipe], name = "..." and model = "..."')
    for key in ("name", "model"):
        if key not in data["recipe"]:
            raise EdgepruneError(f"{path}:{line_of(text, ('recipe',))}: [recipe] has no '{key}'", f'add {key} = "..."')
    header = build(RecipeHeader, data["recipe"], path, text, ("recipe",), what="[recipe]")
    steps = []
    for kind, table in data.items():
        if kind == "recipe":
            continue
        line = line_of(text, (kind,))
        if kind not in STEPS or not isinstance(table, dict):
            raise EdgepruneError(f"{path}:{line}: unknown step '{kind}'" if line else f"{path}: unknown step '{kind}'",
                                 f"steps are tables named {', '.join(STEPS.names())}")
        steps.append(RecipeStep(kind, build(STEPS.get(kind).config, table, path, text, (kind,), what=f"[{kind}]"), line))
    if not steps:
        raise EdgepruneError(f"{path}: the recipe has no steps", "add step tables such as [prune], [export], [report]")
    recipe = Recipe(path, text, header, tuple(steps), tuple(sets))
    _check_order(recipe)
    return recipe


def _check_order(recipe: Recipe) -> None:
    """Each step must get the kind of model it needs from the steps before it."""
    have, made_by = TORCH, None
    for s in recipe.steps:
        step = STEPS.get(s.kind)
        where = f"{recipe.path}:{s.line}" if s.line else str(recipe.path)
        if step.needs and step.needs != have:
            before = f"[{made_by}] before it makes {have}" if made_by else f"the recipe's model is {have}"
            fix = f"put an [export] step before [{s.kind}]" if step.needs == ONNX else f"put [{s.kind}] before [export]"
            article = "an" if step.needs == ONNX else "a"
            raise EdgepruneError(f"{where}: step [{s.kind}] needs {article} {step.needs} model, but {before}", fix)
        if step.makes:
            have, made_by = step.makes, s.kind


# --- running -------------------------------------------------------------------------------------------


class RunProgress(Protocol):
    def step(self, index: int, total: int, label: str) -> None: ...
    def done(self, label: str, seconds: float, cached: bool) -> None: ...
    def layers(self, done: int, total: int) -> None: ...
    def message(self, text: str) -> None: ...
    def status(self, text: str, done: int | None, total: int | None) -> None: ...  # edgeprune.progress reports


class _Quiet:
    def step(self, index, total, label): pass
    def done(self, label, seconds, cached): pass
    def layers(self, done, total): pass
    def message(self, text): pass
    def status(self, text, done, total): pass


@dataclass
class PlannedStep:
    index: int
    kind: str
    config: Any
    branch: str  # "variant" or "dense"
    input: str  # step folder name of the model it reads, or "source"
    key: str = ""
    cached: bool = False
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)

    @property
    def folder(self) -> str:  # 01-dense-export, 03-prune, 07-dense-int4-quantize
        return f"{self.index:02d}-{'' if self.branch in ('variant', 'run') else self.branch + '-'}{self.kind}"


@dataclass
class RecipeRun:
    """What :func:`run_recipe` did: each step (ran or reused), and where the report is."""

    out: Path
    recipe: str
    steps: list[PlannedStep]
    report: Path | None
    summary: dict
    seconds: float

    @property
    def ran(self) -> list[str]:
        return [s.folder for s in self.steps if not s.cached]

    @property
    def reused(self) -> list[str]:
        return [s.folder for s in self.steps if s.cached]


def _fingerprint(spec: str) -> dict:
    """A cheap identity of the source model: its files' names, sizes and modification times (hashing GBs is not cheap)."""
    from edgeprune.specs import resolve_spec

    kind, path, gguf = resolve_spec(spec)
    if path is None:
        return {"hub": spec}
    files = [path / gguf] if gguf else sorted(p for p in path.rglob("*") if p.is_file())
    return {"spec": spec, "files": [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _label(recipe: Recipe) -> str:
    parts = []
    for s in recipe.steps:
        c = s.config
        if s.kind == "prune":
            parts.append(f"{c.method} {c.sparsity}")
        elif s.kind == "nm":
            parts.append(f"{c.method} {c.pattern}")
        elif s.kind == "structured":
            targets = ([f"{c.target_params:.0%} params"] if c.target_params is not None else []) \
                + ([f"≤{c.target_latency_ms:g} ms"] if c.target_latency_ms is not None else []) \
                + ([f"{c.target_speedup:g}× faster"] if c.target_speedup is not None else [])
            parts.append("structured " + ", ".join(targets))
        elif s.kind == "quantize":
            parts.append(c.scheme)
    return " + ".join(parts) or "dense"


def _prunes(recipe: Recipe) -> bool:
    """Whether the recipe changes the model other than by quantising it (prune, nm, structured)."""
    return any(STEPS.get(s.kind).changes_model and s.kind != "quantize" for s in recipe.steps)


class _Run:
    def __init__(self, recipe: Recipe, out: Path, devices: list, progress: RunProgress, device_specs: Sequence[str] = ()):
        self.recipe, self.out, self.devices, self.progress = recipe, out, devices, progress
        self.device_specs = [str(Path(d).absolute()) if Path(d).is_file() else str(d) for d in device_specs]
        quantize = [s for s in recipe.steps if s.kind == "quantize"]
        # A pruned and quantised variant is also compared with the dense model quantised the same way: what a user
        # would ship instead, so the report can say what pruning itself bought at that precision.
        self.dense_quantized = "dense-" + "-".join(s.config.scheme for s in quantize) \
            if quantize and recipe.header.baseline and _prunes(recipe) else None
        self.plan = self._plan()

    def _plan(self) -> list[PlannedStep]:
        from edgeprune import __version__
        from edgeprune.onnx import ExportConfig

        r = self.recipe
        variant = [s for s in r.steps if s.kind not in ("profile", "report")]
        closing = [s for s in r.steps if s.kind in ("profile", "report")]
        needs_dense = r.header.baseline and any(STEPS.get(s.kind).changes_model for s in r.steps)
        plan: list[PlannedStep] = []
        if needs_dense:
            export = r.step("export")
            plan.append(PlannedStep(0, "export", export.config if export else ExportConfig(), "dense", "source"))
            evaluation = r.step("eval")
            if evaluation:
                plan.append(PlannedStep(0, "eval", evaluation.config, "dense", ""))
        for s in variant:
            plan.append(PlannedStep(0, s.kind, s.config, "variant", ""))
        if self.dense_quantized:  # after the variant's steps, so theirs keep the folder numbers they had
            plan += [PlannedStep(0, "quantize", s.config, self.dense_quantized, "") for s in variant if s.kind == "quantize"]
            if r.step("eval"):
                plan.append(PlannedStep(0, "eval", r.step("eval").config, self.dense_quantized, ""))
        for s in closing:
            plan.append(PlannedStep(0, s.kind, s.config, "run", ""))
        current = {"dense": "source", "variant": "source"}
        keys: dict[str, str] = {"source": _digest(_fingerprint(r.header.model))}  # folder → key
        steps: list[PlannedStep] = []
        for p in plan:
            branch = "variant" if p.branch == "run" else p.branch
            p.input = current.setdefault(branch, current["dense"])  # the dense-quantized branch starts from the dense export
            inputs = [keys[p.input]]
            if p.kind in ("profile", "report"):
                inputs += [keys[s.folder] for s in steps] + [d.to_dict() for d in self.devices]
            if p.kind == "fit":  # measured on the first device
                inputs.append(self.devices[0].to_dict())
            if p.kind == "report":  # the report also quotes the command that reproduces it
                inputs += [r.text, list(r.sets), str(self.out), self.device_specs]
            p.key = _digest({"kind": p.kind, "config": dataclasses.asdict(p.config), "inputs": inputs, "edgeprune": __version__})
            same = next((s for s in steps if s.key == p.key), None)
            if same is not None:  # e.g. the variant's export of an unpruned model is the dense export: do it once
                current[branch] = same.folder if STEPS.get(p.kind).makes else current[branch]
                continue
            p.index = len(steps) + 1
            steps.append(p)
            keys[p.folder] = p.key
            if STEPS.get(p.kind).makes:
                current[branch] = p.folder
        self.current = current
        return steps

    def model_path(self, folder: str) -> Path | str:
        return self.recipe.header.model if folder == "source" else self.out / folder

    def _targets(self) -> list[tuple[str, str, Path]]:
        """(branch, name, model folder) of each model to compare: the dense export first (the baseline), then the dense
        model quantised like the variant (when there is one), then the variant."""
        out = []
        dense = self.current.get("dense")
        if dense and dense != "source":
            out.append(("dense", "dense", self.out / dense))
        if self.dense_quantized and self.dense_quantized in self.current:
            schemes = " + ".join(s.config.scheme for s in self.recipe.steps if s.kind == "quantize")
            out.append((self.dense_quantized, f"dense {schemes}", self.out / self.current[self.dense_quantized]))
        out.append(("variant", _label(self.recipe), self.out / self.current["variant"]))
        return out

    def profile_targets(self) -> tuple[list[Path], list[str]]:
        """The ONNX models to compare and their names, in :meth:`_targets`' order."""
        targets = self._targets()
        return [model for _, _, model in targets], [name for _, name, _ in targets]

    def same_precision(self) -> dict | None:
        """Which variant is the unpruned model at the pruned variant's precision: the dense-quantized one, or the dense
        export itself when nothing is quantised. None when the recipe does not prune or has no baseline."""
        targets = {branch: name for branch, name, _ in self._targets()}
        if not _prunes(self.recipe) or "dense" not in targets:
            return None
        if self.dense_quantized:
            baseline = targets.get(self.dense_quantized)
            return {"baseline": baseline, "variant": targets["variant"]} if baseline else None
        if any(s.kind == "quantize" for s in self.recipe.steps):
            return None  # quantised without a same-precision baseline (baseline = false)
        return {"baseline": targets["dense"], "variant": targets["variant"]}

    def summary(self) -> dict:
        """Everything the report needs: the recipe, each variant's quality and files, and the profile reports."""
        import platform

        from edgeprune.report.run import package_versions
        from edgeprune.runtime import cpu_name

        variants = {}
        for branch, name, model in self._targets():
            evals = [p for p in self.plan if p.kind == "eval" and p.branch == branch]
            quality = json.loads((self.out / evals[0].folder / EVAL_FILE).read_text()) if evals else {}
            size = sum(f.stat().st_size for f in Path(model).glob("model.onnx*")) if Path(model).is_dir() else None
            role = "dense-quantized" if branch == self.dense_quantized else branch
            variants[name] = {"model": str(Path(model).relative_to(self.out)), "role": role, "quality": quality,
                              "onnx_bytes": size}
        profiles = {}
        for p in self.plan:
            if p.kind == "profile":
                for d in self.devices:
                    path = self.out / p.folder / d.name / "report.json"
                    if path.is_file():
                        profiles[d.name] = json.loads(path.read_text())
        return {
            "schema_version": SCHEMA_VERSION,
            "recipe": {"name": self.recipe.name, "path": str(self.recipe.path), "text": self.recipe.text, "sets": list(self.recipe.sets),
                       "description": self.recipe.header.description, "model": self.recipe.header.model},
            "variants": variants,
            "same_precision": self.same_precision(),
            "profiles": profiles,
            "out": str(self.out),
            "devices": self.device_specs,
            "steps": [{"folder": p.folder, "kind": p.kind, "seconds": p.seconds, "cached": p.cached} for p in self.plan],
            "versions": package_versions(),
            "host": {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_name(),
                     "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))},
        }


def _clean_leftovers(out: Path, plan: list[PlannedStep]) -> None:
    """Remove what a killed run left: temporary folders, and step folders that never got their meta.json."""
    for item in out.iterdir():
        if item.name.startswith(".") and item.name.endswith(".tmp"):
            shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    for p in plan:
        folder = out / p.folder
        if folder.is_dir() and not (folder / META_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)


def _reusable(folder: Path, key: str) -> dict | None:
    meta = folder / META_FILE
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except ValueError:
        return None
    return data if data.get("key") == key else None


def run_recipe(
    recipe: str | Path | Recipe,
    out: str | Path | None = None,
    devices: Sequence[str | Path] | None = None,
    sets: Sequence[str] = (),
    progress: RunProgress | None = None,
) -> RecipeRun:
    """Run ``recipe`` (a file, a shipped recipe's name, or a loaded :class:`Recipe`) into ``out`` (default runs/NAME).

    Steps whose config and inputs are unchanged are reused from an earlier run in ``out``; a step that was
    interrupted left nothing behind and runs again. ``devices`` replaces the recipe's device profiles.
    """
    from edgeprune.io import atomic_dir, check_writable, write_json
    from edgeprune.profiling import load_device

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, sets)
    progress = progress or _Quiet()
    out = (Path(out) if out is not None else Path("runs") / recipe.name).absolute()
    device_specs = list(devices) if devices else list(recipe.header.devices)
    needs_devices = recipe.step("profile") is not None or recipe.step("fit") is not None
    loaded_devices = [load_device(d) for d in device_specs] if needs_devices else []
    if len({d.name for d in loaded_devices}) != len(loaded_devices):
        raise EdgepruneError("two device profiles share a name", "give each device profile its own name")
    if out.exists() and not out.is_dir():
        raise EdgepruneError(f"--out '{out}' is a file", "choose a folder for the run")
    check_writable(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgepruneError(f"cannot write to '{out}': {exc.strerror}", "choose a writable --out with free space") from None
    run = _Run(recipe, out, loaded_devices, progress, device_specs if needs_devices else ())
    _clean_leftovers(out, run.plan)
    start = time.perf_counter()
    total = len(run.plan)
    for p in run.plan:
        folder = out / p.folder
        label = f"{p.folder}" + (f" ({_label(recipe)})" if p.kind in ("prune", "nm", "quantize") and p.branch == "variant" else "")
        progress.step(p.index, total, label)
        meta = _reusable(folder, p.key)
        if meta is not None:
            p.cached, p.seconds, p.outputs = True, meta.get("seconds", 0.0), meta.get("outputs", {})
            progress.done(label, p.seconds, cached=True)
            continue
        step = STEPS.get(p.kind)
        ctx = StepContext(run, run.model_path(p.input), progress)
        began = time.perf_counter()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            with atomic_dir(folder, overwrite=True) as tmp, reporting(progress.status):
                p.outputs = step.run(ctx, p.config, tmp) or {}
                p.seconds = round(time.perf_counter() - began, 2)
                write_json(tmp / CONFIG_FILE, {"step": p.kind, "config": dataclasses.asdict(p.config)})
                write_json(tmp / META_FILE, {
                    "schema_version": SCHEMA_VERSION, "step": p.kind, "branch": p.branch, "key": p.key, "seconds": p.seconds,
                    "started": started, "inputs": {"model": str(p.input)}, "outputs": p.outputs,
                    "files": sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file()),
                })
        except EdgepruneError as exc:
            raise EdgepruneError(f"step {p.folder}: {exc.problem}", exc.fix) from None
        progress.done(label, p.seconds, cached=False)
    summary = run.summary()
    report = next((out / p.folder for p in run.plan if p.kind == "report"), None)
    if report is not None:
        for name in ("report.md", "report.html"):  # the run's report at the top of the folder, too
            shutil.copyfile(report / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    write_json(out / "run.json", summary | {"seconds": round(time.perf_counter() - start, 2)})
    return RecipeRun(out, recipe.name, run.plan, out / "report.html" if report else None, summary, time.perf_counter() - start)


__all__ = ["Recipe", "RecipeRun", "ReportConfig", "STEPS", "find_recipe", "load_recipe", "recipes_dir", "run_recipe"]
