"""edgeprune.json and the schema versions live in edgeprune/metadata.py alone; its reader's three outcomes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.metadata import METADATA_FILE, read_metadata, write_metadata

ROOT = Path(__file__).resolve().parent.parent / "edgeprune"


def test_the_file_name_and_schema_versions_are_defined_only_in_the_metadata_module():
    names, versions = [], []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == METADATA_FILE:
                names.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(
                    isinstance(t, ast.Name) and t.id.endswith("SCHEMA_VERSION") for t in node.targets):
                versions.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert names and all(n.startswith("metadata.py:") for n in names), names
    assert versions and all(v.startswith("metadata.py:") for v in versions), versions


def test_read_metadata_missing_invalid_and_written(tmp_path):
    assert read_metadata(tmp_path) is None and read_metadata(None) is None and read_metadata(tmp_path / "nowhere") is None
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(EdgepruneError) as err:
        read_metadata(tmp_path, fix="re-run edgeprune export")
    assert err.value.fix == "re-run edgeprune export" and "is not valid JSON" in err.value.problem
    assert read_metadata(tmp_path, strict=False) is None
    write_metadata(tmp_path, {"source_model": "m", "n": 1})
    assert read_metadata(tmp_path) == {"source_model": "m", "n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [METADATA_FILE]  # no temporary file left behind
