"""Architecture adapters and model loading: the only place that knows module paths."""

from __future__ import annotations

from edgeprune.models import bert, llama  # noqa: F401  (registers the adapters)
from edgeprune.models.base import Adapter, AttentionParts
from edgeprune.models.registry import ADAPTERS, adapter_for_model_type, supported_model_types


def get_adapter(model) -> Adapter:
    """The adapter for a loaded transformers model, or a one-line error listing what is supported."""
    return adapter_for_model_type(getattr(model.config, "model_type", type(model).__name__))


__all__ = ["ADAPTERS", "Adapter", "AttentionParts", "get_adapter", "adapter_for_model_type", "supported_model_types"]
