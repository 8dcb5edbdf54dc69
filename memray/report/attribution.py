"""Section ``fingerprint``: attribution by C_T-layer curve beside the FID-nearest baseline, evaluation, curves."""

from __future__ import annotations

import pandas as pd

from memray.fingerprint.compare import winner_sentence
from memray.fingerprint.open_set import OpenSetCalibration, open_set_sentence
from memray.io import schema
from memray.report import figures
from memray.report.context import Context
from memray.report.load import is_probe
from memray.report.markup import Cell, esc, frame_table, note, num, sig, table

Section = tuple[str, str, str]
MAX_PANELS = 12


def query_curves(fingerprints: pd.DataFrame) -> dict[str, pd.Series]:
    """Curve name → C_T indexed by layer; a set with several subsets names them ``set#subset`` (as curves do)."""
    fp = fingerprints.copy()
    multi = fp.groupby(schema.GEN_SET)[schema.SUBSET].transform("nunique") > 1
    fp["_name"] = (
        fp[schema.GEN_SET]
        .astype(str)
        .where(~multi, fp[schema.GEN_SET].astype(str) + "#" + fp[schema.SUBSET].astype(str))
    )
    return {str(n): g.set_index(schema.LAYER)[schema.CT].sort_index() for n, g in fp.groupby("_name", sort=False)}


def gallery_curves(ctx: Context) -> pd.DataFrame | None:
    """The labelled curves (``name, label, layer, ct``): gallery.parquet, else labelled fingerprints."""
    gallery = ctx.run.table("gallery")
    if gallery is not None:
        return gallery[gallery[schema.LABEL].notna()]
    fp = ctx.run.table("fingerprints")
    if fp is None:
        return None
    fp = fp[fp[schema.LABEL].notna() & ~fp[schema.GEN_SET].map(is_probe)]
    return fp.rename(columns={schema.GEN_SET: "name"})


def attribution_table(att: pd.DataFrame, fid: pd.DataFrame | None) -> tuple[str, int]:
    """The attribution rows with the FID-nearest prediction beside them; (HTML, number of disagreements)."""
    by_q = {} if fid is None else fid.set_index(schema.QUERY).to_dict("index")
    rows: list[list[Cell]] = []
    disagree: list[bool] = []
    for r in att.itertuples(index=False):
        q = str(getattr(r, schema.QUERY))
        f = by_q.get(q)
        cells: list[Cell] = [
            esc(q), esc(getattr(r, schema.TRUE_LABEL)), f"<b>{esc(getattr(r, schema.PREDICTED))}</b>",
            (num(getattr(r, schema.SCORE), 3), "num"), esc(getattr(r, schema.RUNNER_UP)),
            (num(getattr(r, schema.MARGIN), 3), "num"),
        ]  # fmt: skip
        differs = f is not None and str(f[schema.PREDICTED]) != str(getattr(r, schema.PREDICTED))
        if fid is not None:
            fid_pred = "–" if f is None else esc(f[schema.PREDICTED])
            cells += [
                fid_pred if not differs else f"{fid_pred} ⚠",
                (sig(f[schema.SCORE]) if f else "–", "num"), (sig(f[schema.MARGIN]) if f else "–", "num"),
            ]  # fmt: skip
        rows.append(cells)
        disagree.append(differs)
    header = ["query", "true label", "predicted (curve)", "score", "runner-up", "margin"]
    if fid is not None:
        header += ["FID-nearest", "FD", "FD margin"]
    return table(header, rows, lambda i: "disagree" if disagree[i] else ""), sum(disagree)


def _evaluation(ctx: Context) -> str:
    acc, conf = ctx.run.table("accuracy"), ctx.run.table("confusion")
    if acc is None and conf is None:
        return note("No leave-one-run-out evaluation in this run (it needs ≥ 2 labels, one with ≥ 2 runs).", True)
    out = ""
    if acc is not None and not acc.empty:
        out += "<h3>Evaluation: which method attributes best on this gallery</h3>"
        out += note(winner_sentence(acc, ctx.run.table("comparison")))
        runs = " and over resampled runs (queries of one run are not independent)" if "run_ci_low" in acc else ""
        out += f"<h3>Accuracy of every method, leave-one-run-out (95% Wilson interval{runs})</h3>"
        out += frame_table(acc)
    open_set = ctx.run.table("open_set")
    if open_set is not None and not open_set.empty:
        out += note(open_set_sentence(OpenSetCalibration(float(open_set["threshold"].iloc[-1]), open_set)))
    if conf is not None:
        out += "<h3>Confusion matrix (curve method; rows = true label)</h3>" + frame_table(conf)
    return out


def fingerprint_section(ctx: Context) -> Section:
    """Attribution table, FID-nearest comparison, evaluation and each query's curve over the gallery."""
    att, fid = ctx.run.table("attribution"), ctx.run.table("attribution_fid")
    fp = ctx.run.table("fingerprints")
    if att is None and fp is None:
        return "fingerprint", "Fingerprint attribution", note(ctx.run.why_absent("fingerprints"), True)
    body = note(
        "Each generated set's C_T-layer curve is matched with a gallery of curves of known models (score: higher "
        "= closer; margin = score − runner-up's score, which exceeds the score when the runner-up's similarity is "
        "negative). The FID-nearest baseline predicts the label of the gallery set with "
        "the smallest Fréchet distance (FD, lower = closer; FD margin = runner-up − best); rows where the two "
        "disagree are highlighted (⚠)."
    )
    if att is None:
        body += note(ctx.run.why_absent("attribution"), True)
    else:
        att = att[~att[schema.QUERY].astype(str).map(is_probe)]
        html, n_dis = attribution_table(att, fid)
        body += html
        if fid is None:
            body += note(ctx.run.why_absent("attribution_fid") + " (no FID-nearest baseline.)", True)
        elif n_dis:
            body += note(f"The curve and FID-nearest predictions disagree on {n_dis} of {len(att)} queries.")
    body += _evaluation(ctx)
    gallery = gallery_curves(ctx)
    if att is not None and fp is not None and gallery is not None and not gallery.empty:
        curves = query_curves(fp)
        queries = [
            (str(q), str(p), curves[str(q)])
            for q, p in zip(att[schema.QUERY], att[schema.PREDICTED], strict=True)
            if str(q) in curves
        ][:MAX_PANELS]
        if queries:
            label_colour = figures.colours(sorted(gallery[schema.LABEL].astype(str).unique()))
            fig = figures.fingerprint_figure(
                queries, gallery.assign(label=gallery[schema.LABEL].astype(str)), label_colour
            )
            body += "<h3>Query curves (black) over the gallery curves</h3>"
            body += figures.img_tag(fig, "query curves over gallery curves")
    return "fingerprint", "Fingerprint attribution", body
