"""Section ``probes``: C_T of the memorization probes (transformed training images) per layer, and the advice."""

from __future__ import annotations

import json
from typing import Any

from memray.io import schema
from memray.report import figures
from memray.report.context import Context
from memray.report.markup import Cell, esc, integer, note, num, table

Section = tuple[str, str, str]
NO_PROBES = "No probes in this run (add a probes: section to the job config, or run memray probe)."


def _summary_table(summary: dict[str, Any]) -> str:
    rows: list[list[Cell]] = []
    for name, p in (summary.get("probes") or {}).items():
        detected = ", ".join(str(x) for x in p.get("detected_layers") or []) or "none"
        params = json.dumps(p.get("params") or {}, sort_keys=True)
        rows.append([
            esc(name), esc(p.get("set")), (integer(p.get("n")), "num"), esc(detected),
            (f"{num(p.get('min_ct'))} (L{esc(p.get('min_ct_layer'))})", "num"), f"<code>{esc(params)}</code>",
        ])  # fmt: skip
    return table(["probe", "set", "n", "detected at layers", "min C_T (layer)", "parameters"], rows)


def _recommendation(summary: dict[str, Any]) -> str:
    rec = summary.get("recommendation") or {}
    low = ", ".join(str(x) for x in rec.get("low_level_layers") or []) or "–"
    sem = ", ".join(str(x) for x in rec.get("semantic_layers") or []) or "–"
    text = f'<p class="note"><b>Layers for low-level copies:</b> {esc(low)}; <b>semantic:</b> {esc(sem)}.</p>'
    return text + (f'<div class="banner">{esc(rec["text"])}</div>' if rec.get("text") else "")


def probes_section(ctx: Context) -> Section:
    """One curve per probe over the layers (with its CI band), the detection table and the recommendation."""
    probes, summary = ctx.run.table("probes"), ctx.run.probes_summary
    if probes is None and summary is None:
        return "probes", "Memorization probes", note(NO_PROBES, True)
    body = note(
        "Probes are transformed training images scored as if generated: exact copies should give C_T ≪ 0 at "
        "every layer; a transformation the layer is invariant to (e.g. a flip at a semantic layer) still does, "
        "one it is sensitive to does not. Where a probe is detected tells which layers see which kind of copy."
    )
    if probes is not None and not probes.empty:
        names = list(dict.fromkeys(probes[schema.PROBE].astype(str)))
        fig = figures.curves_figure(probes, schema.PROBE, figures.colours(names), title="probes")
        body += figures.img_tag(fig, "C_T per layer of each probe")
    else:
        body += note(ctx.run.why_absent("probes"), True)
    if summary is not None:
        if summary.get("alpha") is not None:
            body += note(f"Detected: one-sided p < α = {summary['alpha']:g} at the layer.")
        body += _summary_table(summary) + _recommendation(summary)
    else:
        body += note(f"{schema.PROBES_SUMMARY_FILE} is not in this run (no detection table).", True)
    return "probes", "Memorization probes", body
