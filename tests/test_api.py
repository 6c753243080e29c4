"""The public API: every advertised name resolves, and importing edgeprune stays cheap."""

import subprocess
import sys

import edgeprune


def test_every_public_name_resolves():
    for name in edgeprune.__all__:
        assert getattr(edgeprune, name) is not None, name


def test_import_has_no_heavy_side_effects():
    code = "import sys, edgeprune; print(any(m in sys.modules for m in ('torch', 'onnxruntime', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
