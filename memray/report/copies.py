"""Section ``copies``: per generated set, its likeliest copies beside their nearest training images."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memray.io import schema
from memray.report.context import Context
from memray.report.markup import badge, closer_than, esc, note, num, sig

Section = tuple[str, str, str]

EXPLANATION = (
    "For each generated set (copying verdicts first), the generated images (blue frame) whose nearest training "
    "image is closest relative to the held-out test images, at the layer with the most negative C_T, each beside "
    "its nearest training images. These are global nearest neighbours over the whole training set "
    "(copies.parquet); the statistic itself (neighbors.parquet, C_T) uses the nearest training image within the "
    "sample's own k-means cell, which can be a different, farther one. d: the distance (the run's metric); "
    "'closer than 99.9% of test': only 0.1% of held-out test images have a nearer training neighbour (in their cell) "
    "— an unusual closeness, not by itself a proof of copying."
)


def gallery_layer(copies: pd.DataFrame, min_ct: tuple[float, int | None], ct: pd.DataFrame | None, name: str) -> int:
    """The layer whose gallery is shown: the set's most negative C_T among the layers copies.parquet holds.

    Without a finite C_T there, the layer whose rank-1 neighbours have the smallest median test quantile.
    """
    layers = sorted(int(x) for x in pd.unique(copies[schema.LAYER]))
    if min_ct[1] in layers:
        return int(min_ct[1])
    if ct is not None:
        d = ct[(ct[schema.GEN_SET] == name) & ct[schema.LAYER].isin(layers)]
        d = d[np.isfinite(d[schema.CT].to_numpy(float))]
        if not d.empty:
            return int(d.loc[d[schema.CT].idxmin(), schema.LAYER])
    first = copies[copies[schema.RANK] == copies[schema.RANK].min()]
    med = first.groupby(schema.LAYER)[schema.TEST_QUANTILE].median()
    return int(med.idxmin()) if med.notna().any() else layers[0]


def likeliest(copies: pd.DataFrame, layer: int, n: int) -> list[str]:
    """Sample ids of the ``n`` generated samples with the smallest test quantile (then distance) of their
    nearest training neighbour at ``layer``."""
    d = copies[copies[schema.LAYER] == layer]
    first = d.sort_values(schema.RANK).drop_duplicates(schema.SAMPLE_ID)
    first = first.sort_values([schema.TEST_QUANTILE, schema.DISTANCE, schema.SAMPLE_ID], na_position="last")
    return first[schema.SAMPLE_ID].head(n).astype(str).tolist()


def _tile(tag: str, reason: str, lines: list[str], gen: bool = False) -> str:
    why = f'<br><span class="why">{reason}</span>' if reason else ""
    return f'<div class="tile{" gen" if gen else ""}">{tag}{"<br>".join(lines)}{why}</div>'


def plan_gallery(ctx: Context, name: str, copies: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    """(layer, rows) of one set's gallery: the neighbour rows of its shown samples at that layer, in display
    order (likeliest copy first, then rank)."""
    layer = gallery_layer(copies, ctx.min_ct.get(name, (np.nan, None)), ctx.run.table("ct_scores"), name)
    order = {sid: i for i, sid in enumerate(likeliest(copies, layer, ctx.copies_per_set))}
    d = copies[(copies[schema.LAYER] == layer) & copies[schema.SAMPLE_ID].astype(str).isin(order)]
    d = d.assign(_order=d[schema.SAMPLE_ID].astype(str).map(order)).sort_values(["_order", schema.RANK])
    return layer, d


def image_columns(run: dict) -> tuple[dict[str, str | None], str | None]:
    """The image column/key of each generated set and of the training set, from the job config."""
    job = run.get("job_config") or {}
    gens = {str(g.get("name")): g.get("image_column") for g in job.get("generated") or [] if isinstance(g, dict)}
    return gens, (job.get("train") or {}).get("image_column")


def render_gallery(ctx: Context, name: str, layer: int, rows: pd.DataFrame) -> str:
    """One set's gallery: a row per shown generated sample (it, then its top-k training images)."""
    ct = ctx.run.table("ct_scores")
    ct_here = np.nan
    if ct is not None:
        hit = ct[(ct[schema.GEN_SET] == name) & (ct[schema.LAYER] == layer)][schema.CT]
        ct_here = float(hit.iloc[0]) if len(hit) else np.nan
    verdict = ctx.verdict.get(name, "")
    small = f"<small>layer {layer}, C_T = {num(ct_here)}</small>"
    out = [f'<div class="copyset"><h3>{esc(name)} {badge(verdict) if verdict else ""} {small}</h3>']
    for sid, nbrs in rows.groupby("_order", sort=True):
        sid = str(nbrs[schema.SAMPLE_ID].iloc[0])
        gen_tag, gen_why = ctx.thumbs.img(nbrs[schema.GEN_SOURCE].iloc[0], f"generated {sid}")
        tiles = [_tile(gen_tag, gen_why, ["generated", esc(sid)], gen=True)]
        for r in nbrs.itertuples(index=False):
            tag, why = ctx.thumbs.img(getattr(r, schema.TRAIN_SOURCE), f"training {getattr(r, schema.TRAIN_ID)}")
            lines = [
                f"#{getattr(r, schema.RANK)} · d {esc(sig(getattr(r, schema.DISTANCE)))}",
                esc(closer_than(getattr(r, schema.TEST_QUANTILE), short=True)),
                esc(getattr(r, schema.TRAIN_ID)),
            ]
            view = getattr(r, schema.VIEW, None)
            if isinstance(view, str) and view != "identity":  # the copy was found under a transform
                lines.append(f"view {esc(view)}")
            tiles.append(_tile(tag, why, lines))
        out.append(f'<div class="copyrow">{"".join(tiles)}</div>')
    return out[0] + f'<div class="copyrows">{"".join(out[1:])}</div></div>'


def copies_section(ctx: Context) -> Section:
    """Galleries of the strongest ``max_sets`` non-probe sets that copies.parquet covers."""
    copies = ctx.run.table("copies")
    if copies is None:
        return "copies", "Likeliest copies", note(ctx.run.why_absent("copies") + " (set ct.top_k > 0 to get it.)", True)
    body = note(EXPLANATION)
    covered = [n for n in ctx.sets if n in set(copies[schema.GEN_SET].astype(str))]
    plans = {n: plan_gallery(ctx, n, copies[copies[schema.GEN_SET] == n]) for n in covered[: ctx.max_sets]}
    gen_cols, train_col = image_columns(ctx.run.run)
    for name, (_, rows) in plans.items():  # every archive read once per set, not once per image
        ctx.thumbs.prefetch(rows[schema.GEN_SOURCE], gen_cols.get(name))
    ctx.thumbs.prefetch(pd.concat([r[schema.TRAIN_SOURCE] for _, r in plans.values()]) if plans else [], train_col)
    for name, (layer, rows) in plans.items():
        body += render_gallery(ctx, name, layer, rows)
    left = covered[ctx.max_sets :]
    if left:
        body += note(f"{len(left)} more set(s) not shown (max_sets = {ctx.max_sets}): {', '.join(left)}.")
    if not plans:
        body += note("copies.parquet holds no non-probe generated set.", True)
    if ctx.thumbs.failed:
        body += note(f"{ctx.thumbs.failed} image(s) could not be fetched: grey placeholders with the reason.", True)
    return "copies", "Likeliest copies", body
