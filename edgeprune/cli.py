"""The ``edgeprune`` command line: a thin typer shell, each command calls one public function."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgeprune.errors import EdgepruneError

CALIB_HELP = ("calibration text: pydoc, self (sampled from the model, cached), wikitext2, c4, a .txt/.jsonl file, "
              "or a mix with shares such as pydoc:0.5+self:0.25+notes.txt:0.25")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune transformer models and get them ready for devices.")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn EdgepruneError into a one-line message and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgepruneError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", 130)

    return wrapper


def _set_threads(threads: int | None) -> None:
    """--threads: the CPU threads PyTorch uses; edgeprune's ONNX Runtime sessions take the same number."""
    if threads is None:
        return
    if threads < 1:
        raise EdgepruneError(f"--threads {threads} is not a positive number", "use e.g. --threads 2, or leave it out for all cores")
    import torch

    torch.set_num_threads(threads)


def _version(value: bool) -> None:
    if value:
        from edgeprune import __version__

        typer.echo(f"edgeprune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")):
    """Prune transformer models and get them ready for devices."""


def _key_values(items: list[str], what: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EdgepruneError(f"{what} '{item}' is not KEY=VALUE", f"write it like --{what} name=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


class _Display:
    """The live display of one command, on stderr when it is a terminal: a line per phase (what it is doing, elapsed time), with a bar and the
    time left when the phase can count. Library code reports phases through ``edgeprune.progress.status``; the per-layer
    callbacks of prune/nm and structured's per-stage callback count the current phase."""

    UNITS = {"score": "blocks", "reform": "blocks", "search": "generations", "latency": "measurements"}

    def __init__(self, label: str = "", unit: str = "layers"):
        self.label, self.unit = label, unit
        self.progress = self.task = self.text = None
        self._reporting = None

    def __enter__(self):
        from edgeprune.progress import reporting

        self._reporting = reporting(self.status)
        self._reporting.__enter__()
        return self

    def __exit__(self, *exc):
        self._reporting.__exit__(*exc)
        if self.progress is not None:  # started at the first phase: a run that fails validation prints only its error
            if exc[0] is None:
                self._finish()
            self.progress.stop()

    def _finish(self) -> None:  # the current phase is over: full bar, spinner turns into a tick
        total = self.progress.tasks[-1].total  # the current phase is always the last task added
        self.progress.update(self.task, total=total or 1, completed=total or 1)

    def status(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            console = Console(stderr=True)  # stdout stays for results (eval and profile --json print JSON there)
            self.progress = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console,
                                     disable=not console.is_terminal)  # logs and pipes get the results, not redraws
            self.progress.start()
        if text != self.text:
            if self.task is not None:
                self._finish()
            self.task, self.text = self.progress.add_task(text, total=total, count=""), text
        count = ""
        if total:
            left = self.progress.tasks[-1].time_remaining
            count = f"{done or 0}/{total}" + (f", {left:.0f}s left" if left is not None and (done or 0) < total else "")
        self.progress.update(self.task, total=total, completed=done or 0, count=count)

    def __call__(self, done: int, total: int) -> None:  # prune/nm: layers done
        self.status(f"{self.label} ({self.unit})", done, total)

    def stage(self, stage: str, done: int, total: int) -> None:  # structured: score, search, latency, reform
        self.status(f"{stage} ({self.UNITS.get(stage, 'steps')})", done, total)


@app.command()
@user_errors
def prune(
    model: str = typer.Argument(..., help="HF folder, .gguf file, Hub id, or bundled alias (smollm2-135m, minilm-l6)"),
    out: Path = typer.Option(..., "--out", help="output folder (a Hugging Face model folder)"),
    method: str = typer.Option("attention", help="pruning method; see `edgeprune list`"),
    sparsity: str = typer.Option("2:4", help="fraction in (0,1) such as 0.5, or N:M such as 2:4"),
    calib: str = typer.Option("pydoc", help=CALIB_HELP),
    samples: int = typer.Option(32, help="calibration sequences"),
    seqlen: int = typer.Option(512, help="tokens per calibration sequence"),
    seed: int = typer.Option(0, help="seed for choosing calibration windows"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="where PyTorch computes: cpu, cuda or auto"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch (default: all cores)"),
    override: List[str] = typer.Option([], help="per-layer override GLOB=SPEC, e.g. '*.down_proj=dense' or '*layers.0.*=4:8'"),
    option: List[str] = typer.Option([], help="method hyperparameter KEY=VALUE, e.g. steps=60"),
    permute: bool = typer.Option(False, help="for N:M patterns, first reorder input channels (absorbed exactly) to keep more "
                                              "important weights"),
    stream: str = typer.Option("auto", help="on: read and write one block at a time, so memory holds one block "
                                                        "(safetensors folders and GGUF); auto: when the model's fp32 "
                                                        "weights exceed half the free memory; off"),
    dtype: str = typer.Option("auto", help="storage dtype of the output: auto (the checkpoint's), fp32, bf16 or "
                                                      "fp16; the arithmetic is fp32 either way"),
    hidden_memory: str = typer.Option("auto", help="memory the calibration hidden states may take before they go to a "
                                      "memory-mapped file next to --out: auto (a quarter of the memory available at the "
                                      "start) or GiB, e.g. 2; 0 always spills"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Prune MODEL and write a Hugging Face folder with zeros in the weights and edgeprune.json."""
    from edgeprune.data import CalibConfig
    from edgeprune.pruning import PruneConfig, prune as run_prune

    config = PruneConfig(
        method=method,
        sparsity=sparsity,
        calib=CalibConfig(calib, samples, seqlen, seed),
        device=torch_device,
        overrides=_key_values(override, "override"),
        options={k: _typed(v) for k, v in _key_values(option, "option").items()},
        permute=permute,
        stream=stream,
        dtype=dtype,
        hidden_memory=hidden_memory,
    )
    _set_threads(threads)
    with _Display(f"{method} {sparsity}") as bar:
        report = run_prune(model, out, config, overwrite=overwrite, progress=bar)
    typer.echo(f"pruned {len(report.layers)} linear layers to {report.overall_sparsity:.1%} sparsity in {report.seconds:.0f}s → {out}")


@app.command()
@user_errors
def nm(
    model_dir: str = typer.Argument(..., help="unstructured-pruned (or dense) model folder"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    pattern: str = typer.Option("2:4", help="N:M pattern, e.g. 2:4 or 4:8"),
    method: str = typer.Option("attention", help="method that re-fits inside the pattern"),
    calib: str = typer.Option("pydoc", help=CALIB_HELP),
    samples: int = typer.Option(32, help="calibration sequences"),
    seqlen: int = typer.Option(512, help="tokens per calibration sequence"),
    permute: bool = typer.Option(False, help="reorder input channels first (absorbed exactly)"),
    compare: bool = typer.Option(True, help="also measure plain projection on held-out text and report the gain"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Convert MODEL_DIR to N:M by re-fitting masks and weights (not just projecting); reports the gain."""
    from edgeprune.data import CalibConfig
    from edgeprune.pruning.convert import NMConfig, convert_nm

    config = NMConfig(pattern=pattern, method=method, calib=CalibConfig(calib, samples, seqlen), permute=permute, compare=compare)
    with _Display(f"{method} → {pattern}") as bar:
        result = convert_nm(model_dir, out, config, overwrite=overwrite, progress=bar)
    if "gain_over_projection" in result:
        typer.echo(
            f"held-out perplexity: input {result['input_perplexity']:.2f}, projection {result['projection_perplexity']:.2f}, "
            f"re-fit {result['refit_perplexity']:.2f} ({result['gain_over_projection']:.1%} lower than projection) → {out}"
        )
    else:
        typer.echo(f"converted to {pattern} → {out}")


@app.command()
@user_errors
def structured(
    model: str = typer.Argument(..., help="HF folder, .gguf file, Hub id, or bundled alias (smollm2-135m, minilm-l6)"),
    out: Path = typer.Option(..., "--out", help="output folder (a Hugging Face folder with smaller blocks)"),
    target_params: Optional[float] = typer.Option(None, help="fraction of the blocks' linear parameters to keep, e.g. 0.75"),
    target_latency_ms: Optional[float] = typer.Option(None, help="or: decode ms/token budget, measured with ONNX Runtime on --device"),
    target_speedup: Optional[float] = typer.Option(None, help="or: decode this many times faster than dense, measured on --device"),
    device: Optional[str] = typer.Option(None, "--device", help="device profile for --target-latency-ms (file or name)"),
    score: str = typer.Option("output", help="unit importance: output (contribution to the block output), wanda-sp, magnitude"),
    search: str = typer.Option("evolution", help="evolution (on the calibration loss), greedy, or uniform (same shape every block)"),
    reform: bool = typer.Option(True, help="re-fit the kept weights to the dense block outputs (ridge least squares)"),
    drop_blocks: bool = typer.Option(False, help="let the evolution also remove whole blocks"),
    calib: str = typer.Option("pydoc", help=CALIB_HELP),
    samples: int = typer.Option(32, help="calibration sequences"),
    seqlen: int = typer.Option(512, help="tokens per calibration sequence"),
    generations: int = typer.Option(10, help="evolution: generations"),
    population: int = typer.Option(8, help="evolution: candidates per generation"),
    seed: int = typer.Option(0, help="seed for calibration windows and the search"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Remove attention heads and MLP channels under a size or latency budget: a really smaller dense model."""
    from edgeprune.data import CalibConfig
    from edgeprune.structured import StructuredConfig, structured as run_structured

    if target_params is None and target_latency_ms is None and target_speedup is None:
        target_params = 0.75
    config = StructuredConfig(target_params=target_params, target_latency_ms=target_latency_ms, target_speedup=target_speedup,
                              latency_device=device, score=score,
                              search=search, reform=reform, drop_blocks=drop_blocks, calib=CalibConfig(calib, samples, seqlen, seed),
                              generations=generations,
                              population=population, seed=seed)
    with _Display() as bar:
        report = run_structured(model, out, config, overwrite=overwrite, progress=bar.stage)
    reformed = [e for e in report.reform if "reformed_error" in e]
    line = (f"kept {report.kept_fraction:.1%} of block parameters ({report.params_after / 1e6:.1f}M of {report.params_before / 1e6:.1f}M)"
            f" in {report.seconds:.0f}s → {out}")
    if report.removed_blocks:
        line += f"; removed blocks {report.removed_blocks}"
    if reformed:
        mean = lambda key: sum(e[key] for e in reformed) / len(reformed)  # noqa: E731
        line += f"; block-output error {mean('removal_error'):.3f} after removal, {mean('reformed_error'):.3f} after reformation"
    if report.latency:
        line += f"; predicted decode {report.latency['predicted_ms']:.1f} ms/token (dense {report.latency['predicted_dense_ms']:.1f})"
    typer.echo(line)


@app.command("eval")
@user_errors
def eval_(
    model: str = typer.Argument(..., help="model folder or alias"),
    text: List[str] = typer.Option(["pydoc"], help="held-out text: pydoc (its held-out split), licences, docstrings, self "
                                                    "(the dense model's samples), a file, or suite (all four); several: "
                                                    "a,b or --text repeated (per-domain + geometric-mean perplexity)"),
    reference: Optional[str] = typer.Option(None, help="dense model to compare with (default: the source in edgeprune.json)"),
    seqlen: int = typer.Option(512, help="tokens per perplexity window"),
    max_windows: Optional[int] = typer.Option(None, help="evaluate at most this many windows"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="where PyTorch computes: cpu, cuda or auto"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch and ONNX Runtime (default: all cores)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the result to this JSON file"),
    onnx_file: Optional[str] = typer.Option(None, help="exported folder: the graph to run with ONNX Runtime (default model.onnx)"),
):
    """Perplexity (decoders) or embedding cosine to the dense model (encoders), plus attention error per layer.

    On a folder from `edgeprune export` the model runs in ONNX Runtime (pick the graph with --onnx-file)."""
    from edgeprune.evaluation import evaluate
    from edgeprune.io import write_json

    _set_threads(threads)
    with _Display():
        result = evaluate(model, text=",".join(text), reference=reference, seqlen=seqlen, max_windows=max_windows, device=torch_device,
                          onnx_file=onnx_file)
    if json_out:
        write_json(json_out, json.loads(result.to_json()))
    typer.echo(result.to_json())


@app.command("export")
@user_errors
def export_(
    model: str = typer.Argument(..., help="pruned folder from `edgeprune prune`, HF folder, .gguf file, or bundled alias"),
    out: Path = typer.Option(..., "--out", help="output folder: model.onnx, tokenizer, config and edgeprune.json"),
    pooling: bool = typer.Option(False, help="encoders: add mean pooling + L2 normalisation (output sentence_embedding)"),
    verify: bool = typer.Option(True, help="compare with PyTorch (outputs, and 32 greedy tokens for decoders)"),
    quantize: Optional[str] = typer.Option(None, help="also write model_int8.onnx (dynamic, per channel) or model_int4.onnx (MatMulNBits)"),
    block_size: int = typer.Option(32, help="int4: weights per scale along the input dimension"),
    symmetric: bool = typer.Option(True, help="int4: symmetric codes, or --no-symmetric for a zero point per block"),
    quantize_head: bool = typer.Option(True, help="int4: also the token embedding and tied LM head (--no-quantize-head keeps them fp32)"),
    int4_method: str = typer.Option("gptq", help="int4: gptq (calibrated on pydoc text, pruned zeros held) or rtn (round to nearest)"),
    head_bits: int = typer.Option(4, help="int4: bits for the embedding / LM head table, shared when tied (4 or 8)"),
    ort_format: bool = typer.Option(False, help="also write .ort files and required_operators.config for ORT mobile/minimal builds"),
    fuse: bool = typer.Option(True, help="decoders: attention as one GroupQueryAttention op per layer (faster on CPU); "
                                         "--no-fuse keeps optimum's graph as exported"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch and ONNX Runtime (default: all cores)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Export MODEL to ONNX (decoders: one merged graph with a KV cache), verified against PyTorch, zeros checked."""
    from edgeprune.onnx import ExportConfig, QuantizeConfig, export as run_export

    quant = QuantizeConfig(quantize, block_size, symmetric, quantize_head, method=int4_method, head_bits=head_bits) if quantize else None
    config = ExportConfig(pooling=pooling, verify=verify, quantize=quant, ort_format=ort_format, fuse=fuse)
    _set_threads(threads)
    with _Display():
        report = run_export(model, out, config, overwrite=overwrite)
    size = sum(b for f, b in report.files.items() if f.startswith("model.onnx")) / 2**20  # the float graph (+ external data)
    line = f"exported {report.architecture} ({report.task}) in {report.seconds_export:.0f}s, {size:.1f} MiB → {out}"
    if report.fused is not None:
        f = report.fused
        line += (f"; attention fused ({f.nodes_before} → {f.nodes_after} nodes)" if f.reason is None
                 else f"; attention not fused: {f.reason}")
    if report.verify is not None:
        name, worst = report.verify.worst
        line += f"; verified: max |diff| {worst:.2g} ({name})"
        if report.verify.tokens_identical:
            line += f", {len(report.verify.tokens_torch)} greedy tokens identical"
    if report.sparsity.torch_zeros:
        line += f"; {report.sparsity.onnx_zeros} pruned zeros kept"
    if report.quantized is not None:
        q = report.quantized
        line += f"; {q.scheme}: {q.file} {q.bytes / 2**20:.1f} MiB, zeros kept: {'yes' if not q.lost else 'no'}"
    if ort_format:
        line += "; ORT format: " + ", ".join(f for f in report.files if f.endswith(".ort")) + " + required_operators.config"
    typer.echo(line)


@app.command()
@user_errors
def pack(
    model_dir: Path = typer.Argument(..., help="pruned HF folder from `edgeprune prune` (safetensors weights)"),
    out: Path = typer.Option(..., "--out", help="output file, e.g. model.nm.safetensors"),
    pattern: str = typer.Option("2:4", help="the N:M pattern every pruned linear follows"),
    values: str = typer.Option("fp16", help="kept values as fp32, fp16, bf16 or int8 (per-output-channel scales)"),
    dense: str = typer.Option("keep", help="other weights (embeddings, norms): keep their dtype, or fp32/fp16/bf16"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Pack the N:M layers of MODEL_DIR (kept values + 2-bit positions for 2:4) into one safetensors container."""
    from edgeprune.sparsity.packed import pack as run_pack

    r = run_pack(model_dir, out, pattern=pattern, values=values, dense=dense, overwrite=overwrite)
    typer.echo(
        f"packed {r.layers_packed} {r.pattern} layers ({r.values} values) + {r.tensors_dense} dense tensors in {r.seconds:.1f}s "
        f"→ {out} ({r.file_bytes / 2**20:.1f} MiB, of which carried files {r.files_bytes / 2**20:.1f} MiB)"
    )
    typer.echo(
        f"  N:M linears: {r.linear_bytes / 2**20:.1f} MiB = {r.linear_ratio_fp32:.3f}x dense fp32, {r.linear_ratio_fp16:.3f}x dense fp16"
    )
    typer.echo(
        f"  whole model: {r.model_bytes / 2**20:.1f} MiB = {r.model_ratio_fp32:.3f}x dense fp32, {r.model_ratio_fp16:.3f}x dense fp16"
    )
    if r.skipped_files:
        typer.echo("  not carried: " + ", ".join(r.skipped_files))


@app.command()
@user_errors
def unpack(
    file: Path = typer.Argument(..., help="packed file from `edgeprune pack`"),
    out: Path = typer.Option(..., "--out", help="output folder (a Hugging Face model folder)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Restore a loadable Hugging Face folder from a packed file, after checking its schema version and checksum."""
    from edgeprune.sparsity.packed import unpack as run_unpack

    manifest = run_unpack(file, out, overwrite=overwrite)
    typer.echo(f"unpacked {len(manifest['tensors'])} tensors and {len(manifest['files'])} files ({manifest['pattern']}, {manifest['values']} values) → {out}")


@app.command()
@user_errors
def check(
    model_dir: Path = typer.Argument(..., help="HF folder with safetensors weights"),
    pattern: str = typer.Option("2:4", help="the N:M pattern to check"),
):
    """Per prunable linear: N:M groups, violating groups and sparsity; exit 1 if any layer is not N:M."""
    from edgeprune.sparsity.packed import check_folder

    reports = check_folder(model_dir, pattern)
    width = max(len(r.layer) for r in reports)
    for r in reports:
        typer.echo(f"{r.layer:{width}s}  groups {r.groups:9d}  violations {r.violations:7d}  sparsity {r.sparsity:.1%}")
    bad = [r.layer for r in reports if not r.ok]
    typer.echo(f"{len(reports) - len(bad)}/{len(reports)} layers are {pattern}" + (f"; first offender: {bad[0]}" if bad else ""))
    if bad:
        raise typer.Exit(1)


def _number_list(value: str, what: str, kind: type = int) -> list:
    try:
        return [kind(x) for x in value.split(",") if x.strip()]
    except ValueError:
        example = "1,2,4" if kind is int else "0.8,0.65"
        raise EdgepruneError(f"--{what} '{value}' is not a comma-separated list of {'integers' if kind is int else 'numbers'}",
                             f"write e.g. --{what} {example}") from None


@app.command("profile")
@user_errors
def profile_(
    onnx_dirs: List[str] = typer.Argument(..., help="folders from `edgeprune export` (or .onnx files); the first is the baseline"),
    device: Path = typer.Option(..., "--device", help="device profile, e.g. devices/laptop-x86-4t.toml"),
    out: Path = typer.Option(..., "--out", help="report folder: report.json, report.md, report.html, traces/"),
    threads: Optional[str] = typer.Option(None, help="thread counts to measure, e.g. 1,2,4 (default: the profile's)"),
    strict: bool = typer.Option(False, help="measure everything 3 times in fresh processes; flag medians that differ > 5%"),
    prompt_lengths: str = typer.Option("128,512", help="decoders: prompt lengths for prefill / time to first token"),
    decode_tokens: int = typer.Option(32, help="decoders: tokens generated with the KV cache per sequence"),
    batch_sizes: str = typer.Option("1", help="encoders: batch sizes"),
    seq_lengths: str = typer.Option("128", help="encoders: sequence lengths"),
    warmup: Optional[int] = typer.Option(None, help="override the profile's warm-up runs"),
    runs: Optional[int] = typer.Option(None, help="override the profile's timed runs"),
    op_profile: bool = typer.Option(True, help="also run ORT's profiler (separate session) for the op breakdown"),
    backend: str = typer.Option("ort", help="decoders: ort (a Python loop over an ORT session), genai (ORT GenAI's generator, "
                                            "shared KV buffer; needs genai_config.json) or both, side by side"),
    remote: Optional[str] = typer.Option(None, help="measure on this device over ssh, ssh://user@host[:port] (default: the profile's remote)"),
    identity: Optional[Path] = typer.Option(None, help="ssh private key for the device (ssh -i)"),
    remote_python: Optional[str] = typer.Option(None, help="the device's Python with numpy and onnxruntime (default python3)"),
    accept_new_host_key: bool = typer.Option(False, help="trust the device's host key if it is not in known_hosts yet (a changed key is still refused)"),
    known_hosts: Optional[Path] = typer.Option(None, help="known_hosts file to check the device's host key against (default: ssh's)"),
    local: bool = typer.Option(False, "--local", help="measure on this host even when the profile names a remote device"),
    also_local: bool = typer.Option(False, "--also-local", help="measure on this host and on the remote device, side by side"),
    json_: bool = typer.Option(False, "--json", help="print report.json on stdout (the one-line summaries go to stderr)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Profile ONNX graphs with ONNX Runtime under a device profile, each variant in a fresh process; compare side by side.

    With a remote device (--remote, or remote = "ssh://..." in the profile) the same measurements run there over ssh."""
    import dataclasses

    from edgeprune.profiling import ProfileConfig, SshOptions, Workload, load_device, profile as run_profile

    if local and (also_local or remote):
        raise EdgepruneError("--local measures on this host only", "drop --local, or drop --remote / --also-local")
    workload = Workload(tuple(_number_list(prompt_lengths, "prompt-lengths")), decode_tokens, tuple(_number_list(batch_sizes, "batch-sizes")),
                        tuple(_number_list(seq_lengths, "seq-lengths")), op_profile)
    config = ProfileConfig(tuple(_number_list(threads, "threads")) if threads is not None else None, strict, workload, warmup, runs,
                           backend)
    overrides = {k: v for k, v in (("remote", remote), ("identity", str(identity) if identity else None),
                                   ("remote_python", remote_python)) if v is not None}
    profile_device = dataclasses.replace(config.device(load_device(device)), **overrides)
    ssh = SshOptions(accept_new_host_key=accept_new_host_key, known_hosts=str(known_hosts) if known_hosts else None)
    where = "local" if local else "both" if also_local else "device"
    with _sigterm_as_interrupt():
        report = run_profile(onnx_dirs, profile_device, config.threads, out, strict=config.strict, workload=config.workload,
                             overwrite=overwrite, progress=lambda line: typer.echo(line, err=True), where=where, ssh=ssh,
                             backend=config.backend)
    say = functools.partial(typer.echo, err=json_)
    for note in report.notes:
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)
    for v in report.variants:
        for r in v.runs:
            if not r.ok:
                say(f"{v.name} @ {r.threads}t: FAILED: {r.reason}")
                continue
            figures = [f"{k} {val:.3g}" for k, val in r.headline.items()]
            if r.memory:
                figures.append(f"peak RSS {r.memory.peak_mb:.0f} MiB")
            verdict = "" if not r.budgets else "; budgets " + ("pass" if all(b.passed for b in r.budgets) else
                                                              "FAIL: " + ", ".join(b.name for b in r.budgets if not b.passed))
            say(f"{v.name} @ {r.threads}t: " + ", ".join(figures) + verdict + ("; UNSTABLE" if r.unstable else ""))
    targets = list(dict.fromkeys(v.remote["target"] if v.remote else "this host" for v in report.variants))
    say(f"report → {out}/report.html (measured on {' and '.join(targets)}, not scaled to '{profile_device.name}')")
    if json_:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))


@app.command()
@user_errors
def quantize(
    onnx_dir: Path = typer.Argument(..., help="folder from `edgeprune export` (its float model.onnx)"),
    out: Path = typer.Option(..., "--out", help="output folder; its model.onnx is the quantised graph"),
    scheme: str = typer.Option("int4", help="int8 (dynamic, per channel) or int4 (MatMulNBits, block-wise)"),
    block_size: int = typer.Option(32, help="int4: weights per scale along the input dimension"),
    symmetric: bool = typer.Option(True, help="int4: symmetric codes, or --no-symmetric for a zero point per block"),
    quantize_head: bool = typer.Option(True, help="int4: also the token embedding and tied LM head"),
    head_bits: int = typer.Option(4, help="int4: bits for the embedding / LM head table, shared when tied (4 or 8)"),
    method: str = typer.Option("gptq", help="int4: gptq (calibrated on --calib text, pruned zeros held) or rtn (round to nearest)"),
    calib: str = typer.Option("pydoc", help="int4 gptq: " + CALIB_HELP),
    samples: int = typer.Option(32, help="int4 gptq: calibration sequences"),
    seqlen: int = typer.Option(512, help="int4 gptq: tokens per calibration sequence"),
    act_order: bool = typer.Option(True, help="int4 gptq: quantise columns by decreasing input energy (static group scales)"),
    damp: float = typer.Option(0.01, help="int4 gptq: Hessian dampening, as a fraction of its mean diagonal"),
    eight_bit_budget: float = typer.Option(0.0, help="int4 gptq: share of linear weights that may stay 8-bit (worst stages first)"),
    pack: bool = typer.Option(True, help="int4: one MatMulNBits for the linears that read the same input (q/k/v, gate/up)"),
    accuracy_level: int = typer.Option(4, help="int4: MatMulNBits compute: 4 = int8 activations (fast), 0 = fp32 (exact under padding, slower)"),
    verify: bool = typer.Option(True, help="compare with the PyTorch model it was exported from"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch and ONNX Runtime (default: all cores)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
):
    """Quantise an exported folder into a new one; pruned zeros must stay exactly zero (checked on the codes)."""
    from edgeprune.onnx import QuantizeConfig, quantize as run_quantize

    from edgeprune.data import CalibConfig

    config = QuantizeConfig(scheme, block_size, symmetric, quantize_head, method=method, calib=CalibConfig(calib, samples, seqlen), head_bits=head_bits,
                            act_order=act_order, damp=damp, eight_bit_budget=eight_bit_budget, pack=pack, accuracy_level=accuracy_level)
    _set_threads(threads)
    with _Display():
        report = run_quantize(onnx_dir, out, config, verify=verify, overwrite=overwrite)
    size = sum(f.stat().st_size for f in Path(out).glob(f"{report.file}*"))  # the graph and its external data, if any
    line = f"{report.scheme}: {size / 2**20:.1f} MiB → {out}/model.onnx; zeros kept: {'yes' if not report.lost else 'no'}"
    if report.quality.get("greedy_tokens_identical_prefix") is not None:
        line += f"; greedy tokens identical to PyTorch: {report.quality['greedy_tokens_identical_prefix']}/{report.quality['new_tokens']}"
    typer.echo(line)


class _RunProgress:
    """Rich display for `edgeprune run`: the step, its layers or current measurement, elapsed and time left."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
        self.steps = self.work = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.steps is not None:  # started at the first step: a run that fails validation prints only its error
            self.progress.stop()

    def step(self, index: int, total: int, label: str) -> None:
        if self.steps is None:
            self.progress.start()
            self.steps = self.progress.add_task("steps", total=total)
        self.progress.update(self.steps, completed=index - 1, description=f"step {index}/{total} {label}")
        if self.work is not None:
            self.progress.remove_task(self.work)
        self.work = self.progress.add_task("  working", total=None)

    def done(self, label: str, seconds: float, cached: bool) -> None:
        self.progress.console.print(f"{label}: " + ("reused (config and inputs unchanged)" if cached else f"done in {seconds:.0f}s"))
        self.progress.advance(self.steps)
        self.progress.remove_task(self.work)
        self.work = None

    def layers(self, done: int, total: int) -> None:
        self.progress.update(self.work, description="  layers", total=total, completed=done)

    def message(self, text: str) -> None:
        self.progress.update(self.work, description=f"  {text}")

    def status(self, text: str, done: int | None, total: int | None) -> None:
        task = next(t for t in self.progress.tasks if t.id == self.work)
        if task.description != f"  {text}" or task.total != total:  # a new phase: its own count (or none)
            self.progress.remove_task(self.work)
            self.work = self.progress.add_task(f"  {text}", total=total)
        self.progress.update(self.work, completed=done or 0)


def _print_summary(result, console=None) -> None:
    """The run's figures with one column per variant and one row per figure (fits 80 columns; cells wrap, never cut),
    then what pruning bought against the unpruned model at the same precision."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from edgeprune.report.run import same_precision_sentence, speedup_note, summary_by_metric

    names, sections = summary_by_metric(result.summary)
    table = Table(title=f"{result.recipe}: {len(result.ran)} step(s) ran, {len(result.reused)} reused, {result.seconds:.0f}s")
    table.add_column("", overflow="fold")
    for name in names:
        table.add_column(Text(name), justify="right", overflow="fold")  # Text: names and values are not rich markup
    for title, rows in sections:
        if title:
            table.add_section()
            table.add_row(Text(title, style="italic"))
        for row in rows:
            table.add_row(*map(Text, row))
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # logs and pipes: a fixed, readable width
    console.print(table)
    for line in (speedup_note(result.summary), same_precision_sentence(result.summary)):
        if line:
            console.print(Text(line))
    if result.report:
        console.print(Text(f"report → {result.report} (and report.md)"), soft_wrap=True)  # one line: a path to copy


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill` behaves like Ctrl-C: temporary folders (here and on a remote device) are removed on the way out."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(recipe: str, out: Optional[Path], devices: list, sets: list) -> None:
    from edgeprune.recipes import run_recipe

    try:
        with _sigterm_as_interrupt(), _RunProgress() as progress:
            result = run_recipe(recipe, out, devices or None, sets, progress=progress)
    except KeyboardInterrupt:
        _fail("interrupted; finished steps are kept, run the same command again to resume", 130)
    _print_summary(result)


@app.command()
@user_errors
def run(
    recipe: str = typer.Argument(..., help="recipe file (export/*.toml) or a shipped recipe's name"),
    device: List[str] = typer.Option([], "--device", help="device profile (file or name) to profile on; repeat for several"),
    set_: List[str] = typer.Option([], "--set", help="override a recipe key, e.g. --set prune.sparsity=0.5"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/RECIPE-NAME); re-running resumes it"),
):
    """Run a recipe: each step into its own folder, unchanged steps reused, then report.md/report.html."""
    _run(recipe, out, device, set_)


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="run folder; re-running reuses finished steps"),
    device: List[str] = typer.Option([], "--device", help="device profile(s) (default devices/this-host.toml)"),
):
    """Prune the bundled SmolLM2-135M 2:4 with `attention`, export, quantise to int4, profile, and report."""
    _run("smollm2-135m-2of4-attention-int4", out, device or ["this-host"], [])


@app.command()
@user_errors
def fit(
    model: str = typer.Argument(..., help="HF folder, .gguf file, Hub id, or bundled alias (smollm2-135m, minilm-l6)"),
    device: str = typer.Option(..., "--device", help="device profile (file or name); its budget fields are the default budget"),
    out: Path = typer.Option(..., "--out", help="fit folder: model/ (the chosen ONNX model), report.*, cache/ (re-runs resume)"),
    max_decode_ms: Optional[str] = typer.Option(None, help="decoders: mean decode ms/token (or e.g. 0.8x: that × dense int4's, measured)"),
    max_ttft_ms: Optional[str] = typer.Option(None, help="decoders: p90 time to first token, ms (or a multiple, 0.8x)"),
    max_latency_ms: Optional[str] = typer.Option(None, help="encoders: p90 ms for one sentence (or a multiple, 0.8x)"),
    max_memory_mb: Optional[str] = typer.Option(None, help="peak resident memory, MiB (or a multiple, 0.8x)"),
    max_size_mb: Optional[str] = typer.Option(None, help="model files on disk, MiB (or a multiple, 0.8x)"),
    keep: str = typer.Option("0.75,0.55", help="structured candidates: fractions of the block parameters kept"),
    schemes: str = typer.Option("int4,int8", help="quantisation schemes to consider"),
    drop_blocks: str = typer.Option("both", help="structured candidates with whole-block removal: both, no, yes"),
    shortlist: int = typer.Option(3, help="candidates measured per round, best predicted quality first"),
    measure_all: bool = typer.Option(False, help="measure every candidate (to check the predictions and the proxy's choice)"),
    threads: Optional[int] = typer.Option(None, help="threads to measure with (default: the profile's, else every core)"),
    rounds: int = typer.Option(3, help="profile rounds in alternating order; timings are medians, relative to dense int4 in the same rounds"),
    side_by_side: int = typer.Option(16, help="turns per graph when candidates are timed beside dense int4 in one process "
                                              "(decode / encoder latency as the median per-turn ratio; 0: off)"),
    text: str = typer.Option("pydoc", help="held-out text for quality: pydoc (its held-out split) or a .txt/.jsonl file"),
    eval_windows: Optional[int] = typer.Option(None, help="windows of --text for the final quality (default: all)"),
    local: bool = typer.Option(False, "--local", help="measure on this host even when the profile names a remote device"),
):
    """Find the best model that meets a device's budget: dense and structured candidates × int4/int8, predicted, then the
    shortlist measured on the device; writes the chosen ONNX model and a report of every candidate."""
    from edgeprune.fit import Budget, FitConfig, fit as run_fit
    from edgeprune.fit.budget import parse_limit

    drops = {"both": (False, True), "no": (False,), "yes": (True,)}
    if drop_blocks not in drops:
        raise EdgepruneError(f"--drop-blocks '{drop_blocks}' is unknown", "use both, no or yes")
    limits = {key: parse_limit(text, f"--max-{key.replace('_', '-')}")
              for key, text in (("decode_ms", max_decode_ms), ("ttft_ms", max_ttft_ms), ("latency_ms", max_latency_ms),
                                ("memory_mb", max_memory_mb), ("size_mb", max_size_mb))}
    budget = Budget(**{k: v for k, (v, _) in limits.items()}, relative=tuple(k for k, (_, rel) in limits.items() if rel))
    config = FitConfig(budget=budget, keeps=tuple(_number_list(keep, "keep", float)), schemes=tuple(s.strip() for s in schemes.split(",") if s.strip()),
                       drop_blocks=drops[drop_blocks], shortlist=shortlist, measure_all=measure_all, threads=threads, rounds=rounds, side_by_side=side_by_side, text=text,
                       eval_windows=eval_windows, where="local" if local else "device")
    try:
        with _sigterm_as_interrupt():
            report = run_fit(model, device, out, config, log=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        _fail("interrupted; finished candidates are cached, run the same command again to resume", 130)
    from edgeprune.report.fit import summary_lines

    for line in summary_lines(report.to_dict()):
        typer.echo(line.replace("**", "").replace("`", ""))
    typer.echo(f"model → {out}/model; report → {out}/report.html")


@app.command("list")
def list_():
    """Registered pruning methods, patterns, exporters, quantisation modes, bundled models, recipes and device profiles."""
    from edgeprune.models import ADAPTERS
    from edgeprune.specs import BUNDLED
    from edgeprune.onnx import QUANT_SCHEMES
    from edgeprune.profiling.devices import devices_dir
    from edgeprune.pruning import PRUNERS
    from edgeprune.recipes import STEPS, _register_steps, recipes_dir

    _register_steps()
    typer.echo("pruning methods: " + ", ".join(PRUNERS.names()))
    typer.echo("architectures:   " + ", ".join(f"{n} ({', '.join(c.model_types)})" for n, c in ADAPTERS.items()))
    typer.echo("sparsity:        any fraction in (0,1); N:M with 0<N<M, e.g. 1:4, 2:4, 4:8, 2:8")
    from edgeprune.structured import SCORES, SEARCHES

    typer.echo("structured:      scores " + ", ".join(SCORES.names()) + "; searches " + ", ".join(SEARCHES)
               + "; budgets --target-params or --target-latency-ms")
    typer.echo("exporters:       decoder (text-generation-with-past, one merged graph), encoder (feature-extraction, optional pooling)")
    typer.echo("quantisation:    " + ", ".join(QUANT_SCHEMES) + " (int4: block 32/64/128, symmetric or not)")
    from edgeprune.data import DOMAINS

    typer.echo("texts:           eval --text " + ", ".join(DOMAINS) + ", a file, or suite (all of them); "
               "--calib any of them, wikitext2, c4, or a mix such as pydoc:0.5+self:0.5")
    typer.echo("recipe steps:")
    for name in STEPS.names():
        typer.echo(f"  {name:14s} {STEPS.get(name).help}")
    typer.echo("bundled models:")
    for alias, entry in BUNDLED.items():
        typer.echo(f"  {alias:14s} {entry.description}")
    typer.echo("recipes (export/):")
    for path in sorted(recipes_dir().glob("*.toml")):
        typer.echo(f"  {path.stem}")
    typer.echo("device profiles (devices/):")
    for path in sorted(devices_dir().glob("*.toml")):
        typer.echo(f"  {path.stem}")


def main() -> None:  # console-script entry point
    with _sigterm_as_interrupt():  # every command: `kill` cleans up like Ctrl-C (no half-written temporary folders)
        app()


if __name__ == "__main__":
    sys.exit(main())
