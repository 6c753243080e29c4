"""``edgeprune fit``: the best model that meets a device's latency, memory and size budget (see :mod:`.workflow`)."""

from edgeprune.fit.budget import BUDGET_KEYS, Budget, parse_budget, resolve_budget
from edgeprune.fit.candidates import Candidate, generate_candidates
from edgeprune.fit.workflow import FitConfig, FitReport, fit

__all__ = ["BUDGET_KEYS", "Budget", "Candidate", "FitConfig", "FitReport", "fit", "generate_candidates", "parse_budget", "resolve_budget"]
