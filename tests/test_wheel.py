"""The shipped recipes (export/) and device profiles (devices/) survive a regular install: build the wheel from a copy
of the working tree, install it with --no-deps into a fresh venv that borrows this venv's dependencies, and run the
CLI from outside the checkout. An editable install of that copy must read the same folders in place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from edgeprune.shipped import shipped_dir

REPO = Path(__file__).resolve().parents[1]
HEADINGS = {"export": "recipes (export/):", "devices": "device profiles (devices/):"}
RECIPE, DEVICE = "smollm2-135m-2of4-attention-int4", "this-host"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
# Prints where edgeprune and the shipped files were found, and validates a shipped recipe and device by name.
RESOLVE = f"""
import json, edgeprune
from edgeprune.profiling.devices import load_device
from edgeprune.recipes import find_recipe, load_recipe
print(json.dumps({{"package": edgeprune.__file__, "recipe": str(find_recipe({RECIPE!r})),
                  "recipe_name": load_recipe({RECIPE!r}).header.name, "device": load_device({DEVICE!r}).name}}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(env, PYTHONNOUSERSITE="1", NO_COLOR="1", TERM="dumb", COLUMNS="200")


def _run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _copy_tree(dest: Path) -> Path:
    """What committing the working tree would hold (tracked files and untracked ones git does not ignore), so that
    building never writes build/ or *.egg-info into the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True, timeout=60).stdout.split("\0")
    for name in listed:
        if name and (REPO / name).is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _fresh_venv(path: Path) -> Path:
    """A venv without edgeprune; `_borrow_dependencies` later makes torch, typer... importable in it."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], path.parent)
    return path / "bin" / "python"


def _borrow_dependencies(python: Path) -> None:
    """Plain path lines in a .pth put this venv's site-packages on sys.path without running the .pth files in it, so
    the editable finder of the checkout's edgeprune stays off and edgeprune comes from what was installed."""
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], python.parent).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "zz-edgeprune-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))


def _shipped_stems(folder: str) -> list[str]:
    return sorted(p.stem for p in (REPO / folder).glob("*.toml"))


def _listed(output: str, heading: str) -> list[str]:
    """The indented names under one heading of `edgeprune list`."""
    lines = output.splitlines()
    assert heading in lines, output
    names = []
    for line in lines[lines.index(heading) + 1:]:
        if not line.startswith("  "):
            break
        names.append(line.strip())
    return names


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, the fresh venv's python with only that wheel installed)."""
    root = tmp_path_factory.mktemp("wheel")
    src = _copy_tree(root / "src")
    _run(PIP + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", src], root)
    (wheel,) = (root / "dist").glob("edgeprune-*.whl")
    python = _fresh_venv(root / "venv")
    _run(PIP + ["--python", python, "install", "-q", "--no-deps", wheel], root)
    _borrow_dependencies(python)  # after installing, so pip never sees the checkout's editable edgeprune
    return wheel, python


def test_wheel_holds_every_shipped_toml_and_nothing_outside_the_package(wheel_install):
    wheel, _ = wheel_install
    names = zipfile.ZipFile(wheel).namelist()
    for folder in HEADINGS:
        inside = sorted(Path(n).stem for n in names if n.startswith(f"edgeprune/_shipped/{folder}/"))
        assert inside == _shipped_stems(folder) and inside, folder
    assert not [n for n in names if not n.startswith(("edgeprune/", "edgeprune-0"))]  # no top-level export/ in site-packages


def test_wheel_install_lists_shipped_recipes_and_devices(wheel_install, tmp_path):
    _, python = wheel_install
    output = _run([python.parent / "edgeprune", "list"], tmp_path).stdout
    for folder, heading in HEADINGS.items():
        assert _listed(output, heading) == _shipped_stems(folder)


def test_wheel_install_run_help(wheel_install, tmp_path):
    _, python = wheel_install
    output = _run([python.parent / "edgeprune", "run", "--help"], tmp_path).stdout
    assert "Usage: edgeprune run" in output and "--device" in output


def test_wheel_install_resolves_shipped_names_from_the_wheel(wheel_install, tmp_path):
    _, python = wheel_install
    found = json.loads(_run([python, "-c", RESOLVE], tmp_path).stdout)
    package = Path(found["package"]).resolve().parent
    assert python.parent.parent.resolve() in package.parents and REPO not in package.parents
    assert Path(found["recipe"]) == package / "_shipped" / "export" / f"{RECIPE}.toml"
    assert Path(found["recipe"]).read_bytes() == (REPO / "export" / f"{RECIPE}.toml").read_bytes()
    assert (found["recipe_name"], found["device"]) == (RECIPE, DEVICE)


def test_editable_install_reads_the_top_level_folders_in_place(tmp_path):
    src = _copy_tree(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv")
    _borrow_dependencies(python)  # first: the build backend runs in this venv; pip leaves a dist outside it alone
    _run(PIP + ["--python", python, "install", "-q", "--no-deps", "--no-build-isolation", "-e", src], tmp_path)
    (src / "devices" / "added-after-install.toml").write_bytes((src / "devices" / f"{DEVICE}.toml").read_bytes())
    found = json.loads(_run([python, "-c", RESOLVE], tmp_path).stdout)
    assert Path(found["package"]).resolve() == src.resolve() / "edgeprune" / "__init__.py"
    assert Path(found["recipe"]).resolve() == src.resolve() / "export" / f"{RECIPE}.toml"
    output = _run([python.parent / "edgeprune", "list"], tmp_path).stdout
    assert _listed(output, HEADINGS["devices"]) == sorted([*_shipped_stems("devices"), "added-after-install"])
    assert not (src / "edgeprune" / "_shipped").exists()


def test_checkout_reads_export_and_devices_in_place():
    assert (shipped_dir("export"), shipped_dir("devices")) == (REPO / "export", REPO / "devices")
    assert not (REPO / "edgeprune" / "_shipped").exists()  # a copy there would shadow the real folders
