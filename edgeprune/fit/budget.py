"""A device budget for ``edgeprune fit``: which measured figures must stay under which limits.

Every limit is judged on a figure ``edgeprune profile`` measures, the same way a device profile's budget fields are:

=============  =========================================  ====================================
key            figure                                     device-profile field it can come from
=============  =========================================  ====================================
decode_ms      decoders: mean decode ms per token         ``decode_ms_per_token_budget``
ttft_ms        decoders: p90 time to first token (ms)     ``latency_p90_ms_budget``
latency_ms     encoders: p90 ms for one sentence          ``latency_p90_ms_budget``
memory_mb      peak resident memory (MiB)                 ``memory_budget_mb``
size_mb        model files on disk (MiB)                  –
=============  =========================================  ====================================

Limits given on the command line replace the profile's. A limit may also be relative (``relative`` lists its key, or
``--max-decode-ms 0.8x`` on the command line): that multiple of the dense int4 model's figure, measured in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from edgeprune.errors import EdgepruneError

#: key → (what it judges, unit, the CLI flag that sets it)
BUDGET_KEYS: dict[str, tuple[str, str, str]] = {
    "decode_ms": ("decode", "ms/token", "--max-decode-ms"),
    "ttft_ms": ("time to first token (p90)", "ms", "--max-ttft-ms"),
    "latency_ms": ("latency per sentence (p90)", "ms", "--max-latency-ms"),
    "memory_mb": ("peak memory", "MiB", "--max-memory-mb"),
    "size_mb": ("size on disk", "MiB", "--max-size-mb"),
}
DECODER_ONLY, ENCODER_ONLY = ("decode_ms", "ttft_ms"), ("latency_ms",)


@dataclass(frozen=True)
class Budget:
    """Upper limits on measured figures; ``None`` = no limit on that figure."""

    decode_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    memory_mb: float | None = None
    size_mb: float | None = None
    relative: tuple[str, ...] = ()  # keys whose limit is a multiple of the reference model's measured figure

    def __post_init__(self):
        for key in self.relative:
            if key not in BUDGET_KEYS:
                raise EdgepruneError(f"relative budget key '{key}' is unknown", f"use one of: {', '.join(BUDGET_KEYS)}")
            if getattr(self, key) is None:
                raise EdgepruneError(f"budget {key} is relative but has no limit", f"set {key} too, e.g. {key} = 0.8")
        for key, value in self.limits().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise EdgepruneError(f"budget {key} = {value!r} is not a number", f"pass e.g. {BUDGET_KEYS[key][2]} 10")
            if not value > 0:
                raise EdgepruneError(f"budget {key} = {value} must be positive", f"pass a limit above 0 to {BUDGET_KEYS[key][2]}, or leave it out")

    def limits(self) -> dict[str, float]:
        """The keys that have a limit, with it (a relative one as its multiple)."""
        return {k: getattr(self, k) for k in BUDGET_KEYS if getattr(self, k) is not None}

    def absolute(self, reference: Mapping[str, float | None], name: str) -> "Budget":
        """The relative limits turned into figures: each a multiple of ``reference``'s measured figure (``name`` says
        which model that was, for the error when it has none)."""
        values = self.limits()
        for key in self.relative:
            if reference.get(key) is None:
                raise EdgepruneError(f"budget {key} is relative to {name}, which has no {BUDGET_KEYS[key][0]} figure",
                                     f"give {BUDGET_KEYS[key][2]} in {BUDGET_KEYS[key][1]}")
            values[key] = values[key] * reference[key]
        return Budget(**values)

    def check_model(self, is_decoder: bool) -> None:
        """A decoder budget on an encoder (or the reverse) would be silently ignored: say so instead."""
        wrong = [k for k in self.limits() if k in (ENCODER_ONLY if is_decoder else DECODER_ONLY)]
        if wrong:
            kind, other = ("a decoder", "--max-decode-ms / --max-ttft-ms") if is_decoder else ("an encoder", "--max-latency-ms")
            raise EdgepruneError(f"budget {', '.join(wrong)} does not apply to {kind}", f"use {other}")
        if not self.limits():
            raise EdgepruneError("no budget given", "pass e.g. --max-decode-ms 8 or --max-memory-mb 300, or use a device profile "
                                 "with budget fields (decode_ms_per_token_budget, latency_p90_ms_budget, memory_budget_mb)")

    def misses(self, figures: Mapping[str, float | None]) -> dict[str, float]:
        """Each limit ``figures`` exceed, as measured / limit (> 1). A figure that is missing counts as a miss (inf)."""
        out = {}
        for key, limit in self.limits().items():
            value = figures.get(key)
            if value is None:
                out[key] = float("inf")
            elif value > limit:
                out[key] = value / limit
        return out

    def describe(self) -> str:
        return ", ".join(f"{BUDGET_KEYS[k][0]} ≤ {v:g}× dense int4" if k in self.relative else
                         f"{BUDGET_KEYS[k][0]} ≤ {v:.4g} {BUDGET_KEYS[k][1]}" for k, v in self.limits().items())


def parse_budget(values: Mapping[str, object]) -> Budget:
    """A budget from a mapping (a recipe's ``budget`` table, or the CLI's flags); unknown keys are a one-line error."""
    unknown = sorted(set(values) - set(BUDGET_KEYS) - {"relative"})
    if unknown:
        raise EdgepruneError(f"unknown budget key '{unknown[0]}'", f"use one of: {', '.join(BUDGET_KEYS)}")
    return Budget(**{k: tuple(v) if k == "relative" else v for k, v in values.items() if v is not None})


def parse_limit(text: str | None, flag: str) -> tuple[float | None, bool]:
    """A command-line limit: a number, or a multiple of the dense int4 model's figure such as ``0.8x``."""
    if text is None:
        return None, False
    relative = text.strip().lower().endswith("x")
    try:
        value = float(text.strip()[:-1] if relative else text)
    except ValueError:
        raise EdgepruneError(f"{flag} '{text}' is not a number", f"pass e.g. {flag} 8, or {flag} 0.8x for 0.8× the dense int4 model") from None
    return value, relative


def device_budget(device, is_decoder: bool) -> dict[str, float]:
    """The budget fields a device profile declares, under fit's keys."""
    out = {"memory_mb": device.memory_budget_mb}
    if is_decoder:
        out |= {"decode_ms": device.decode_ms_per_token_budget, "ttft_ms": device.latency_p90_ms_budget}
    else:
        out["latency_ms"] = device.latency_p90_ms_budget
    return {k: v for k, v in out.items() if v is not None}


def resolve_budget(given: Mapping[str, object], device, is_decoder: bool) -> Budget:
    """The profile's budget, with every limit given explicitly replacing the profile's; checked for the model's kind."""
    explicit = parse_budget(given)
    budget = Budget(**(device_budget(device, is_decoder) | explicit.limits()), relative=explicit.relative)
    budget.check_model(is_decoder)
    return budget
