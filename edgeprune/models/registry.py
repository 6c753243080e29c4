"""The registry of architecture adapters, and lookup by Hugging Face ``model_type``."""

from __future__ import annotations

from edgeprune.errors import EdgepruneError
from edgeprune.registry import Registry

ADAPTERS: Registry = Registry("architecture")


def supported_model_types() -> list[str]:
    return sorted(t for cls in ADAPTERS._items.values() for t in cls.model_types)


def adapter_for_model_type(model_type: str):
    for cls in ADAPTERS._items.values():
        if model_type in cls.model_types:
            return cls()
    raise EdgepruneError(
        f"unsupported architecture '{model_type}'",
        f"edgeprune supports: {', '.join(supported_model_types())}",
    )
