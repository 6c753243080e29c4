"""Rendering results, never measuring them. This file only re-exports the public names: profile.py renders a
profiling Report (report.json, report.md, report.html), run.py a recipe run's summary, tables.py and plots.py the
pieces both use.

    edgeprune.report.write_report(report, "runs/smol")
"""

from edgeprune.report.profile import to_html, to_markdown, write_report

__all__ = ["to_html", "to_markdown", "write_report"]
