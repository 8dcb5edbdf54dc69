"""The self-contained HTML report of a run folder (``report.html``): verdicts, curves, copies, fingerprints.

:func:`build_report` reads a run folder (local or ``s3://``) and writes one HTML file with inline CSS and inline
PNG figures and thumbnails (no external requests, no JavaScript). matplotlib is imported only while building.
"""

from __future__ import annotations

from memray.report.build import SECTION_IDS, build_report, render_report

__all__ = ["SECTION_IDS", "build_report", "render_report"]
