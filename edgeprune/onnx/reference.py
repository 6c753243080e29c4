"""The PyTorch side of a quantised graph's checks (its pruned zeros, and how far it is from the model it came from).

:class:`WholeReference` holds the model in memory. :class:`StreamedReference` is for a decoder too large to hold next to
the graph work (above the large-model threshold, in a safetensors folder): its linears are read from the checkpoint one
at a time for the zero checks, and its logits come from one teacher-forced pass, block by block, over the prompt and
the tokens the quantised graph generated. Where the two are compared, a greedy PyTorch decode would have followed the
graph's tokens exactly as long as PyTorch's argmax after each prefix is the graph's next token, so the identical-prefix
figure means the same in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from edgeprune.onnx.session import OrtDecoder, session
from edgeprune.onnx.verify import PROMPT, _diff, verify_decoder, verify_encoder


class WholeReference:
    """The model in memory (fp32)."""

    kind = "whole"

    def __init__(self, loaded):
        self.loaded = loaded
        self.is_decoder = loaded.is_decoder

    def linears(self) -> Mapping[str, torch.nn.Linear]:
        return self.loaded.adapter.prunable_linears(self.loaded.model)

    def quality(self, graph: Path, new_tokens: int, atol: float, pooling: bool) -> dict:
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        if not self.is_decoder:
            got = verify_encoder(model, tokenizer, graph, atol, pooling)
            return {"max_abs_diff": got.max_abs_diff, "embedding_cosine_min": got.embedding_cosine_min}
        got = verify_decoder(model, tokenizer, graph, new_tokens, atol)
        agree = next((i for i, (a, b) in enumerate(zip(got.tokens_torch, got.tokens_onnx)) if a != b), len(got.tokens_torch))
        return {"max_abs_diff": got.max_abs_diff, "greedy_tokens_identical_prefix": agree, "new_tokens": len(got.tokens_torch),
                "tokens_onnx": got.tokens_onnx}


class _CheckpointLinears(Mapping):
    """Linear name → an object with its ``weight``, read from the checkpoint when asked for (one at a time)."""

    def __init__(self, names: list[str], stream):
        self.names, self.stream = names, stream

    def __getitem__(self, name: str):
        key = self.stream.checkpoint.key(name + ".weight", self.stream.prefix)
        if key is None:
            raise KeyError(name)
        return SimpleNamespace(weight=self.stream.checkpoint.read([key])[key])

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class StreamedReference:
    """A decoder read block by block from its safetensors (a meta-device model and its
    :class:`~edgeprune.models.streaming.StreamedModel` without an output folder): fp32 arithmetic, one block in memory."""

    kind = "streamed"

    def __init__(self, loaded, stream):
        self.loaded, self.stream = loaded, stream
        self.is_decoder = loaded.is_decoder

    def linears(self) -> Mapping:
        return _CheckpointLinears(list(self.loaded.adapter.prunable_linears(self.loaded.model)), self.stream)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, seq, vocab] for ``ids`` in one teacher-forced pass: embedding, each block, final norm, head."""
        model, adapter, stream = self.loaded.model, self.loaded.adapter, self.stream
        with stream.embedding():
            hidden, context = adapter.embed(model, ids)
        for i, block in enumerate(adapter.blocks(model)):
            with stream.block(i, block):
                hidden = adapter.run_block(block, hidden, context)
        with stream.embedding():  # the final norm is part of the stem
            hidden = model.get_decoder().norm(hidden)
        return torch.nn.functional.linear(hidden, *stream.read_head())

    def quality(self, graph: Path, new_tokens: int, atol: float, pooling: bool) -> dict:
        ids = self.loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
        decoder = OrtDecoder(session(graph, prepack=False))
        prefill, _, _ = decoder.step(ids.numpy(), np.ones(ids.shape, np.int64), decoder.empty_past(1))
        tokens = decoder.greedy(ids.numpy(), new_tokens)
        del decoder  # the graph's session goes before the PyTorch pass
        full = torch.cat([ids, torch.tensor([tokens[:-1]], dtype=ids.dtype)], dim=1)
        logits = self.logits(full)
        chosen = logits[0, ids.shape[1] - 1:].argmax(-1).tolist()  # PyTorch's next token after each prefix
        agree = next((i for i, (a, b) in enumerate(zip(chosen, tokens)) if a != b), len(tokens))
        return {"max_abs_diff": {"prefill.logits": _diff(logits[:, :ids.shape[1]], prefill)}, "greedy_tokens_identical_prefix": agree,
                "new_tokens": len(tokens), "tokens_onnx": tokens}
