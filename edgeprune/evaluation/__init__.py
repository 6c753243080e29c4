"""Quality of a (pruned) model: perplexity for decoders, embedding cosine for encoders,
and per-layer attention-approximation error against the dense model. This file only re-exports the public names:
metrics.py holds the measures, results.py EvalResult, workflow.py EvalConfig and evaluate()."""

from edgeprune.evaluation.metrics import attention_errors, perplexity, same_attention_shapes, sentence_embeddings, sentences
from edgeprune.evaluation.results import SCHEMA_VERSION, EvalResult
from edgeprune.evaluation.workflow import EvalConfig, evaluate

__all__ = ["SCHEMA_VERSION", "EvalConfig", "EvalResult", "attention_errors", "evaluate", "perplexity", "same_attention_shapes",
           "sentence_embeddings", "sentences"]
