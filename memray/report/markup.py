"""HTML building blocks of the report: escaping, number formats, tables, sections and the page with inline CSS."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, SupportsFloat, SupportsInt

import pandas as pd

from memray.io import schema

Cell = str | tuple[str, str]  # raw HTML, or (raw HTML, class of the <td>)
Text = str | float | None  # a string cell of a table (NaN/None when missing)

VERDICT_CLASS = {
    schema.VERDICT_COPYING: "bad",
    schema.VERDICT_CLOSER: "warn",
    schema.VERDICT_NONE: "ok",
    schema.VERDICT_UNDEFINED: "muted",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fff;margin:0}
main{max-width:1240px;margin:0 auto;padding:16px 28px 48px}
header{border-bottom:2px solid #1d1d1f;margin-bottom:8px}
header h1{font-size:22px;margin:12px 0 2px}
header p{margin:2px 0 10px;color:#555}
nav{font-size:13px;margin:6px 0 14px}nav a{margin-right:12px;color:#0b57d0;text-decoration:none}
section{border-top:1px solid #ddd;padding:6px 0 14px}
h2{font-size:18px;margin:10px 0 6px}h3{font-size:15px;margin:12px 0 4px}
p.note{color:#555;margin:4px 0 8px;max-width:860px}.absent{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere;max-width:420px}
th{background:#f4f4f6;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.flag td{background:#fff4e5}tr.disagree td{background:#fdecea}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;white-space:nowrap}
.bad{background:#fbd5d5;color:#9b1c1c}.warn{background:#feecc8;color:#8a4b00}
.ok{background:#d7f0dd;color:#1e6b34}.muted{background:#ececec;color:#555}
img.fig{display:block;margin:6px 0 10px;max-width:100%;height:auto}
.copyset{margin:8px 0 14px}.copyrows{display:flex;flex-wrap:wrap;gap:6px 30px}
.copyrow{display:flex;gap:4px;align-items:flex-start;margin:2px 0 6px}
.tile{width:88px;font-size:10.5px;line-height:1.25;color:#444;text-align:center;overflow-wrap:anywhere}
.tile.gen{margin-right:8px}.tile.gen img{outline:2px solid #0b57d0}
img.thumb{width:84px;height:84px;object-fit:contain;background:#f0f0f0;image-rendering:pixelated;display:block;
margin:0 auto 2px}
.why{color:#9b1c1c}dl.kv{display:grid;grid-template-columns:max-content auto;gap:1px 14px;font-size:12.5px;margin:4px 0}
dl.kv dt{font-weight:600;color:#444}dl.kv dd{margin:0;overflow-wrap:anywhere}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}pre{background:#f6f6f8;padding:6px 8px;
white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:0 36px}.summary{font-size:15px;margin:4px 0 8px}
.banner{background:#fff4e5;border-left:4px solid #e8a33d;padding:6px 10px;margin:8px 0}
"""


def esc(value: object) -> str:
    """HTML-escaped text of ``value`` (``None``/NaN as an en dash)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return html.escape(str(value))


def items(value: object) -> list:
    """A list column's value (a list, a numpy array from Parquet, None) as a list; a legacy comma-joined string
    is split."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return list(value)


def isnan(value: object) -> bool:
    """True for None, NaN and pandas' missing markers."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def num(value: SupportsFloat | None, digits: int = 2) -> str:
    """A float with ``digits`` decimals (``–`` for NaN)."""
    return "–" if isnan(value) else f"{float(value):.{digits}f}"


def sig(value: SupportsFloat | None, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (``–`` for NaN), e.g. ``0.000312`` or ``1.2e-07``."""
    return "–" if isnan(value) else f"{float(value):.{digits}g}"


def pval(value: SupportsFloat | None) -> str:
    """A p-value: 3 significant digits, scientific below 0.001, ``< 1e-300`` at underflow."""
    if isnan(value):
        return "–"
    v = float(value)
    if v <= 1e-300:
        return "&lt; 1e-300"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def integer(value: SupportsInt | None) -> str:
    return "–" if isnan(value) else f"{int(value):,}"


def closer_than(test_quantile: SupportsFloat | None, short: bool = False) -> str:
    """Caption of a test quantile q: ``closer than 99.9% of test images`` (share 1 − q, enough decimals).

    ``short`` drops the final "images" (``closer than 99.9% of test``) for thumbnail captions.
    """
    if isnan(test_quantile):
        return "test quantile n/a"
    q, tail = float(test_quantile), "" if short else " images"
    if q <= 0:
        return f"closer than all test{tail}"
    if q >= 1:
        return f"not closer than any test{tail}"
    pct, digits = 100.0 * (1.0 - q), 1
    while round(pct, digits) >= 100.0 and digits < 4:
        digits += 1
    return f"closer than {pct:.{digits}f}% of test{tail}"


def cell_list(flagged: object, shown: int = 3) -> str:
    """A compact HTML form of a FLAGGED_CELLS list ``["L3:c5", "L4:c5", …]``: count, then per layer, the full list
    in a tooltip, e.g. ``12 cells: L1 ×4, L2 ×5, L3 ×3``."""
    cells = [str(x) for x in items(flagged)]
    if not cells:
        return "–"
    if len(cells) <= shown:
        return esc(", ".join(cells))
    per_layer: dict[str, int] = {}
    for item in cells:
        layer = item.split(":", 1)[0]
        per_layer[layer] = per_layer.get(layer, 0) + 1
    layers = [f"{k} ×{v}" for k, v in per_layer.items()]
    more = f", … ({len(layers)} layers)" if len(layers) > 4 else ""
    text = f"{len(cells)} cells: {', '.join(layers[:4])}{more}"
    return f'<span title="{esc(", ".join(cells))}">{esc(text)}</span>'


def badge(verdict: Text) -> str:
    """A coloured verdict label."""
    return f'<span class="badge {VERDICT_CLASS.get(str(verdict), "muted")}">{esc(verdict)}</span>'


def table(header: Sequence[str], rows: Iterable[Sequence[Cell]], row_class: Callable[[int], str] | None = None) -> str:
    """A ``<table>``; cells are raw HTML (escape text first) or (HTML, td class) pairs, e.g. ``(num(x), "num")``."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for cell in row:
            text, td = cell if isinstance(cell, tuple) else (cell, "")
            out.append(f'<td class="{td}">{text}</td>' if td else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def frame_table(df: pd.DataFrame, index: bool = False) -> str:
    """A small DataFrame as a table (numbers right-aligned, floats with 3 significant decimals)."""
    if index:
        df = df.reset_index()
    rows = []
    for rec in df.itertuples(index=False):
        cells: list[Cell] = []
        for v in rec:
            if isinstance(v, float):
                cells.append((num(v, 3), "num"))
            elif isinstance(v, int) and not isinstance(v, bool):
                cells.append((integer(v), "num"))
            else:
                cells.append(esc(v))
        rows.append(cells)
    return table([str(c) for c in df.columns], rows)


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition grid of (key, raw HTML value) pairs."""
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def note(text: str, absent: bool = False) -> str:
    """A paragraph of (escaped) explanatory text; ``absent`` styles it as a missing-file note."""
    return f'<p class="note{" absent" if absent else ""}">{esc(text)}</p>'


def section(sid: str, title: str, body: str) -> str:
    """One ``<section id=…>`` with its ``<h2>``."""
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole self-contained document: sections as (id, title, body HTML); a link bar to each."""
    links = "".join(f'<a href="#{esc(s)}">{esc(t)}</a>' for s, t, _ in sections)
    body = "".join(section(s, t, b) for s, t, b in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header><nav>{links}</nav>{body}"
        "</main></body></html>\n"
    )
