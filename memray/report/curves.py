"""Sections ``curves`` (C_T over layers with CI bands), ``heatmap`` (sets × layers) and ``distances`` (histograms)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memray.io import schema
from memray.report import figures
from memray.report.context import Context
from memray.report.markup import esc, note

Section = tuple[str, str, str]
MAX_CURVES = 10  # lines in one curve figure
HISTOGRAM_SETS = 3  # sets with distance histograms


def _scores(ctx: Context) -> pd.DataFrame | None:
    ct = ctx.run.table("ct_scores")
    return None if ct is None else ct[ct[schema.GEN_SET].isin(ctx.sets)]


def curves_section(ctx: Context) -> Section:
    """C_T-layer curves per set (most alarming first) with the bootstrap 95% band and the partition range."""
    ct = _scores(ctx)
    if ct is None:
        return "curves", "C_T per layer", note(ctx.run.why_absent("ct_scores"), True)
    has_ci = bool(ct[schema.CI_LOW].notna().any())
    has_part = bool(ct[schema.PARTITION_MIN].notna().any())
    body = note(
        "One line per generated set; below the dashed zero line the set is closer to the training set than "
        "held-out data. "
        + ("Shaded: seeded bootstrap 95% interval. " if has_ci else "No bootstrap intervals in this run. ")
        + ("Bars: range of C_T over several seeded k-means partitions." if has_part else "")
    )
    stability = ctx.run.table("stability")
    if stability is not None and not stability.empty:
        seeds = stability[schema.PARTITION_SEED].nunique()
        body += note(f"C_T was recomputed under {seeds} seeded k-means partitions ({schema.STABILITY_FILE}).")
    groups = [ctx.sets[i : i + MAX_CURVES] for i in range(0, len(ctx.sets), MAX_CURVES)]
    for i, names in enumerate(groups):
        colour = {n: ctx.colour[n] for n in names}
        title = f"sets {i * MAX_CURVES + 1}–{i * MAX_CURVES + len(names)}" if len(groups) > 1 else ""
        fig = figures.curves_figure(ct, schema.GEN_SET, colour, title=title)
        body += figures.img_tag(fig, f"C_T per layer: {', '.join(names)}")
    return "curves", "C_T per layer", body


def heatmap_section(ctx: Context) -> Section:
    """Sets × layers heatmap of C_T, red = negative (copying), centred on 0."""
    ct = _scores(ctx)
    if ct is None or ct.empty:
        return "heatmap", "C_T heatmap", note(ctx.run.why_absent("ct_scores"), True)
    grid = ct.pivot_table(index=schema.GEN_SET, columns=schema.LAYER, values=schema.CT, aggfunc="first", dropna=False)
    grid = grid.reindex(index=[s for s in ctx.sets if s in grid.index], columns=ctx.layers() or grid.columns)
    body = note("C_T of every set (rows, most alarming first) at every layer; red = negative, grey = undefined.")
    return "heatmap", "C_T heatmap", body + figures.img_tag(figures.heatmap_figure(grid), "C_T heatmap")


def distance_arrays(nb: pd.DataFrame, name: str) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per layer: the test samples' and set ``name``'s in-cell nearest-training distances (NaN dropped)."""
    out: list[dict[int, np.ndarray]] = []
    for mask in (
        nb[schema.ROLE] == schema.ROLE_TEST,
        (nb[schema.ROLE] == schema.ROLE_GEN) & (nb[schema.GEN_SET] == name),
    ):
        d = nb[mask]
        out.append({
            int(layer): g[schema.NN_DISTANCE].dropna().to_numpy(float) for layer, g in d.groupby(schema.LAYER)
        })  # fmt: skip
    return out[0], out[1]


def distances_section(ctx: Context) -> Section:
    """In-cell nearest-training distance histograms, test vs generated, per layer, for the strongest sets."""
    nb = ctx.run.table("neighbors")
    if nb is None:
        return "distances", "Nearest-training distances", note(ctx.run.why_absent("neighbors"), True)
    body = note(
        "What C_T measures: for every held-out test image (grey) and generated image (coloured), the distance to "
        "its nearest training image within its own cell, per layer (log scale; bar height = share of the samples). "
        "A generated histogram shifted left of the grey one means the set sits closer to the training set than "
        "unseen data (C_T < 0)."
    )
    shown = 0
    for name in ctx.sets[:HISTOGRAM_SETS]:
        test, gen = distance_arrays(nb, name)
        if not any(v.size for v in gen.values()):
            continue
        ct, layer = ctx.min_ct.get(name, (np.nan, None))
        strongest = f" — most negative C_T {ct:.2f} at layer {layer}" if layer is not None else ""
        body += f"<h3>{esc(name)}{esc(strongest)}</h3>"
        fig = figures.histograms_figure(test, gen, ctx.colour[name])
        body += figures.img_tag(fig, f"nearest-training distances of {name} vs test")
        shown += 1
    if not shown:
        body += note("neighbors.parquet holds no generated sample of the sets shown here.", True)
    return "distances", "Nearest-training distances", body
