"""What an evaluation measured, as a dataclass with a schema version (PyTorch and ONNX Runtime evaluations both
return it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from edgeprune.metadata import EVAL_SCHEMA_VERSION as SCHEMA_VERSION


@dataclass
class EvalResult:
    model: str
    task: str
    text: str
    schema_version: int = SCHEMA_VERSION
    perplexity: float | None = None
    tokens: int | None = None
    embedding_cosine: float | None = None
    sentences: int | None = None
    reference: str | None = None
    attention_error: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)
