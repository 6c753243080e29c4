"""The calibration source spec: one source, or several mixed with shares.

    --calib pydoc                           # one source
    --calib pydoc+self+notes.txt            # three sources, a third of the samples each
    --calib pydoc:0.5+self:0.25+notes.txt:0.25

A source is ``pydoc``, ``self`` (the model's own samples, see :mod:`edgeprune.data.generated`), ``licences`` or
``docstrings`` (the evaluation domains of :mod:`edgeprune.data.domains`, for leave-one-domain-out experiments),
``wikitext2``, ``c4`` or a text/.jsonl file. Shares are fractions of ``--samples``; sources written without one split what the others leave
equally, and all shares must add up to 1. Each source gives whole sequences of ``--seqlen`` tokens: the counts are
the shares of ``--samples`` rounded by largest remainder, and every source must get at least one. Pure string work,
so a bad spec fails before any model loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgeprune.data.domains import DOMAINS
from edgeprune.errors import EdgepruneError

EMBEDDED = "pydoc"
HF_DATASETS = ("wikitext2", "c4")
NAMED = (*DOMAINS, *HF_DATASETS)  # pydoc, licences, docstrings, self: the evaluation domains can calibrate too
_SHARE = re.compile(r"^(.*):([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class SourcePart:
    source: str
    share: float


def _is_file(text: str) -> bool:
    return Path(text).expanduser().is_file()


def parse_sources(spec: str) -> list[SourcePart]:
    """The parts of a ``--calib`` spec with their shares (adding up to 1). Names are checked here; files are checked
    for existence here and for content by :func:`edgeprune.data.check_text`."""
    if not spec or not spec.strip():
        raise EdgepruneError("--calib is empty", f"pass one of {', '.join(NAMED)} or a text file, or a mix like pydoc+self")
    if _is_file(spec) or "+" not in spec and not _SHARE.match(spec):
        return [SourcePart(spec, 1.0)]  # one source: load_text says what is wrong with it, as it always has
    items = []
    for raw in spec.split("+"):
        raw = raw.strip()
        match = _SHARE.match(raw)
        name, share = (match.group(1), float(match.group(2))) if match and not _is_file(raw) else (raw, None)
        if not name:
            raise EdgepruneError(f"--calib '{spec}' has an empty source", "write sources joined by '+', e.g. pydoc:0.5+self:0.5")
        items.append((name, share))
    for name, share in items:
        if name not in NAMED and not _is_file(name):
            raise EdgepruneError(f"unknown calibration source '{name}' (neither {', '.join(NAMED)} nor an existing file)",
                                 "fix the name, or pass the path of a text or .jsonl file")
        if share is not None and not 0 < share <= 1:
            raise EdgepruneError(f"calibration share {share:g} of '{name}' is not in (0, 1]", "use shares like pydoc:0.5+self:0.5")
    names = [n for n, _ in items]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EdgepruneError(f"calibration source '{dup}' appears twice in --calib '{spec}'", "name each source once, with its total share")
    given = sum(s for _, s in items if s is not None)
    free = [n for n, s in items if s is None]
    if free:
        if given >= 1 - 1e-9:
            raise EdgepruneError(f"the shares in --calib '{spec}' already add up to {given:g}, leaving nothing for {', '.join(free)}",
                                 "lower the shares, or give every source one that adds up to 1")
        rest = (1 - given) / len(free)
        items = [(n, s if s is not None else rest) for n, s in items]
    elif not math.isclose(given, 1, abs_tol=1e-6):
        raise EdgepruneError(f"the shares in --calib '{spec}' add up to {given:g}, not 1",
                             "make them add up to 1, e.g. pydoc:0.5+self:0.25+notes.txt:0.25")
    return [SourcePart(n, s) for n, s in items]


def allot(parts: list[SourcePart], samples: int, spec: str = "") -> list[int]:
    """Whole sequences per part: ``samples`` split by the shares, largest remainder first; each part gets at least one."""
    exact = [p.share * samples for p in parts]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(parts)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: samples - sum(counts)]:
        counts[i] += 1
    for part, count in zip(parts, counts):
        if count == 0:
            raise EdgepruneError(f"calibration source '{part.source}' gets none of the {samples} samples at share {part.share:g}"
                                 + (f" in '{spec}'" if spec else ""), "raise --samples or that source's share")
    return counts
