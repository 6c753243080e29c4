"""Profiling exported ONNX graphs with ONNX Runtime under a device profile, here or on the device over ssh. This file
only re-exports the public names: workflow.py holds Workload, ProfileConfig and profile(), devices.py the device
profiles, results.py the measurements as dataclasses, worker.py and runner.py the measuring process, remote.py ssh.

    edgeprune profile out/smol-onnx out/smol-2of4-onnx --device devices/laptop-x86-4t.toml --threads 1,2 --out runs/smol
"""

from edgeprune.profiling.devices import DeviceProfile, load_device
from edgeprune.profiling.remote import SshOptions
from edgeprune.profiling.results import Report
from edgeprune.profiling.workflow import BACKENDS, REPORT_DIR, ProfileConfig, Workload, profile

__all__ = ["BACKENDS", "DeviceProfile", "ProfileConfig", "REPORT_DIR", "Report", "SshOptions", "Workload", "load_device", "profile"]
