"""Draw the C_T-layer curves of a run as a dependency-free SVG (one line per generated set).

python scripts/plot_curves.py runs/demo/ct_scores.parquet runs/demo/ct_curves.svg
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 360, 60, 150, 30, 45
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def svg(ct: pd.DataFrame, title: str) -> str:
    """An SVG line chart of ``ct`` (columns gen_set, layer, ct): layer on x, C_T on y, zero line dashed."""
    curves = ct.pivot(index="layer", columns="gen_set", values="ct").sort_index()
    layers = curves.index.to_list()
    lo, hi = min(0.0, float(curves.min().min())), max(0.0, float(curves.max().max()))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad

    def x(layer: int) -> float:
        return LEFT + (layer - layers[0]) / max(layers[-1] - layers[0], 1) * (W - LEFT - RIGHT)

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{title}</text>',
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999" stroke-dasharray="4 3"/>',
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="black"/>',
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="black"/>',
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 10}" text-anchor="middle">layer (ViT block)</text>',
        f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})" '
        'text-anchor="middle">C_T (≪ 0: copying)</text>',
    ]
    for layer in layers:
        out.append(f'<text x="{x(layer):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{layer}</text>')
    step = max(1, round((hi - lo) / 6))
    for tick in range(math.ceil(lo / step) * step, math.floor(hi) + 1, step):
        if lo <= tick <= hi:
            out.append(f'<text x="{LEFT - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for i, name in enumerate(curves.columns):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{x(layer):.1f},{y(v):.1f}" for layer, v in curves[name].items() if pd.notna(v))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = TOP + 16 * i + 10
        legend = f'x1="{W - RIGHT + 12}" x2="{W - RIGHT + 30}" y1="{ly}" y2="{ly}"'
        out.append(f'<line {legend} stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 35}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores", help="ct_scores.parquet of a run")
    ap.add_argument("out", help="SVG file to write")
    ap.add_argument("--sets", nargs="*", help="generated sets to draw (default: all)")
    ap.add_argument("--title", default="C_T per layer")
    args = ap.parse_args()
    ct = pd.read_parquet(args.scores)
    if args.sets:
        ct = ct[ct["gen_set"].isin(args.sets)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(svg(ct, args.title))


if __name__ == "__main__":
    main()
