"""Verification: run the same inputs through PyTorch and ONNX Runtime and compare.

Decoders: prefill and one decode step through the merged graph (max |diff| per output),
then a greedy generation with the KV cache in both, which must give identical tokens.
Encoders: last_hidden_state, and with pooling the sentence embedding (cosine to PyTorch's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.onnx.session import OrtDecoder, session

PROMPT = "The quick brown fox jumps over the lazy dog because"
SENTENCES = [
    "The cat sat on the mat.",
    "A sentence encoder maps text to a vector; similar meanings give nearby vectors.",
    "Pruning removes weights, and exporting must keep every zero in place.",
]


@dataclass
class VerifyReport:
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # output name → max |torch − onnx|
    atol: float = 0.0
    tokens_torch: list[int] | None = None
    tokens_onnx: list[int] | None = None
    embedding_cosine_min: float | None = None
    seconds: float = 0.0

    @property
    def tokens_identical(self) -> bool | None:
        return None if self.tokens_torch is None else self.tokens_torch == self.tokens_onnx

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.max_abs_diff.items(), key=lambda kv: kv[1])

    def to_dict(self) -> dict:
        out = {"atol": self.atol, "max_abs_diff": self.max_abs_diff, "seconds": round(self.seconds, 2)}
        if self.tokens_torch is not None:
            out |= {"new_tokens": len(self.tokens_torch), "tokens_identical": self.tokens_identical,
                    "tokens_torch": self.tokens_torch, "tokens_onnx": self.tokens_onnx}
        if self.embedding_cosine_min is not None:
            out["embedding_cosine_min"] = self.embedding_cosine_min
        return out


def _diff(a, b) -> float:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else a
    return float(np.abs(a.astype(np.float64) - np.asarray(b, dtype=np.float64)).max()) if a.size else 0.0


@torch.no_grad()
def torch_greedy(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """The same greedy loop in PyTorch with its own KV cache (no EOS stop, no logits processors)."""
    out = model(input_ids=ids, use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt[0, 0]))
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return tokens


def _kv_pairs(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers ≥ 4.56 Cache objects
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [tuple(kv) for kv in cache]


@torch.no_grad()
def verify_decoder(model, tokenizer, onnx_path: Path, new_tokens: int, atol: float) -> VerifyReport:
    report = VerifyReport(atol=atol)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    decoder = OrtDecoder(session(onnx_path, prepack=False))  # beside the PyTorch model: no second copy of the weights

    # Prefill, then one decode step: every output of the merged graph against torch.
    ref = model(input_ids=ids, use_cache=True)
    mask = np.ones(ids.shape, np.int64)
    logits, past, outs = decoder.step(ids.numpy(), mask, decoder.empty_past(1))
    report.max_abs_diff["prefill.logits"] = _diff(ref.logits, logits)
    kv = _kv_pairs(ref.past_key_values)
    report.max_abs_diff["prefill.present"] = max(
        max(_diff(k, outs[f"present.{i}.key"]), _diff(v, outs[f"present.{i}.value"])) for i, (k, v) in enumerate(kv)
    )
    nxt = ref.logits[:, -1].argmax(-1, keepdim=True)
    ref2 = model(input_ids=nxt, past_key_values=ref.past_key_values, use_cache=True)
    logits2, _, _ = decoder.step(nxt.numpy(), np.ones((1, ids.shape[1] + 1), np.int64), past)
    report.max_abs_diff["decode.logits"] = _diff(ref2.logits, logits2)

    report.tokens_torch = torch_greedy(model, ids, new_tokens)
    report.tokens_onnx = decoder.greedy(ids.numpy(), new_tokens)
    return report


@torch.no_grad()
def verify_encoder(model, tokenizer, onnx_path: Path, atol: float, pooling: bool) -> VerifyReport:
    from edgeprune.evaluation.metrics import sentence_embeddings

    report = VerifyReport(atol=atol)
    sess = session(onnx_path, prepack=False)
    names = {i.name for i in sess.get_inputs()}
    enc = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    feeds = {k: v.numpy() for k, v in enc.items() if k in names}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    hidden = model(**enc).last_hidden_state
    keep = enc["attention_mask"].bool()  # padded positions are not part of the contract
    report.max_abs_diff["last_hidden_state"] = _diff(hidden[keep], outputs["last_hidden_state"][keep.numpy()])
    if pooling:
        ref = sentence_embeddings(model, tokenizer, SENTENCES)
        got = torch.from_numpy(outputs["sentence_embedding"])
        report.max_abs_diff["sentence_embedding"] = _diff(ref, got)
        report.embedding_cosine_min = float(torch.nn.functional.cosine_similarity(ref, got, dim=-1).min())
    return report
