"""Where the recipes (export/) and device profiles (devices/) that come with edgeprune live: the repository's
top-level folders in a source checkout or an editable install, and ``edgeprune/_shipped/`` in an installed wheel,
which setup.py fills from those same folders (one copy of each file either way)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(folder: Literal["export", "devices"]) -> Path:
    """The folder of shipped ``*.toml`` files: ``"export"`` (recipes) or ``"devices"`` (device profiles)."""
    installed = _PACKAGE / "_shipped" / folder  # only a wheel install has it; a checkout must never hold a copy
    return installed if installed.is_dir() else _PACKAGE.parent / folder
