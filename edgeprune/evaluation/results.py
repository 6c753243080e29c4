"""What an evaluation measured, as a dataclass with a schema version (PyTorch and ONNX Runtime evaluations both
return it). With several texts, ``domains`` holds one entry per text and the top-level figures summarise them:
``perplexity`` (= ``geomean_perplexity``) is the geometric mean over the texts, ``embedding_cosine`` the mean,
``tokens`` / ``sentences`` the totals; with one text those two keys are left out, as before."""

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
    domains: list[dict] | None = None  # several texts: {"text", "about", "perplexity", "tokens"} (or cosine, sentences) each
    geomean_perplexity: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("domains", "geomean_perplexity"):  # only with several texts: one text keeps the original shape
            if data[key] is None:
                del data[key]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
