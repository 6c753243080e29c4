"""Calibration and evaluation text: the embedded pydoc corpus, user files, and HF datasets.

The default corpus is the English prose of ``pydoc_data.topics`` (shipped with
every Python). Topics are split deterministically into a calibration part and a
held-out evaluation part that never share a topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeprune.errors import EdgepruneError
from edgeprune.progress import status

if TYPE_CHECKING:  # torch is imported where tensors are made: the checks here run before it loads
    import torch

Split = Literal["calib", "eval"]
EMBEDDED = "pydoc"
HF_DATASETS = ("wikitext2", "c4")
_EVAL_EVERY = 5  # every 5th topic (sorted by name) is held out for evaluation


@dataclass(frozen=True)
class CalibConfig:
    """Where calibration text comes from and how much of it to use."""

    source: str = EMBEDDED
    samples: int = 32
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1 or self.seqlen < 2:
            raise EdgepruneError(f"calibration needs samples >= 1 and seqlen >= 2 (got {self.samples} and {self.seqlen})",
                                 "e.g. --samples 32 --seqlen 512")

    @property
    def tokens(self) -> int:
        return self.samples * self.seqlen


def pydoc_text(split: Split) -> str:
    """The calibration or held-out part of the pydoc corpus.

    Topics are split by name (every 5th held out); topics repeat whole paragraphs of
    each other, so a held-out paragraph that also occurs in a calibration topic is
    dropped from the held-out part: the two never share a paragraph.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    parts: dict[bool, list[list[str]]] = {False: [], True: []}
    for i, key in enumerate(keys):
        paragraphs = [p.strip() for p in topics[key].strip().split("\n\n") if p.strip()]
        parts[i % _EVAL_EVERY == _EVAL_EVERY - 1].append(paragraphs)
    if split == "calib":
        return "\n\n".join("\n\n".join(t) for t in parts[False])
    seen = {p for topic in parts[False] for p in topic}
    held = []
    for topic in parts[True]:
        fresh = [p for p in topic if p not in seen]
        seen.update(fresh)
        if fresh:
            held.append("\n\n".join(fresh))
    return "\n\n".join(held)


def _file_text(path: Path) -> str:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgepruneError(f"{path} is not UTF-8 text", "pass a UTF-8 text file (or .jsonl)") from None
    if path.suffix != ".jsonl":
        return raw
    parts = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise EdgepruneError(f"{path}:{lineno} is not valid JSON", "write one JSON object per line") from None
        text = obj if isinstance(obj, str) else obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise EdgepruneError(f"{path}:{lineno} has no \"text\" field", 'write lines like {"text": "..."}')
        parts.append(text)
    return "\n\n".join(parts)


def _hf_text(name: str, split: Split) -> str:
    try:
        import datasets
    except ImportError:
        raise EdgepruneError(f"dataset '{name}' needs the 'datasets' package", "pip install datasets, or pass --calib FILE") from None
    try:
        if name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
            return "\n\n".join(ds["text"])
        files = {"calib": "en/c4-train.00000-of-01024.json.gz", "eval": "en/c4-validation.00000-of-00008.json.gz"}
        ds = datasets.load_dataset("allenai/c4", data_files={split: files[split]}, split=split)
        return "\n\n".join(ds["text"][:20000])
    except Exception as exc:  # datasets raises many types when offline
        raise EdgepruneError(
            f"dataset '{name}' is not available here ({type(exc).__name__})",
            "pass --calib FILE with a text or .jsonl file, or use the embedded 'pydoc' corpus",
        ) from None


def load_text(source: str = EMBEDDED, split: Split = "calib") -> str:
    """Text for calibration or evaluation: 'pydoc', 'wikitext2', 'c4', or a path: a .jsonl file is one JSON object
    with "text" per line, any other file (.txt, .md, a licence file without suffix) is read as plain UTF-8 text."""
    if source == EMBEDDED:
        return pydoc_text(split)
    if source in HF_DATASETS:
        return _hf_text(source, split)
    path = Path(source).expanduser()
    if not path.is_file():
        raise EdgepruneError(
            f"text source '{source}' not found", f"pass a text or .jsonl file, or one of: {EMBEDDED}, {', '.join(HF_DATASETS)}"
        )
    text = _file_text(path)
    if not text.strip():
        raise EdgepruneError(f"text file '{source}' is empty", "write text into it, or pass another file")
    return text


def check_text(source: str, split: Split, min_tokens: int, what: str = "--calib") -> None:
    """Before any model loads: the text exists, reads, and is not certainly too short. A token covers at least one byte
    of UTF-8 text, so fewer bytes than ``min_tokens`` can never give enough tokens. (Datasets are checked when read.)"""
    if source in HF_DATASETS:
        return
    size = len(load_text(source, split).encode("utf-8"))
    if size < min_tokens:
        raise EdgepruneError(f"{what} text '{source}' has {size:,} bytes, too short for the {min_tokens:,} tokens asked for",
                             f"pass a longer {what} file (at least {min_tokens:,} tokens of text)")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    status(f"tokenising {len(text):,} characters of text")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
    return ids


def calibration_batch(tokenizer, config: CalibConfig) -> torch.Tensor:
    """``[samples, seqlen]`` token ids: non-overlapping windows of the calibration text, chosen by seed."""
    import torch

    ids = tokenize(tokenizer, load_text(config.source, "calib"))
    windows = len(ids) // config.seqlen
    if windows < config.samples:
        fix = (f"lower --samples to {windows} or fewer, or pass a longer --calib file" if windows else
               f"pass a longer --calib file (at least {config.tokens:,} tokens), or lower --seqlen below {len(ids)}")
        raise EdgepruneError(
            f"calibration text '{config.source}' has {len(ids):,} tokens, too short for "
            f"{config.samples} samples x {config.seqlen} tokens", fix,
        )
    gen = torch.Generator().manual_seed(config.seed)
    offset = int(torch.randint(0, len(ids) - windows * config.seqlen + 1, (1,), generator=gen))
    chosen = torch.randperm(windows, generator=gen)[: config.samples].sort().values
    starts = offset + chosen * config.seqlen
    return torch.stack([ids[s : s + config.seqlen] for s in starts.tolist()])


def eval_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping ``seqlen`` windows of ``text`` for perplexity."""
    ids = tokenize(tokenizer, text)
    n = len(ids) // seqlen
    if n == 0:
        raise EdgepruneError(f"evaluation text has {len(ids):,} tokens, fewer than one window of --seqlen {seqlen}",
                             f"pass a longer --text (at least {seqlen} tokens), or lower --seqlen to {len(ids)} or less"
                             if len(ids) >= 2 else "pass a longer --text")
    if max_windows:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)
