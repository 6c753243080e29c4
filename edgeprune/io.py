"""Writing outputs atomically (build in a temporary sibling folder, then rename into place), and where edgeprune
caches what it computed once."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from edgeprune.errors import EdgepruneError


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Can ``out`` be written? Checked before any slow work: it must not exist (unless ``overwrite``), no folder above it
    may be a file, and the nearest existing folder above it must take a new entry (probed with a temporary folder)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgepruneError(f"output '{out}' already exists", "pass --overwrite or choose another --out")
    check_writable(out)
    return out


def check_writable(out: str | os.PathLike) -> None:
    """The folders above ``out`` are folders (or can be made), and the nearest existing one (``out`` itself when it is an
    existing folder, as when a run resumes) takes a new entry."""
    out = Path(out)
    parent = out.absolute() if out.is_dir() else out.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgepruneError(f"cannot create '{out}': '{parent}' is a file, not a folder", "choose an --out inside a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgeprune-write-test.", suffix=".tmp", dir=parent))  # .tmp: run cleans it
    except OSError as exc:
        raise EdgepruneError(f"cannot write to '{parent}': {exc.strerror}", "choose a writable --out with free space") from None


def cache_dir() -> Path:
    """Where edgeprune caches derived data: $EDGEPRUNE_CACHE_DIR, else $XDG_CACHE_HOME/edgeprune, else ~/.cache/edgeprune."""
    if os.environ.get("EDGEPRUNE_CACHE_DIR"):
        return Path(os.environ["EDGEPRUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "edgeprune"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on failure it vanishes."""
    out = check_out_dir(out, overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise EdgepruneError(f"cannot write to '{parent}': {exc.strerror}", "choose a writable --out") from None
    try:
        yield tmp
        _umask = os.umask(0)
        os.umask(_umask)
        os.chmod(tmp, 0o777 & ~_umask)  # mkdtemp makes 0700; the result is an ordinary folder
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgepruneError(f"writing '{out}' failed: {exc.strerror}", "check free disk space and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary file path next to ``out``; on success it replaces ``out``, on failure it vanishes."""
    out = check_out_dir(out, overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        # os.open with 0o666 honours the umask (mkstemp would leave the result readable by its owner only).
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = tmp.stat().st_mode & 0o777
    except OSError as exc:
        raise EdgepruneError(f"cannot write to '{parent}': {exc.strerror}", "choose a writable --out") from None
    try:
        yield tmp
        if out.is_dir():
            raise EdgepruneError(f"output '{out}' is a folder", "choose a file name for --out")
        os.chmod(tmp, mode)  # writers such as safetensors may recreate the file owner-only
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgepruneError(f"writing '{out}' failed: {exc.strerror}", "check free disk space and permissions") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
