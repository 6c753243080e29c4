"""What a long step is doing now, for whoever is watching: library code calls :func:`status` at the start of each
slow phase (loading a model, exporting, GPTQ, verifying) and, where it can count, with ``done``/``total``.
The CLI and the recipe runner install a reporter with :func:`reporting`; without one, :func:`status` does nothing.

    with reporting(lambda text, done, total: print(text, done, total)):
        edgeprune.export("smollm2-135m", "out/smol-onnx")
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

Reporter = Callable[[str, Optional[int], Optional[int]], None]

_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("edgeprune_reporter", default=None)


def status(text: str, done: int | None = None, total: int | None = None) -> None:
    """Tell the active reporter (if any) that ``text`` is under way, ``done`` of ``total`` units so far when countable."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(text, done, total)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send :func:`status` calls made inside the block to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


__all__ = ["Reporter", "reporting", "status"]
