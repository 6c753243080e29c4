"""User-facing errors.

Anything a user can cause (a bad path, a bad spec, missing hardware) raises
:class:`EdgepruneError`; the CLI prints its one-line message and exits with 2.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """A problem with the user's input, with a message that names the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. {fix}" if fix else problem)
