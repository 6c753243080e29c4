"""Packaging lives in pyproject.toml except the package list, which pyproject.toml cannot extend beyond what
``packages.find`` discovers: the recipes in export/ and the device profiles in devices/ stay at the top of the
repository and ship inside the wheel as edgeprune/_shipped/{export,devices}/*.toml (see edgeprune/shipped.py)."""

from setuptools import find_namespace_packages, setup

SHIPPED = ("export", "devices")

setup(
    packages=find_namespace_packages(include=["edgeprune*"]) + [f"edgeprune._shipped.{folder}" for folder in SHIPPED],
    package_dir={f"edgeprune._shipped.{folder}": folder for folder in SHIPPED},
    package_data={f"edgeprune._shipped.{folder}": ["*.toml"] for folder in SHIPPED},
)
