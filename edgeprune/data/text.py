"""Calibration and evaluation text → token windows: the embedded pydoc corpus, the named offline domains, user files,
HF datasets, and for calibration the model's own samples (``self``), alone or mixed (``pydoc:0.5+self:0.5``).

The default corpus is the English prose of ``pydoc_data.topics`` (shipped with
every Python). Topics are split deterministically into a calibration part and a
held-out evaluation part that never share a topic (see :mod:`edgeprune.data.domains`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeprune.data.domains import DOMAINS, SELF, domain_text, pydoc_text
from edgeprune.data.sources import EMBEDDED, HF_DATASETS, allot, parse_sources
from edgeprune.errors import EdgepruneError
from edgeprune.progress import status

if TYPE_CHECKING:  # torch is imported where tensors are made: the checks here run before it loads
    import torch

Split = Literal["calib", "eval"]


@dataclass(frozen=True)
class CalibConfig:
    """Where calibration text comes from and how much of it to use. ``source`` is one source (pydoc, self, licences,
    docstrings, wikitext2, c4 or a file) or a mix with shares, ``pydoc:0.5+self:0.25+notes.txt:0.25``
    (:mod:`edgeprune.data.sources`)."""

    source: str = EMBEDDED
    samples: int = 32
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1 or self.seqlen < 2:
            raise EdgepruneError(f"calibration needs samples >= 1 and seqlen >= 2 (got {self.samples} and {self.seqlen})",
                                 "e.g. --samples 32 --seqlen 512")
        allot(parse_sources(self.source), self.samples, self.source)  # a bad mix fails here, before anything loads

    @property
    def tokens(self) -> int:
        return self.samples * self.seqlen


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
    """Text for calibration or evaluation: 'pydoc' (its ``split``), 'licences' or 'docstrings' (the same text for both
    splits: :mod:`edgeprune.data.domains`), 'wikitext2', 'c4', or a path: a .jsonl file is one JSON object with "text"
    per line, any other file (.txt, .md, a licence file without suffix) is read as plain UTF-8 text. ('self' needs the
    model: :func:`calibration_batch`, :func:`edgeprune.data.generated.generator_text`.)"""
    if source == EMBEDDED:
        return pydoc_text(split)
    if source in HF_DATASETS:
        return _hf_text(source, split)
    named = domain_text(source)
    if named is not None:
        return named
    if source == SELF:
        raise EdgepruneError("the 'self' text is sampled from a model, and none was given here",
                             "use it through edgeprune prune/eval (--calib self, --text self), or pass a text file")
    path = Path(source).expanduser()
    if not path.is_file():
        names = ", ".join(dict.fromkeys([*DOMAINS, *HF_DATASETS]))
        raise EdgepruneError(f"text source '{source}' not found", f"pass a text or .jsonl file, or one of: {names}")
    text = _file_text(path)
    if not text.strip():
        raise EdgepruneError(f"text file '{source}' is empty", "write text into it, or pass another file")
    return text


def check_text(source: str, split: Split, min_tokens: int, what: str = "--calib") -> None:
    """Before any model loads: the text exists, reads, and is not certainly too short. A token covers at least one byte
    of UTF-8 text, so fewer bytes than ``min_tokens`` can never give enough tokens. (Datasets are checked when read;
    ``self`` needs only the model.) A calibration mix is checked part by part, each for its share of the tokens."""
    parts = parse_sources(source) if what == "--calib" else []
    if len(parts) > 1:
        for part in parts:
            check_text(part.source, split, max(1, round(part.share * min_tokens)), "--calib part")
        return
    if source in HF_DATASETS or source == SELF:
        return
    size = len(load_text(source, split).encode("utf-8"))
    if size < min_tokens:
        raise EdgepruneError(f"{what} text '{source}' has {size:,} bytes, too short for the {min_tokens:,} tokens asked for",
                             f"pass a longer {what.split()[0]} file (at least {min_tokens:,} tokens of text)")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    status(f"tokenising {len(text):,} characters of text")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
    return ids


def _text_windows(tokenizer, source: str, samples: int, seqlen: int, seed: int, text: str | None = None) -> torch.Tensor:
    """``[samples, seqlen]`` non-overlapping windows of a calibration text, chosen by seed."""
    import torch

    ids = tokenize(tokenizer, load_text(source, "calib") if text is None else text)
    windows = len(ids) // seqlen
    if windows < samples:
        fix = (f"lower --samples to {windows} or fewer, or pass a longer --calib file" if windows else
               f"pass a longer --calib file (at least {samples * seqlen:,} tokens), or lower --seqlen below {len(ids)}")
        raise EdgepruneError(
            f"calibration text '{source}' has {len(ids):,} tokens, too short for {samples} samples x {seqlen} tokens", fix,
        )
    gen = torch.Generator().manual_seed(seed)
    offset = int(torch.randint(0, len(ids) - windows * seqlen + 1, (1,), generator=gen))
    chosen = torch.randperm(windows, generator=gen)[:samples].sort().values
    starts = offset + chosen * seqlen
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def _self_windows(tokenizer, model, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``self`` calibration: the model's own samples; an encoder's come from the bundled decoder, as text (see
    :mod:`edgeprune.data.generated`), and are windowed like any text."""
    from edgeprune.data.generated import ENCODER_GENERATOR, generator_text, self_generated_ids

    if model is None:
        raise EdgepruneError("calibration source 'self' samples from the model, and none was given",
                             "pass the model: calibration_batch(tokenizer, config, model)")
    can_generate = getattr(model, "can_generate", None)
    if can_generate is not None and can_generate():
        return self_generated_ids(model, tokenizer, samples, seqlen, seed, purpose="calib")
    # about 1.3 encoder word pieces per decoder token on English prose: a quarter more sequences leaves room
    text = generator_text(ENCODER_GENERATOR, samples + samples // 4 + 1, seqlen, seed, purpose="calib",
                          device=str(next(model.parameters()).device))
    return _text_windows(tokenizer, SELF, samples, seqlen, seed, text=text)


def calibration_batch(tokenizer, config: CalibConfig, model=None) -> torch.Tensor:
    """``[samples, seqlen]`` token ids: non-overlapping windows of the calibration text, chosen by seed; ``self`` rows
    are sampled from ``model``; a mix takes each source's share of the rows and shuffles them (seeded) together."""
    import torch

    parts = parse_sources(config.source)
    counts = allot(parts, config.samples, config.source)
    rows = [_self_windows(tokenizer, model, count, config.seqlen, config.seed) if part.source == SELF else
            _text_windows(tokenizer, part.source, count, config.seqlen, config.seed) for part, count in zip(parts, counts)]
    if len(rows) == 1:
        return rows[0]
    batch = torch.cat(rows)
    return batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(config.seed))]


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
