"""Calibration and evaluation text: the embedded pydoc corpus, named offline domains, the model's own samples, user
files and HF datasets. This file only re-exports: text.py holds the corpus, CalibConfig and the token windows,
sources.py the ``--calib`` mix parser, domains.py the evaluation domains and their suite, generated.py the ``self`` text.
"""

from edgeprune.data.domains import DOMAINS, SELF, SUITE, split_texts
from edgeprune.data.sources import EMBEDDED, HF_DATASETS, SourcePart, allot, parse_sources
from edgeprune.data.text import (
    CalibConfig, Split, calibration_batch, check_text, eval_windows, load_text, pydoc_text, tokenize,
)

__all__ = ["DOMAINS", "EMBEDDED", "HF_DATASETS", "SELF", "SUITE", "CalibConfig", "SourcePart", "Split", "allot",
           "calibration_batch", "check_text", "eval_windows", "load_text", "parse_sources", "pydoc_text", "split_texts",
           "tokenize"]
