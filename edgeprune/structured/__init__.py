"""Structured pruning: remove whole attention heads and MLP channels so the dense matrices really shrink.
This file only re-exports the public names: workflow.py holds StructuredConfig and structured() (score → search →
reform → remove → folder), scores.py the unit scores, search.py the searches, reform.py the re-fit, layout.py the
smaller blocks and their folder, latency.py the measured latency model.

    edgeprune structured smollm2-135m --target-params 0.75 --out out/smol-structured
"""

from edgeprune.structured.scores import SCORES
from edgeprune.structured.search import SEARCHES
from edgeprune.structured.workflow import (StructuredConfig, StructuredReport, choose_arch, masked, save_structured,
                                           spaces_and_cost, structured)

__all__ = ["SCORES", "SEARCHES", "StructuredConfig", "StructuredReport", "choose_arch", "masked", "save_structured",
           "spaces_and_cost", "structured"]
