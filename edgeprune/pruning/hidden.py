"""Where the calibration hidden states live: in memory while they fit a budget, else in a memory-mapped file.

The sequential pipeline holds two buffers of hidden states at a time (a block's inputs and its outputs), each
``samples × seqlen × hidden`` values: 8.6 GB in fp32 for an 8B model at 128 × 2048 tokens. Above the budget they are
written to a temporary file on the output's disk and mapped, so the kernel pages them in and out instead of the
process running out of memory. The file is unlinked as soon as it is mapped: nothing is left behind, even after a
crash, and the space is freed when the buffer is.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import EdgepruneError

def parse_hidden_memory(value: str) -> int | None:
    """``auto`` → None (decided at the start of a run); a number of GiB → bytes."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = -1.0
    if not math.isfinite(gib) or gib < 0:
        raise EdgepruneError(f"--hidden-memory '{value}' is not a size", "pass auto or a number of GiB such as 2 (0 always spills)")
    return int(gib * 2**30)


@dataclass(frozen=True)
class HiddenPolicy:
    """``budget``: bytes the two live buffers may take in memory together; ``folder``: where a spill file goes;
    ``dtype``: what the states are stored in (the model's dtype, e.g. bf16 for a bf16 checkpoint; None: as computed).
    Blocks still compute in their own dtype (fp32): a stored batch is cast up as it is read (:func:`as_block_input`)."""

    budget: int
    folder: Path
    dtype: torch.dtype | None = None

    @classmethod
    def auto(cls, folder: Path, budget: int | None = None, dtype: torch.dtype | None = None) -> "HiddenPolicy":
        if budget is None:
            import psutil

            budget = psutil.virtual_memory().available // 4
        return cls(budget, Path(folder), dtype)

    def spills(self, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
        return 2 * math.prod(shape) * _itemsize(dtype) > self.budget

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """An uninitialised buffer: on ``device`` while within the budget (or not on the CPU), else file-backed."""
        if torch.device(device).type != "cpu" or not self.spills(shape, dtype):
            return torch.empty(shape, dtype=dtype, device=device)
        return mapped_tensor(shape, dtype, self.folder)


def policy_for(source: Path | None, folder: Path, budget: int | None = None) -> HiddenPolicy:
    """The policy of a run on the model stored at ``source``: states in its dtype (:func:`hidden_dtype`), spilled to
    ``folder`` beyond ``budget`` bytes (None: a quarter of the available memory)."""
    from edgeprune.models.streaming import model_dtype

    return HiddenPolicy.auto(folder, budget, hidden_dtype(model_dtype(source)))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def mapped_tensor(shape: tuple[int, ...], dtype: torch.dtype, folder: Path) -> torch.Tensor:
    """A tensor whose memory is a shared mapping of an unlinked temporary file in ``folder``.

    The file's blocks are reserved up front, so a full disk fails here with a clear error rather than with SIGBUS
    when a page is first written."""
    nbytes = max(1, math.prod(shape) * _itemsize(dtype))
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder, prefix=".edgeprune-hidden-")
    try:
        os.unlink(path)  # the mapping keeps the data; the name goes now, so nothing is ever left behind
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: size it sparse
                os.ftruncate(fd, nbytes)
            else:
                raise EdgepruneError(f"no room for {nbytes / 2**30:.1f} GiB of calibration hidden states in {folder}: "
                                     f"{exc.strerror or exc}", "free disk space there, or pass a larger --hidden-memory") from None
        buffer = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return torch.frombuffer(buffer, dtype=dtype, count=math.prod(shape)).view(shape)


def hidden_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """What the hidden states of a model stored in ``model_dtype`` are kept in: its own dtype, except that fp16 models
    keep them in bf16 (same size; fp16's range is too narrow for some residual streams, where inf would poison the
    statistics silently)."""
    return torch.bfloat16 if model_dtype in (torch.float16, torch.bfloat16) else torch.float32


def as_block_input(x: torch.Tensor, block: torch.nn.Module) -> torch.Tensor:
    """Stored hidden states (perhaps bf16) in the dtype ``block`` computes in (its first floating parameter's)."""
    dtype = next((p.dtype for p in block.parameters() if p.is_floating_point()), x.dtype)
    return x if x.dtype == dtype else x.to(dtype)


def fill(batches, total: int, policy: HiddenPolicy | None) -> torch.Tensor:
    """Concatenate ``batches`` (tensors along dim 0, ``total`` rows in all) into one buffer the policy places."""
    out, start = None, 0
    for chunk in batches:
        if out is None:
            shape = (total, *chunk.shape[1:])
            dtype = (policy.dtype or chunk.dtype) if policy is not None else chunk.dtype
            out = policy.allocate(shape, dtype, chunk.device) if policy is not None else torch.empty(shape, dtype=dtype, device=chunk.device)
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    if out is None or start != total:
        raise ValueError(f"expected {total} rows of hidden states, got {start}")
    return out
