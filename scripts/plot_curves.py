"""Draw the C_T-layer curves of a run with matplotlib (one line per generated set, CI band when recorded).

python scripts/plot_curves.py runs/demo/ct_scores.parquet runs/demo/ct_curves.svg

The format follows the extension (.svg, .png, .pdf). SVG output is reproducible (fixed ids, no date) and starts at
``<svg``; it is the figure of the report's ``curves`` section (memray.report.figures.curves_figure).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd

from memray.io import schema
from memray.report.figures import colours, curves_figure, png_bytes


def render(ct: pd.DataFrame, title: str, fmt: str) -> bytes:
    """The curves of ``ct`` (ct_scores columns) as ``fmt`` bytes; sets in first-seen order."""
    import matplotlib

    names = list(dict.fromkeys(ct[schema.GEN_SET].astype(str)))
    for col in (schema.CI_LOW, schema.CI_HIGH, schema.PARTITION_MIN, schema.PARTITION_MAX):
        if col not in ct:
            ct = ct.assign(**{col: float("nan")})
    with matplotlib.rc_context({"svg.hashsalt": "memray", "svg.fonttype": "none"}):
        fig = curves_figure(ct, schema.GEN_SET, colours(names), title=title)
        if fmt == "png":
            return png_bytes(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, facecolor="white", metadata={"Date": None} if fmt == "svg" else None)
    data = buf.getvalue()
    return data[data.index(b"<svg") :] if fmt == "svg" else data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores", help="ct_scores.parquet of a run")
    ap.add_argument("out", help="file to write (.svg, .png or .pdf)")
    ap.add_argument("--sets", nargs="*", help="generated sets to draw (default: all)")
    ap.add_argument("--title", default="C_T per layer")
    args = ap.parse_args()
    ct = pd.read_parquet(args.scores)
    if args.sets:
        ct = ct[ct[schema.GEN_SET].isin(args.sets)]
    fmt = Path(args.out).suffix.lstrip(".").lower() or "svg"
    if fmt not in ("svg", "png", "pdf"):
        ap.error(f"{args.out}: write .svg, .png or .pdf")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(render(ct, args.title, fmt))


if __name__ == "__main__":
    main()
