"""Section ``leaks``: per generated set its replication rate and the training images that leaked, each beside the
generated samples that fall on it (``replication.parquet``, ``memorized.parquet``)."""

from __future__ import annotations

import pandas as pd

from memray.io import schema
from memray.report.context import Context
from memray.report.copies import image_columns
from memray.report.markup import badge, esc, integer, note, num, pval, sig, table

Section = tuple[str, str, str]
SHOWN_IMAGES = 6  # leaked training images shown per set

EXPLANATION = (
    "Replication: the share of a set's generated images whose nearest training image (over the whole training set, "
    "the smallest distance over the views: mirror, 1-pixel shifts, crop) is closer than their k-means cell's "
    "q-quantile of the test images, against the share fresh images would have (expected); rate = the excess, with "
    "its exact 95% interval; p tests rate ≤ r0. Concentration: pairs of such replicas on the same training image, "
    "against random splits of the generated and test labels. Leaked images: training images that the generated "
    "replicas fall on more often than test images do (exact hypergeometric test, Benjamini–Hochberg q over the "
    "images that could reach significance), at the layer where the set replicates most; each shown with the "
    "closest generated images on it (blue frame)."
)


def space_name(layer: int, long: bool = False) -> str:
    """How a layer is named in the report: its number, or ``pixels`` for pixel space."""
    if layer == schema.PIXEL_LAYER:
        return "pixels"
    return f"layer {layer}" if long else str(layer)


def best_layer(rep: pd.DataFrame) -> pd.Series:
    """A set's replication row to show: the layer with the smallest p (then the largest rate)."""
    d = rep.assign(_p=rep[schema.P_VALUE].fillna(2.0), _r=-rep[schema.RATE].fillna(-1.0))
    return d.sort_values(["_p", "_r", schema.LAYER], kind="stable").iloc[0]


def replication_rows(ctx: Context, rep: pd.DataFrame) -> list[list]:
    """One table row per shown set: its best layer's replication and concentration."""
    rows = []
    for name in ctx.sets:
        d = rep[rep[schema.GEN_SET] == name]
        if d.empty:
            continue
        r = best_layer(d)
        verdict = ctx.verdict.get(name, "")
        rows.append([
            (esc(name), ""), (badge(verdict) if verdict else "", ""), (space_name(int(r[schema.LAYER])), "num"),
            (f"{num(100 * r[schema.SHARE_BELOW], 1)}% (exp. {num(100 * r[schema.EXPECTED_SHARE], 1)}%)", "num"),
            (f"{num(100 * r[schema.RATE], 1)}% [{num(100 * r[schema.CI_LOW], 1)}, {num(100 * r[schema.CI_HIGH], 1)}]",
             "num"),
            (pval(r[schema.P_VALUE]), "num"), (integer(r[schema.PAIRS]), "num"),
            (pval(r[schema.CONCENTRATION_P]), "num"), (esc(r[schema.VIEWS_USED]), ""),
        ])  # fmt: skip
    return rows


def _sources(copies: pd.DataFrame | None, name: str) -> dict[str, str]:
    """Sample id → source of one set's generated samples (from copies.parquet)."""
    if copies is None:
        return {}
    d = copies[(copies[schema.GEN_SET] == name) & (copies[schema.RANK] == 1)]
    return dict(zip(d[schema.SAMPLE_ID].astype(str), d[schema.GEN_SOURCE], strict=True))


def leaked_gallery(ctx: Context, name: str, mem: pd.DataFrame, layer: int) -> str:
    """One set's leaked images at ``layer`` (q < α, most hits first), each with its closest generated samples."""
    d = mem[(mem[schema.GEN_SET] == name) & (mem[schema.LAYER] == layer)]
    d = d[d[schema.Q_VALUE].to_numpy(float) < ctx.alpha].sort_values([schema.P_VALUE, schema.TRAIN_ID])
    if d.empty:
        return ""
    gen_src, (gen_cols, train_col) = _sources(ctx.run.table("copies"), name), image_columns(ctx.run.run)
    shown = d.head(SHOWN_IMAGES)
    ctx.thumbs.prefetch(shown[schema.TRAIN_SOURCE], train_col)
    ctx.thumbs.prefetch([gen_src.get(str(s)) for g in shown[schema.GEN_SAMPLES] for s in g], gen_cols.get(name))
    out = [f"<h3>{esc(name)} <small>{space_name(layer, long=True)}: {len(d)} leaked training image(s)</small></h3>"]
    for r in shown.itertuples(index=False):
        tid = getattr(r, schema.TRAIN_ID)
        tag, why = ctx.thumbs.img(getattr(r, schema.TRAIN_SOURCE), f"training {tid}")
        head = (f"training {esc(tid)}<br>{int(getattr(r, schema.N_HITS))} hits (exp. "
                f"{num(getattr(r, schema.EXPECTED_HITS), 1)}) · q {pval(getattr(r, schema.Q_VALUE))}")  # fmt: skip
        tiles = [f'<div class="tile">{tag}<br>{head}{f"<br>{why}" if why else ""}</div>']
        for sid, dist in zip(getattr(r, schema.GEN_SAMPLES), getattr(r, schema.GEN_DISTANCES), strict=True):
            gtag, gwhy = ctx.thumbs.img(gen_src.get(str(sid)), f"generated {sid}")
            tiles.append(f'<div class="tile gen">{gtag}<br>{esc(sid)}<br>d {esc(sig(dist))}'
                         f'{f"<br>{gwhy}" if gwhy else ""}</div>')  # fmt: skip
        out.append(f'<div class="copyrow">{"".join(tiles)}</div>')
    if len(d) > SHOWN_IMAGES:
        out.append(note(f"{len(d) - SHOWN_IMAGES} more in memorized.parquet."))
    return f'<div class="copyset">{out[0]}<div class="copyrows">{"".join(out[1:])}</div></div>'


def leaks_section(ctx: Context) -> Section:
    """The replication table of every shown set and the leaked-image galleries of the first ``max_sets``."""
    rep, mem = ctx.run.table("replication"), ctx.run.table("memorized")
    title = "Replication and leaked training images"
    if rep is None or rep.empty:
        return "leaks", title, note(ctx.run.why_absent("replication") + " (set ct.top_k > 0 to get it.)", True)
    header = ["set", "verdict", "layer", "below test q", "replication rate [95%]", "p (rate ≤ r0)", "pairs",
              "p (concentration)", "views"]  # fmt: skip
    body = note(EXPLANATION) + table(header, replication_rows(ctx, rep))
    galleries = []
    for name in ctx.sets[: ctx.max_sets]:
        d = rep[rep[schema.GEN_SET] == name]
        if mem is not None and not d.empty:
            galleries.append(leaked_gallery(ctx, name, mem, int(best_layer(d)[schema.LAYER])))
    shown = [g for g in galleries if g]
    body += "".join(shown) if shown else note("No training image leaked at the false-discovery rate α in any set.")
    if ctx.thumbs.failed:
        body += note(f"{ctx.thumbs.failed} image(s) could not be fetched: grey placeholders with the reason.", True)
    return "leaks", title, body
