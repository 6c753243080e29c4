"""edgeprune.json, the record that prune, structured, export and quantize write next to each model, and the schema
versions of every record edgeprune writes: the one place that knows the file's name and how it is read and written.
A leaf: it imports nothing from edgeprune but errors and io.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.io import write_json

METADATA_FILE = "edgeprune.json"

# One schema version per kind of record, each raised on its own when that record changes shape.
EXPORT_SCHEMA_VERSION = 1  # the "export" record in an exported folder's edgeprune.json (onnx ExportReport)
EVAL_SCHEMA_VERSION = 1  # an evaluation's result (EvalResult: `edgeprune eval` output, a recipe's eval.json)
PROFILE_SCHEMA_VERSION = 1  # report.json of `edgeprune profile` (profiling.results.Report; other versions are refused)
PACKED_SCHEMA_VERSION = 1  # the manifest inside a packed .safetensors file (sparsity.packed; unpack refuses others)
RUN_SCHEMA_VERSION = 1  # a recipe run: each step's meta.json and the run's summary (recipes)
FIT_SCHEMA_VERSION = 2  # 2: profile_rounds; report.json of `edgeprune fit` (fit.workflow.FitReport)


def read_metadata(folder: str | os.PathLike | None, strict: bool = True,
                  fix: str = "re-run the edgeprune command that wrote the folder, or remove the file") -> dict | None:
    """``folder``'s edgeprune.json, or None when ``folder`` is None or has none. A file that is not JSON is a one-line
    error with ``fix`` as its hint, or with ``strict=False`` (readers for which the record is optional) None."""
    path = Path(folder) / METADATA_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        if not strict:
            return None
        raise EdgepruneError(f"{path} is not valid JSON", fix) from None


def write_metadata(folder: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as ``folder``'s edgeprune.json (atomically: readers never see half a file)."""
    write_json(Path(folder) / METADATA_FILE, data)
