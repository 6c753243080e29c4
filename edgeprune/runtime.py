"""Where things run, in one place: device selection (the default is always the CPU) and the host CPU's name."""

from __future__ import annotations

from edgeprune.errors import EdgepruneError


def resolve_device(name: str = "cpu") -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present) → a torch device string."""
    import torch

    name = (name or "cpu").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgepruneError("CUDA was requested but no CUDA GPU is available here", "use --torch-device cpu")
        return name
    raise EdgepruneError(f"unknown device '{name}'", "use --torch-device cpu, cuda or auto")


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), else the architecture. Defined in the profiling
    worker, which runs on remote devices without edgeprune installed and reports their CPU the same way."""
    from edgeprune.profiling.worker import cpu_name as read

    return read()
