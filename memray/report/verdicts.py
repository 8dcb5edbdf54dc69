"""Sections ``verdict`` (one line per generated set + how to read C_T) and ``cells`` (the per-cell evidence)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memray.io import schema
from memray.report.context import Context
from memray.report.markup import Cell, badge, cell_list, esc, integer, isnan, items, note, num, pval, table

Section = tuple[str, str, str]
STRONGEST_CELLS = 3  # per set, besides the flagged ones
MAX_CELL_ROWS = 40


def reading_guide(ctx: Context) -> str:
    """The plain-words paragraph on how to read C_T, verdicts and sample sizes."""
    cfg = ctx.run.run.get("config") or {}
    cells, tau = int(cfg.get("cells") or 10), int(cfg.get("min_gen_per_cell") or 20)
    return (
        '<p class="note"><b>How to read this.</b> C_T compares, within each k-means cell of the training set, how '
        "close the generated images are to their nearest training image with how close unseen test images are "
        "(a z-scored rank test, averaged over cells). C_T ≈ 0: generated images are as close to the training set "
        "as fresh data; <b>C_T ≪ 0 (e.g. below −3): they are systematically closer — copying / memorization</b>; "
        "C_T &gt; 0: farther (under-fitting, or another distribution). C_T is a test of a <i>set</i>, not a "
        "per-image detector: a verdict says the set as a whole is closer than chance (its C_T, cell, replication and "
        f"concentration tests at every layer Holm-corrected together at α = {ctx.alpha:g}); the galleries below "
        "show its likeliest copies, but one close pair proves nothing on its own. Power needs generated images: "
        f"a cell counts only with more than τ = {tau} of them, so "
        f"{cells} cells need at least ~{cells * (tau + 1)} "
        "generated images, and a weak effect needs many more; the advice column says when a set is too small.</p>"
    )


def test_label(test: object) -> str:
    """A family test's name as the report shows it: ``replication:L-1`` → ``replication:pixels``."""
    if isnan(test) or not str(test):
        return "–"
    return str(test).replace(f":L{schema.PIXEL_LAYER}", ":pixels")


def summary_line(ctx: Context) -> str:
    """One sentence: how many sets show copying / localized copying, named."""
    groups: dict[str, list[str]] = {}
    for name in ctx.sets:
        groups.setdefault(ctx.verdict.get(name, ""), []).append(name)
    parts = []
    for verdict, words in (
        (schema.VERDICT_COPYING, "show copying"),
        (schema.VERDICT_CLOSER, "sit closer to the training set than held-out data"),
    ):
        names = groups.get(verdict, [])
        if names:
            parts.append(f"<b>{len(names)} of {len(ctx.sets)} set(s) {words}</b> ({esc(', '.join(names))})")
    if not parts:
        parts.append(f"<b>No set shows evidence of copying</b> ({len(ctx.sets)} set(s) tested)")
    return f'<p class="summary">{"; ".join(parts)}.</p>'


def verdict_section(ctx: Context) -> Section:
    """Per set: verdict, Holm p, the layers carrying it, localized cells, n_gen, sample-size advice."""
    verdicts = ctx.run.table("verdicts")
    labels = ctx.run.labels
    rows: list[list[Cell]] = []
    if verdicts is not None:
        by_set = verdicts.set_index(schema.GEN_SET)
        for name in ctx.sets:
            if name not in by_set.index:
                continue
            r = by_set.loc[name]
            ct, layer = ctx.min_ct.get(name, (np.nan, None))
            rows.append([
                esc(name), esc(labels.get(name)), badge(r[schema.VERDICT]),
                (f"{num(ct)} (L{layer})" if layer is not None else "–", "num"), (pval(r[schema.P_HOLM]), "num"),
                esc(test_label(r[schema.TEST])), esc(", ".join(map(str, items(r[schema.LAYERS]))) or "–"),
                cell_list(r[schema.FLAGGED_CELLS]), (integer(r[schema.N_GEN]), "num"),
                esc(r[schema.ADVICE] or ""),
            ])  # fmt: skip
        header = ["set", "label", "verdict", "min C_T (layer)", "Holm p", "test", "C_T layers", "flagged cells"]
        header.append("n_gen")
        body = summary_line(ctx)
        body += table([*header, "advice"], rows) if rows else note("verdicts.parquet has no non-probe set.", True)
    else:
        for name in ctx.sets:
            ct, layer = ctx.min_ct.get(name, (np.nan, None))
            rows.append([esc(name), esc(labels.get(name)), (num(ct), "num"), esc(layer)])
        body = note(ctx.run.why_absent("verdicts") + " Most negative C_T per set instead:", True)
        body += table(["set", "label", "min C_T", "at layer"], rows)
    if ctx.probe_sets:
        body += note(f"{len(ctx.probe_sets)} probe set(s) are shown in the probes section, not here.")
    return "verdict", "Verdict", body + reading_guide(ctx)


def _yes_no(value: object) -> str:
    return "–" if isnan(value) else ("yes" if bool(value) else "no")


def _pick_cells(cells: pd.DataFrame, ctx: Context) -> pd.DataFrame:
    """Flagged cells (Holm p < α) and the STRONGEST_CELLS most negative kept Z per set, in set order."""
    cells = cells[cells[schema.GEN_SET].isin(ctx.sets)].copy()
    kept = cells[cells[schema.KEPT].fillna(False).astype(bool)]
    flagged = kept[kept[schema.P_HOLM].to_numpy(float) < ctx.alpha]
    strongest = kept.sort_values(schema.Z).groupby(schema.GEN_SET, sort=False).head(STRONGEST_CELLS)
    out = pd.concat([flagged, strongest]).drop_duplicates([schema.GEN_SET, schema.LAYER, schema.CELL])
    order = {n: i for i, n in enumerate(ctx.sets)}
    out = out.assign(_o=out[schema.GEN_SET].map(order)).sort_values(["_o", schema.Z])
    return out.drop(columns="_o").head(MAX_CELL_ROWS)


def cells_section(ctx: Context) -> Section:
    """Counts of cell statuses per set, then the flagged and strongest cells with Z, p and Holm p."""
    cells = ctx.run.table("ct_cells")
    if cells is None:
        return "cells", "Cells", note(ctx.run.why_absent("ct_cells"), True)
    mine = cells[cells[schema.GEN_SET].isin(ctx.sets)]
    counts = mine.groupby([schema.GEN_SET, schema.STATUS]).size().unstack(fill_value=0)
    statuses = [schema.CELL_OK, schema.CELL_FEW_GEN, schema.CELL_NO_TEST, schema.CELL_NO_TRAIN]
    statuses += [s for s in counts.columns if s not in statuses]
    status_rows = [
        [esc(n), *((integer(counts.loc[n].get(s, 0)) if n in counts.index else "0", "num") for s in statuses)]
        for n in ctx.sets
    ]
    body = note(
        "Cell × layer statuses per set (ok = kept in C_T; few_gen = not more than τ generated samples; "
        "no_test / no_train = no held-out or training sample in the cell)."
    )
    body += table(["set", *statuses], status_rows)
    picked = _pick_cells(cells, ctx)
    flagged = picked[schema.P_HOLM].to_numpy(float) < ctx.alpha
    rows = [
        [
            esc(r[schema.GEN_SET]), (esc(r[schema.LAYER]), "num"), (esc(r[schema.CELL]), "num"),
            (num(r[schema.Z]), "num"), (pval(r[schema.P_VALUE]), "num"), (pval(r[schema.P_HOLM]), "num"),
            (integer(r[schema.N_TRAIN]), "num"), (integer(r[schema.N_TEST]), "num"), (integer(r[schema.N_GEN]), "num"),
            _yes_no(r[schema.KEPT]), esc(r[schema.STATUS]),
        ]
        for _, r in picked.iterrows()
    ]  # fmt: skip
    body += note(
        f"Flagged cells (Holm p < {ctx.alpha:g}, over kept cells × layers of a set; highlighted) and each set's "
        f"{STRONGEST_CELLS} most negative Z. Z < 0: generated samples of the cell are closer to training than test "
        "samples of the cell. p is one-sided."
    )
    if any(isnan(v) for v in picked[schema.P_VALUE]):
        body += note("p / Holm p are – where this run did not compute them (an older run).", True)
    header = ["set", "layer", "cell", "Z", "p", "Holm p", "n_train", "n_test", "n_gen", "kept", "status"]
    body += table(header, rows, lambda i: "flag" if flagged[i] else "")
    return "cells", "Cells", body
