"""ONNX export that is verified: one merged decoder graph (prefill + decode with a KV cache) or an
encoder graph (optionally with sentence pooling inside), checked against PyTorch, with the pruned
zeros and N:M patterns checked on the exported weights; and quantisation of such a folder, checked the same way.

    edgeprune export out/smol-2of4 --out out/smol-2of4-onnx
    edgeprune quantize out/smol-2of4-onnx --out out/smol-2of4-int4
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgeprune.errors import EdgepruneError
from edgeprune.metadata import EXPORT_SCHEMA_VERSION, METADATA_FILE, read_metadata, write_metadata
from edgeprune.onnx.configs import ONNX_FILE, ExportConfig, QuantizeConfig
from edgeprune.onnx.genai import GENAI_CONFIG, write_genai_files
from edgeprune.progress import status

if TYPE_CHECKING:
    from edgeprune.onnx.reference import StreamedReference, WholeReference
    from edgeprune.onnx.fuse import FuseReport
    from edgeprune.onnx.quantization import QuantReport
    from edgeprune.onnx.verify import VerifyReport
    from edgeprune.onnx.weights import SparsityReport

_TASKS = {"text-generation": "text-generation-with-past", "feature-extraction": "feature-extraction"}


@dataclass
class ExportReport:
    source: str
    out: str
    architecture: str
    task: str  # the optimum task exported
    pooling: bool
    files: dict[str, int]  # file → bytes
    seconds_export: float
    verify: VerifyReport | None = None
    sparsity: SparsityReport | None = None
    quantized: QuantReport | None = None
    fused: FuseReport | None = None
    schema_version: int = EXPORT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("verify", "sparsity", "quantized", "fused")}
        out["fused"] = self.fused.to_dict() if self.fused else None
        out["verify"] = self.verify.to_dict() if self.verify else None
        out["sparsity"] = self.sparsity.to_dict() if self.sparsity else None
        out["quantized"] = self.quantized.to_dict() if self.quantized else None
        return out


def _require_onnx_stack():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise EdgepruneError(f"ONNX export needs optimum-onnx, onnx and onnxruntime ({exc.name} is missing)",
                             "run: pip install 'edgeprune[onnx]'") from None
    return main_export


@contextlib.contextmanager
def _hf_folder(loaded):
    """A Hugging Face folder optimum can read: the source folder itself, or the loaded model saved to a temp one (GGUF, Hub)."""
    if loaded.gguf_file is None and loaded.path is not None and loaded.path.is_dir():
        yield loaded.path
        return
    with tempfile.TemporaryDirectory(prefix="edgeprune-export-") as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        yield Path(tmp)


#: weights above this make a graph over protobuf's 2 GB: torch writes them as external data, and optimum's
#: post-processing (tied-weight deduplication) cannot handle such a graph here (protobuf's ByteSize fails on it)
LARGE_MODEL_BYTES = 1_800_000_000


def _run_optimum(main_export, folder: Path, out: Path, task: str, opset: int | None, large: bool = False) -> None:
    import logging
    import warnings

    from edgeprune.models.loading import is_structured

    loggers = {name: logging.getLogger(name).level for name in ("transformers", "optimum")}
    for name in loggers:  # optimum warns about the tied embedding/head initialisers it deduplicates: expected
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow: expected, not actionable for users
            main_export(str(folder), out, task=task, opset=opset, do_validation=False, local_files_only=True,
                        library_name="transformers", trust_remote_code=is_structured(folder), no_post_process=large)
    except EdgepruneError:
        raise
    except Exception as exc:  # optimum raises many types; the user needs one line and the cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepruneError(f"ONNX export failed: {first}", "check that the model loads with transformers, or report it") from None
    finally:
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)



def _optimum_child(folder: str, out: str, task: str, opset: int | None, large: bool, conn) -> None:
    """The child process of :func:`_run_optimum_apart`: sends back None, or the error's (problem, fix)."""
    try:
        _run_optimum(_require_onnx_stack(), Path(folder), Path(out), task, opset, large)
        conn.send(None)
    except EdgepruneError as exc:
        conn.send((exc.problem, exc.fix))
    except KeyboardInterrupt:
        conn.send(("interrupted", None))
    finally:
        conn.close()


def _run_optimum_apart(folder: Path, out: Path, task: str, opset: int | None, large: bool) -> None:
    """optimum's export in a child process (spawned: a fresh interpreter), for large models: optimum holds its own
    model and the whole graph it writes (a 1B model: ~11 GB), and the allocator keeps most of that after it returns,
    so in-process the fusion and verification that follow started from there (16 GB peak). A child gives it all back."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_optimum_child, args=(str(folder), str(out), task, opset, large, send), name="edgeprune-optimum")
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the child died without a word (killed, out of memory)
        result = ("", None)
    except BaseException:  # Ctrl-C / SIGTERM here: the child must not go on writing into a folder being removed
        child.terminate()
        raise
    finally:
        child.join()
    if result is None and child.exitcode == 0:
        return
    problem, fix = result or ("", None)
    if not problem:
        problem, fix = (f"ONNX export failed: optimum's process ended with exit code {child.exitcode}",
                        "if it was killed for memory (exit code -9), free memory or use a machine with more")
    raise EdgepruneError(problem, fix)

def _check_quantized(q: QuantReport) -> None:
    """Pruned zeros lost, or N:M broken, by quantisation: a one-line error (the output is then not written)."""
    if q.lost:
        l = q.lost[0]
        raise EdgepruneError(f"{q.scheme} quantisation turned pruned zeros into non-zeros: {l.layer} keeps {l.kept_zeros} of "
                             f"{l.torch_zeros} ({len(q.lost)} layer(s) affected)", "use symmetric quantisation")
    if q.nm_violations:
        raise EdgepruneError(f"{q.scheme} weights of {q.nm_violations[0].layer} break its {q.nm_violations[0].pattern} pattern",
                             "use symmetric quantisation")


def _check(report: ExportReport, config: ExportConfig) -> None:
    """Turn a failed verification or lost sparsity into a one-line error (the output is then not written)."""
    v, s = report.verify, report.sparsity
    if report.quantized is not None:
        _check_quantized(report.quantized)
    if v is not None:
        name, worst = v.worst
        if worst > config.atol:
            raise EdgepruneError(f"ONNX output '{name}' differs from PyTorch by {worst:.3g} (> atol {config.atol:g})",
                                 "export in float32, or raise the tolerance if this is expected")
        if v.tokens_identical is False:
            first = next(i for i, (a, b) in enumerate(zip(v.tokens_torch, v.tokens_onnx)) if a != b)
            raise EdgepruneError(f"greedy generation differs from PyTorch at token {first + 1} of {len(v.tokens_torch)}",
                                 "the ONNX graph is not equivalent; report it with the model")
        if v.embedding_cosine_min is not None and v.embedding_cosine_min < config.min_cosine:
            raise EdgepruneError(f"ONNX sentence embedding has cosine {v.embedding_cosine_min:.6f} to PyTorch (< {config.min_cosine})",
                                 "export without --pooling and pool outside the graph")
    if s is not None:
        if s.lost:
            l = s.lost[0]
            found = "not found" if l.onnx_zeros is None else f"{l.onnx_zeros} zeros"
            raise EdgepruneError(f"the ONNX graph lost pruned zeros: {l.layer} has {l.torch_zeros} zeros in PyTorch, {found} in ONNX "
                                 f"({len(s.lost)} layer(s) affected)", "export in float32 without weight-changing optimisations")
        if s.nm_violations:
            l = s.nm_violations[0]
            raise EdgepruneError(f"the ONNX weight of {l.layer} breaks its {l.pattern} pattern along the input dimension",
                                 "export in float32 without weight-changing optimisations")


def _quantize(reference: Callable[[], WholeReference | StreamedReference], onnx_path: Path, dst: Path, config: ExportConfig, fp32_inits: dict[str, str],
              groups: list[list[str]], patterns) -> QuantReport:
    """Write the quantised graph to ``dst``, check the pruned zeros in it, and measure it against PyTorch.

    ``reference()`` gives the PyTorch side (:mod:`edgeprune.onnx.reference`); it is first asked for after the graph is
    written (GPTQ: before, as its calibration needs the model; streamed, block by block), so the model and the graph
    rewrite need not share memory. ``groups``: the prunable linears
    by the input they read (:func:`~edgeprune.onnx.quantization.stage_groups`)."""
    from edgeprune.onnx.quantization import QuantReport, calibrate_int4, check_quantized, quantize_graph
    from edgeprune.pruning.hidden import policy_for

    q = config.quantize
    external = any(p.name.endswith(".onnx_data") for p in onnx_path.parent.iterdir())
    codes = None
    if q.scheme == "int4" and q.method == "gptq" and q.symmetric:
        start = time.perf_counter()
        ref = reference()
        codes = calibrate_int4(ref.loaded, q, stream=getattr(ref, "stream", None), hidden_policy=policy_for(ref.loaded.path, dst.parent))
        gptq_seconds = round(time.perf_counter() - start, 1)
    if codes:  # recorded now: writing the graph consumes the layer codes
        calibrated = {"calibrated_layers": len(codes.layers), "gptq_seconds": gptq_seconds, "calibration": asdict(q.calib),
                      "act_order": q.act_order, "eight_bit_layers": sorted(n for n, c in codes.layers.items() if c[2] == 8)}
    status(f"writing the {q.scheme} graph")
    packing = [[fp32_inits[n] for n in group] for group in groups if all(n in fp32_inits for n in group)]
    head, packed = quantize_graph(onnx_path, dst, q, external, (fp32_inits, codes) if codes else None,
                                  packing if q.scheme == "int4" and q.pack else None)
    settings = {"ops": ["MatMul"] + (["Gather"] if head else []), "embedding": head}
    if q.scheme == "int8":
        settings |= {"per_channel": True, "weights": "int8 symmetric"}
    else:
        settings |= {"block_size": q.block_size, "symmetric": q.symmetric, "accuracy_level": q.accuracy_level,
                     "method": q.method if codes else "rtn", "packed_matmuls": packed}
    if codes:
        settings |= calibrated
    ref = reference()
    if ref.kind != "whole":
        settings["reference"] = "read block by block from the safetensors; quality teacher-forced on the graph's tokens"
    status(f"checking pruned zeros in the {q.scheme} codes")
    out = QuantReport(q.scheme, dst.name, dst.stat().st_size, settings, check_quantized(dst, ref.linears(), fp32_inits, patterns, q.scheme))
    if config.verify:
        status(f"comparing the {q.scheme} graph with PyTorch")
        out.quality = ref.quality(dst, config.new_tokens, config.atol, config.pooling)
    return out


def quantize(onnx_dir: str | Path, out: str | Path, config: QuantizeConfig = QuantizeConfig(), verify: bool = True,
             overwrite: bool = False) -> QuantReport:
    """Quantise the float graph of an ``edgeprune export`` folder into ``out``, whose model.onnx is then the quantised graph.

    The pruned zeros are checked on the quantised codes (an error if any is lost), and with ``verify`` the
    graph is compared with the PyTorch model it was exported from. Tokenizer and config files are carried over.
    """
    import shutil

    import torch

    from types import SimpleNamespace

    from edgeprune.io import atomic_dir, check_out_dir
    from edgeprune.models.loading import load_model, load_streamed, model_skeleton, stream_source
    from edgeprune.onnx.quantization import stage_groups
    from edgeprune.onnx.reference import StreamedReference, WholeReference
    from edgeprune.onnx.weights import layer_patterns

    _require_onnx_stack()
    src = Path(onnx_dir)
    onnx_path = src / ONNX_FILE
    if not onnx_path.is_file():
        raise EdgepruneError(f"'{src}' has no {ONNX_FILE}", "pass a folder written by edgeprune export")
    from edgeprune.onnx.graph import check_external_data

    try:
        check_external_data(onnx_path)
    except EdgepruneError:
        raise
    except Exception as exc:  # protobuf's DecodeError and friends
        raise EdgepruneError(f"'{onnx_path}' is not a readable ONNX model ({type(exc).__name__})", "re-run edgeprune export") from None
    meta = read_metadata(src, fix="re-run edgeprune prune or remove the file") or {}
    exported = meta.get("export") or {}
    if not exported.get("source"):
        raise EdgepruneError(f"'{src}' has no export record in {METADATA_FILE}", "pass a folder written by edgeprune export")
    if exported.get("quantized") and exported["quantized"].get("file") == ONNX_FILE:
        raise EdgepruneError(f"'{src}/{ONNX_FILE}' is already quantised ({exported['quantized'].get('scheme')})",
                             "quantise the float export instead")
    check_out_dir(out, overwrite)
    gptq = config.scheme == "int4" and config.method == "gptq"
    if gptq:
        from edgeprune.data import check_text

        check_text(config.calib.source, "calib", config.calib.tokens)
    source = exported["source"]
    skeleton = model_skeleton(source)
    # The PyTorch side (GPTQ calibration, zero checks, quality): the whole model in fp32; for a decoder whose graph is
    # too large for protobuf (weights in external data, above LARGE_MODEL_BYTES), read block by block from its
    # safetensors instead (a 1B model: one block in memory, not 5 GB) unless GPTQ calibrates on text the whole model
    # samples (--calib self).
    streamed = (skeleton is not None and skeleton[1].task == "text-generation" and not (gptq and config.calib.source == "self")
                and sum(check_external_data(onnx_path).values()) >= LARGE_MODEL_BYTES and stream_source(source) is not None)
    held: dict = {}

    def reference():
        if "ref" not in held:
            status("loading the PyTorch model" + (" (block by block)" if streamed else ""))
            held["ref"] = StreamedReference(*load_streamed(source, "cpu")) if streamed else \
                WholeReference(load_model(source, device="cpu", dtype=torch.float32))
        return held["ref"]

    groups = stage_groups(SimpleNamespace(model=skeleton[0], adapter=skeleton[1]) if skeleton else reference().loaded)
    fp32_inits = {l["layer"]: l["initializer"] for l in (exported.get("sparsity") or {}).get("layers", []) if l.get("initializer")}
    export_config = ExportConfig(pooling=bool(exported.get("pooling")), verify=verify, quantize=config)
    with atomic_dir(out, overwrite) as tmp:
        for item in src.iterdir():
            if item.is_file() and ".onnx" not in item.name and item.suffix != ".ort" and item.name != METADATA_FILE:
                shutil.copy2(item, tmp / item.name)
        report = _quantize(reference, onnx_path, tmp / ONNX_FILE, export_config, fp32_inits, groups, layer_patterns(meta.get("pruning")))
        _check_quantized(report)
        if reference().is_decoder:
            write_genai_files(tmp, ONNX_FILE)  # rewritten from the quantised graph (and for exports older than genai_config.json)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if ".onnx" in p.name or p.name == GENAI_CONFIG}
        write_metadata(tmp, meta | {"export": exported | {"files": files, "quantized": report.to_dict(),
                                                          "quantized_from": str(src)}})
    return report


def export(model_spec: str, out: str | Path, config: ExportConfig = ExportConfig(), overwrite: bool = False) -> ExportReport:
    """Export ``model_spec`` (pruned folder, HF folder, .gguf or bundled alias) to ``out``/model.onnx, verified."""
    import gc

    import torch

    from edgeprune import __version__
    from edgeprune.io import atomic_dir, check_out_dir
    from edgeprune.models.loading import load_model
    from edgeprune.onnx.graph import add_mean_pooling
    from edgeprune.onnx.verify import verify_decoder, verify_encoder
    from edgeprune.onnx.weights import check_sparsity, layer_patterns

    main_export = _require_onnx_stack()
    out = check_out_dir(out, overwrite)
    loaded = load_model(model_spec, device="cpu", dtype=torch.float32)
    task = _TASKS[loaded.adapter.task]
    if config.pooling and loaded.is_decoder:
        raise EdgepruneError("--pooling is for sentence encoders, not decoders", "drop --pooling")
    meta = read_metadata(loaded.path if loaded.gguf_file is None else None, fix="re-run edgeprune prune or remove the file")

    with atomic_dir(out, overwrite) as tmp:
        start = time.perf_counter()
        large = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) >= LARGE_MODEL_BYTES
        status("exporting with optimum (tracing the model)")
        with _hf_folder(loaded) as folder:
            # optimum loads its own copy: ours goes while it traces (for a 1B model, 5 GB less at the peak)
            loaded.model = None
            gc.collect()
            if large:
                _run_optimum_apart(folder, tmp, task, config.opset, large)
            else:
                _run_optimum(main_export, folder, tmp, task, config.opset, large)
        loaded = load_model(model_spec, device="cpu", dtype=torch.float32)
        onnx_path = tmp / ONNX_FILE
        if not onnx_path.is_file():
            raise EdgepruneError(f"optimum wrote no {ONNX_FILE} (got {sorted(p.name for p in tmp.glob('*.onnx'))})",
                                 "this architecture's export is not a single merged graph; report it")
        if config.pooling:
            add_mean_pooling(onnx_path)
        fused = None
        if loaded.is_decoder and config.fuse:
            from edgeprune.onnx.fuse import fuse_attention

            status("fusing attention into GroupQueryAttention")
            fused = fuse_attention(onnx_path, loaded.model, loaded.adapter)
        report = ExportReport(
            source=str(Path(model_spec).resolve()) if Path(model_spec).exists() else str(model_spec), out=str(out), architecture=loaded.adapter.family, task=task, pooling=config.pooling,
            files={}, seconds_export=round(time.perf_counter() - start, 2), fused=fused,
        )
        layers = loaded.adapter.prunable_linears(loaded.model)
        status("checking pruned zeros in the ONNX weights")
        report.sparsity = check_sparsity(onnx_path, layers, layer_patterns(meta))
        if config.verify:
            status("verifying against PyTorch" + (f" ({config.new_tokens} greedy tokens)" if loaded.is_decoder else ""))
            start = time.perf_counter()
            if loaded.is_decoder:
                report.verify = verify_decoder(loaded.model, loaded.tokenizer, onnx_path, config.new_tokens, config.atol)
            else:
                report.verify = verify_encoder(loaded.model, loaded.tokenizer, onnx_path, config.atol, config.pooling)
            report.verify.seconds = time.perf_counter() - start
        _check(report, config)
        if config.quantize is not None:
            fp32_inits = {l.layer: l.initializer for l in report.sparsity.layers if l.initializer}
            dst = onnx_path.with_name(f"model_{config.quantize.scheme}.onnx")
            from edgeprune.onnx.quantization import stage_groups
            from edgeprune.onnx.reference import WholeReference

            report.quantized = _quantize(lambda: WholeReference(loaded), onnx_path, dst, config, fp32_inits, stage_groups(loaded),
                                         layer_patterns(meta))
            _check(report, config)
        if config.ort_format:
            from edgeprune.onnx.mobile import OPS_CONFIG, convert_to_ort

            status("writing .ort files")
            convert_to_ort(tmp)
        if loaded.is_decoder:
            write_genai_files(tmp, ONNX_FILE)
        report.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if ".onnx" in p.name or p.suffix == ".ort"
                        or p.name == GENAI_CONFIG or p.name == (OPS_CONFIG if config.ort_format else None)}
        write_metadata(tmp, {
            "edgeprune_version": __version__,
            "export": report.to_dict(),
            **({"pruning": meta} if meta is not None else {}),
        })
    return report

