"""Mobile format: every .onnx graph of an export folder converted to ORT format (.ort, what the ORT
mobile packages and minimal builds load), plus ``required_operators.config`` listing the operators
(and types) a reduced ORT build needs to run them.

    edgeprune export smollm2-135m --out out/smol --quantize int4 --ort-format
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from edgeprune.errors import EdgepruneError

OPS_CONFIG = "required_operators.config"
# 'extended' leaves out the layout changes 'all' makes for the converting machine's CPU (e.g. x86 NCHWc),
# which a phone's build may not have kernels for.
OPTIMIZATION_LEVEL = "extended"


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def convert_to_ort(folder: Path) -> list[Path]:
    """Write ``<name>.ort`` next to each ``<name>.onnx`` in ``folder`` and the operator config; returns the .ort paths.

    Each .ort file is loaded back into an ORT session, so a file that a runtime cannot read is an error here.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from edgeprune.onnx.session import load_session

    sources = sorted(folder.glob("*.onnx"))
    if not sources:
        raise EdgepruneError(f"no .onnx file in '{folder}' to convert", "export first")
    log = io.StringIO()
    try:
        with _env("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", OPTIMIZATION_LEVEL), \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            convert_onnx_models_to_ort(folder, output_dir=folder, optimization_styles=[OptimizationStyle.Fixed])
    except Exception as exc:  # the converter raises RuntimeError/ORT errors; keep its log's last line as the cause
        last = (log.getvalue().strip().splitlines() or [str(exc) or type(exc).__name__])[-1]
        raise EdgepruneError(f"ORT-format conversion failed: {last[:200]}", "export without --ort-format, or report it") from None
    # The converter names its outputs after the level unless it is 'all': model.extended.ort, required_operators.extended.config.
    for produced, wanted in [(src.with_suffix(f".{OPTIMIZATION_LEVEL}.ort"), src.with_suffix(".ort")) for src in sources] + \
            [(folder / OPS_CONFIG.replace(".config", f".{OPTIMIZATION_LEVEL}.config"), folder / OPS_CONFIG)]:
        if produced.is_file():
            produced.replace(wanted)
    config = folder / OPS_CONFIG
    if config.is_file():  # its header names the files it was built from, with the converter's (temporary) paths
        config.write_text("".join(
            f"# - {Path(line[4:].strip()).name.replace(f'.{OPTIMIZATION_LEVEL}.ort', '.ort')}\n" if line.startswith("# - ") else line
            for line in config.read_text().splitlines(keepends=True)))
    written = [src.with_suffix(".ort") for src in sources]
    missing = [p.name for p in written if not p.is_file()]
    if missing or not (folder / OPS_CONFIG).is_file():
        raise EdgepruneError(f"ORT-format conversion wrote no {', '.join(missing) or OPS_CONFIG}", "report it with the model")
    for path in written:
        load_session(path)
    return written
