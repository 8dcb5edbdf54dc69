"""The report's figures with matplotlib (Agg, no pyplot state), returned as figures or inline ``<img>`` tags.

matplotlib is imported inside the functions: ``import memray.report`` does not load it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memray.io import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100  # 1 inch = 100 CSS px in the page
RESOLUTION = 2  # PNG pixels per CSS px (sharp on high-density screens)
WIDTH_IN = 6.4  # figures ~640 px wide
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip
ZERO_LINE = {"color": "#888", "lw": 0.9, "ls": "--", "zorder": 0}


def new_figure(width_in: float, height_in: float) -> Figure:
    """A matplotlib figure drawn by Agg, independent of pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure, scale: int = RESOLUTION) -> bytes:
    """The figure as PNG at ``scale`` × its CSS size."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI * scale, facecolor="white")
    return buf.getvalue()


def img_tag(fig: Figure, alt: str) -> str:
    """An inline ``<img class="fig">`` (PNG data URI) shown at the figure's nominal size."""
    import html

    w, h = fig.get_size_inches()
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return (
        f'<img class="fig" width="{round(w * DPI)}" height="{round(h * DPI)}" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{data}">'
    )


def colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name, in order (cycling the palette)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def curves_figure(
    df: pd.DataFrame, key: str, colour: dict[str, str], ylabel: str = "C_T  (≪ 0: copying)", title: str = ""
) -> Figure:
    """C_T over layers, one line per ``key`` value, with the CI band (ci_low/ci_high) and partition range bars.

    ``df`` is long (``key, layer, ct`` + optional ``ci_low, ci_high, partition_min, partition_max``); lines are
    drawn in ``colour``'s order.
    """
    fig = new_figure(WIDTH_IN, 3.5)
    ax = fig.add_subplot()
    ax.axhline(0.0, **ZERO_LINE)
    for name in colour:
        d = df[df[key] == name].sort_values(schema.LAYER)
        if d.empty:
            continue
        x, c = d[schema.LAYER].to_numpy(), colour[name]
        ax.plot(x, d[schema.CT].to_numpy(float), "-o", color=c, lw=1.6, ms=3, label=name)
        for lo, hi, kw in ((schema.CI_LOW, schema.CI_HIGH, "band"), (schema.PARTITION_MIN, schema.PARTITION_MAX, "")):
            if lo not in d or not d[lo].notna().any():
                continue
            lo_v, hi_v = d[lo].to_numpy(float), d[hi].to_numpy(float)
            if kw == "band":
                ax.fill_between(x, lo_v, hi_v, color=c, alpha=0.14, lw=0)
            else:
                ax.vlines(x, lo_v, hi_v, color=c, lw=3, alpha=0.45)
    ax.set_xlabel("layer (ViT block)")
    ax.set_ylabel(ylabel)
    layers = sorted(pd.unique(df[schema.LAYER]))
    if layers:
        ax.set_xticks(layers)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25, lw=0.5)
    if colour:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig


def heatmap_figure(grid: pd.DataFrame) -> Figure:
    """Sets (rows) × layers (columns) of C_T, diverging colours centred on 0 (red = negative), annotated."""
    from matplotlib.colors import TwoSlopeNorm

    values = grid.to_numpy(float)
    finite = values[np.isfinite(values)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmax = vmax or 1.0
    n_rows, n_cols = values.shape
    fig = new_figure(min(WIDTH_IN + 1.6, 2.2 + 0.42 * n_cols), 0.9 + 0.3 * n_rows)
    ax = fig.add_subplot()
    cmap = _cmap("RdBu")
    cmap = cmap.with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax), aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in grid.columns], fontsize=8)
    ax.set_yticks(range(n_rows), [str(r) for r in grid.index], fontsize=8)
    ax.set_xlabel("layer")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            text = "–" if not math.isfinite(v) else (f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 * vmax else "k")
    fig.colorbar(im, ax=ax, shrink=0.9, pad=0.01, label="C_T")
    return fig


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].copy()


def log_bins(values: np.ndarray, n: int = 30) -> np.ndarray:
    """``n`` log-spaced bin edges over the 0.5–99.5% range of the positive values (linear when none are)."""
    v = values[np.isfinite(values)]
    pos = v[v > 0]
    if pos.size < 2 or np.quantile(pos, 0.995) <= np.quantile(pos, 0.005):
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        return np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)
    return np.geomspace(np.quantile(pos, 0.005), np.quantile(pos, 0.995), n + 1)


def histograms_figure(test: dict[int, np.ndarray], gen: dict[int, np.ndarray], colour: str, cols: int = 6) -> Figure:
    """Small multiples, one per layer: in-cell nearest-training distances of test (grey) vs generated (colour).

    Log-x bins (the statistic is rank-based, so a monotone axis change shows what it compares); values outside
    the range are clipped into the end bins; bar heights are shares of each histogram's samples.
    """
    layers = sorted(set(test) | set(gen))
    rows = max(1, math.ceil(len(layers) / cols))
    fig = new_figure(WIDTH_IN * min(len(layers), cols) / cols + 0.1, 0.25 + 1.05 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(layers) :]:
        ax.set_axis_off()
    for ax, layer in zip(axes.flat, layers, strict=False):
        t, g = test.get(layer, np.empty(0)), gen.get(layer, np.empty(0))
        edges = log_bins(np.concatenate([t, g]))
        for v, style in ((t, {"color": "#999", "alpha": 0.55}), (g, {"color": colour, "histtype": "step", "lw": 1.3})):
            if v.size:  # share of the samples per bin: comparable heights on log bins, whatever the counts
                ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, weights=np.full(v.size, 1 / v.size), **style)
        if edges[0] > 0:
            ax.set_xscale("log")
        ax.set_title(f"layer {layer}", fontsize=8, pad=2)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=6, pad=1)
        ax.xaxis.set_major_locator(_log_locator())
        ax.xaxis.set_minor_formatter(_null_formatter())
    return fig


def _log_locator() -> Any:
    from matplotlib.ticker import LogLocator

    return LogLocator(numticks=3)


def _int_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=6, integer=True)


def _null_formatter() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def fingerprint_figure(
    queries: list[tuple[str, str, pd.Series]], gallery: pd.DataFrame, label_colour: dict[str, str], cols: int = 3
) -> Figure:
    """One panel per query: the gallery curves (thin, coloured by label) and the query's curve (black).

    ``queries``: (name, predicted label, ct Series indexed by layer); ``gallery``: ``name, label, layer, ct``.
    """
    rows = max(1, math.ceil(len(queries) / cols))
    fig = new_figure(WIDTH_IN * min(len(queries), cols) / cols + 0.2, 0.5 + 1.7 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax in axes.flat[len(queries) :]:
        ax.set_axis_off()
    for ax, (name, predicted, curve) in zip(axes.flat, queries, strict=False):
        ax.axhline(0.0, **ZERO_LINE)
        for (_, label), g in gallery.groupby(["name", schema.LABEL], sort=False):
            g = g.sort_values(schema.LAYER)
            ax.plot(g[schema.LAYER], g[schema.CT], color=label_colour.get(label, "#aaa"), lw=0.8, alpha=0.7)
        ax.plot(curve.index, curve.to_numpy(float), color="k", lw=1.8)
        ax.set_title(f"{name} → {predicted}", fontsize=8, pad=2)
        ax.xaxis.set_major_locator(_int_locator())
        ax.tick_params(labelsize=6)
    handles = [_line(c, label) for label, c in label_colour.items()]
    fig.legend(handles=[*handles, _line("k", "query")], fontsize=7, loc="outside lower center", ncols=6, frameon=False)
    return fig


def _line(colour: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, lw=1.5, label=label)
