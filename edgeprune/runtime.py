"""Where things run, in one place: device selection (the default is always the CPU), the host CPU's name, and giving
freed memory back to the OS."""

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


def give_back_memory() -> None:
    """Hand the heap's free memory back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Block-by-block work frees as much as it allocates, but glibc keeps freed heap pages of mid-sized arrays (under its
    mmap threshold, which rises to 32 MB as large arrays are freed) for reuse, and fragmentation keeps them from being
    reused: a streamed GPTQ of a 1B-shaped model grew by ~0.15 GB a block this way (measured: a trim after two blocks
    gave back 1 GB, with no live tensor left). Called between blocks, it costs milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim():
    global _TRIM
    if _TRIM is False:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator is left alone
            _TRIM = None
    return _TRIM


_TRIM = False  # not looked up yet
