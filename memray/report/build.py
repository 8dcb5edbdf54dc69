"""Assemble the report: load the run, render every section (a failing one becomes a note), write report.html."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from memray.io import schema
from memray.io.storage import join, open_output
from memray.report.attribution import fingerprint_section
from memray.report.context import Context, make_context
from memray.report.copies import copies_section
from memray.report.curves import curves_section, distances_section, heatmap_section
from memray.report.leaks import leaks_section
from memray.report.load import load_run
from memray.report.markup import esc, note, page
from memray.report.probes import probes_section
from memray.report.provenance import config_section, errors_section
from memray.report.verdicts import cells_section, verdict_section

log = logging.getLogger(__name__)

SECTIONS: tuple[tuple[str, str, Callable[[Context], tuple[str, str, str]]], ...] = (
    ("verdict", "Verdict", verdict_section),
    ("curves", "C_T per layer", curves_section),
    ("heatmap", "C_T heatmap", heatmap_section),
    ("copies", "Likeliest copies", copies_section),
    ("leaks", "Replication and leaked training images", leaks_section),
    ("distances", "Nearest-training distances", distances_section),
    ("cells", "Cells", cells_section),
    ("fingerprint", "Fingerprint attribution", fingerprint_section),
    ("probes", "Memorization probes", probes_section),
    ("errors", "Errors and skipped rows", errors_section),
    ("config", "Configuration", config_section),
)
SECTION_IDS: tuple[str, ...] = tuple(s[0] for s in SECTIONS)
DEFAULT_MAX_SETS = 8


def _render(sid: str, title: str, fn: Callable[[Context], tuple[str, str, str]], ctx: Context) -> tuple[str, str, str]:
    """One section; an unexpected failure becomes a note in the section (the rest of the report still renders)."""
    try:
        return fn(ctx)
    except Exception as exc:  # a report with one broken section beats no report; logged loudly
        log.exception("report: section %s failed", sid)
        return sid, title, note(f"This section could not be drawn: {type(exc).__name__}: {exc}", True)


def render_report(
    run_dir: str,
    storage_options: dict[str, Any] | None = None,
    max_sets: int = DEFAULT_MAX_SETS,
    copies_per_set: int = 8,
) -> str:
    """The report of ``run_dir`` as one HTML document (string)."""
    t0 = time.perf_counter()
    run = load_run(run_dir, storage_options)
    ctx = make_context(run, max_sets, copies_per_set, storage_options)
    sections = [_render(sid, title, fn, ctx) for sid, title, fn in SECTIONS]
    model = ((run.run.get("job_config") or {}).get("embed") or {}).get("model")
    made = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (
        f"<code>{esc(run.url)}</code> · {len(ctx.sets)} generated set(s)"
        + (f" · encoder {esc(model)}" if model else "")
        + f" · memray {esc(run.run.get('memray_version', '?'))} · report built {esc(made)}"
    )
    doc = page("memray report", subtitle, sections)
    log.info(
        "report: %d sections, %d images unavailable, %.1f s", len(sections), ctx.thumbs.failed, time.perf_counter() - t0
    )
    return doc


def build_report(
    run_dir: str,
    storage_options: dict[str, Any] | None = None,
    out_url: str | None = None,
    max_sets: int = DEFAULT_MAX_SETS,
    copies_per_set: int = 8,
) -> str:
    """Write the self-contained report of ``run_dir`` to ``out_url`` (default ``<run_dir>/report.html``).

    Args:
        run_dir: the run folder, local path or URL (read with ``storage_options``).
        out_url: where to write; local path or URL (same ``storage_options``).
        max_sets: generated sets with a copy gallery (the most alarming first).
        copies_per_set: generated samples shown per gallery, each with its top-k training neighbours.

    Returns:
        The URL written.
    """
    if max_sets < 1 or copies_per_set < 1:
        raise ValueError(f"max_sets and copies_per_set must be >= 1, got {max_sets} and {copies_per_set}")
    doc = render_report(run_dir, storage_options, max_sets, copies_per_set)
    url = out_url or join(str(run_dir), schema.REPORT_FILE)
    with open_output(url, storage_options) as fh:
        fh.write(doc.encode("utf-8"))
    return url
