"""``memray fingerprint``: evaluate curve attribution against baselines, save galleries, attribute new curves.

- ``evaluate --curves FILE``: runs a protocol over labelled curves and prints method vs baselines (correct/total,
  accuracy, 95% Wilson CI). With ``--out DIR`` writes ``attribution.parquet`` (the curve method,
  ``query, true_label, predicted, score, runner_up, margin``), ``evaluation.parquet`` (every method's rows with
  ``method`` and ``correct`` columns), ``accuracy.csv`` and ``confusion.csv``.
- ``gallery --curves FILE --out FILE.parquet``: saves labelled curves (optionally only ``split=gallery`` rows)
  as a reusable gallery.
- ``attribute --gallery FILE --queries FILE --out DIR``: attributes (possibly unlabelled) curves →
  ``attribution.parquet``.

Curve files: memray ``fingerprints.parquet``, long/wide CSV or Parquet, or the authors' text format (see
:mod:`memray.fingerprint.curves`). ``--method`` (``fingerprint.method``): ``auto`` (default) uses ``curve_fd`` when the
curves carry an ``fd_test`` profile (an audit's files) and ``curve`` otherwise (published curves); ``attribute``
follows the gallery's method and refuses another explicit one. FID files: ``NAME value`` lines or CSV
``run,fid[,curve_run]`` (see :mod:`memray.fingerprint.fid`).
The curve, FID and evaluation modules (pandas, scipy) are imported by the actions only, so ``--help`` stays light.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from memray.config import to_dict, with_overrides
from memray.fingerprint.config import FingerprintConfig
from memray.io import schema
from memray.io.storage import join

#: ``memray.fingerprint.evaluate.PROTOCOLS``, spelled out so that parsing needs no pandas (tests/test_cli.py checks
#: they agree).
PROTOCOLS: tuple[str, ...] = ("split", "leave-one-run-out")


def _matcher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=["auto", "curve", "curve_fd"],
        help="curve: the paper's C_T curve; curve_fd: curve + FD-to-test profile (needs curves with an fd_test "
        "column, e.g. an audit's fingerprints.parquet); auto (default): curve_fd when the curves carry the profile",
    )
    p.add_argument("--alpha", type=float, help="weight of cosine in α·cos + (1−α)/(1+L2) (default 0.5)")
    p.add_argument("--matcher", choices=["1nn", "knn", "centroid"], help="default 1nn (the paper's)")
    p.add_argument("--k", type=int, help="neighbours for --matcher knn (default 3)")
    p.add_argument(
        "--open-set-threshold",
        type=_threshold,
        help="best similarity below this → 'unknown'; 'calibrated': calibrated on the gallery, one family left out",
    )


def _threshold(text: str) -> float | str:
    if text == "calibrated":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or 'calibrated'") from None


def _config(args: argparse.Namespace) -> FingerprintConfig:
    return with_overrides(
        FingerprintConfig(),
        method=args.method,
        alpha=args.alpha,
        matcher=args.matcher,
        k=args.k,
        open_set_threshold=args.open_set_threshold,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``memray fingerprint {evaluate,gallery,attribute}``."""
    p = subparsers.add_parser(
        "fingerprint",
        help="attribute generated sets by their C_T-layer curves",
        description="Reads C_T-layer curves (fingerprints.parquet of an audit, CSV/Parquet, or the authors' text "
        "format). 'evaluate' prints the accuracy of curve attribution against FID-nearest and single-layer "
        "baselines (tables under --out); 'gallery' writes labelled curves to a reusable gallery .parquet; "
        "'attribute' matches curves against a gallery and writes attribution.parquet.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    ev = sub.add_parser(
        "evaluate",
        help="accuracy of curve attribution vs FID-nearest and single-layer C_T",
        description="Prints method vs baselines (correct/total, accuracy, 95% Wilson CI). --out DIR gets "
        "attribution.parquet (curve method), evaluation.parquet (every method's rows with 'method' and 'correct'), "
        "accuracy.csv and confusion.csv.",
    )
    ev.add_argument("--curves", required=True, help="labelled curves (fingerprints.parquet, CSV, Parquet, text)")
    ev.add_argument("--protocol", choices=PROTOCOLS, help="default: split if the file has one, else leave-one-run-out")
    ev.add_argument(
        "--fid",
        help="FID per run for the FID-nearest baseline: 'NAME value' lines or CSV run,fid[,curve_run]",
    )
    ev.add_argument("--no-single-layer", action="store_true", help="omit the per-layer C_T baselines")
    ev.add_argument("--boot", type=int, default=2000, help="draws of the bootstrap over runs (default 2000)")
    ev.add_argument("--boot-seed", type=int, default=0, help="seed of the bootstrap over runs (default 0)")
    ev.add_argument("--out", help="output folder (local or s3://)")
    _matcher_args(ev)
    ga = sub.add_parser(
        "gallery",
        help="save labelled curves as a reusable gallery (Parquet)",
        description="Reads labelled curves (any accepted format) and writes them, optionally only one split, to "
        "a gallery .parquet for 'fingerprint attribute' or an audit's fingerprint.gallery.",
    )
    ga.add_argument("--curves", required=True, help="labelled curves in any accepted format")
    ga.add_argument("--only-split", choices=["gallery", "query"], help="keep only curves with this split")
    ga.add_argument("--out", required=True, help="gallery file (.parquet)")
    at = sub.add_parser(
        "attribute",
        help="attribute curves to the labels of a saved gallery",
        description="Reads a gallery and query curves (labels optional), prints each query's predicted label, "
        "score, runner-up and margin, and with --out writes them to attribution.parquet.",
    )
    at.add_argument("--gallery", required=True, help="gallery file (from 'fingerprint gallery' or any curve file)")
    at.add_argument("--queries", required=True, help="curves to attribute (labels optional)")
    at.add_argument("--out", help="output folder for attribution.parquet")
    at.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="attribute even when the files record another encoder, preprocessing or C_T config (refused by default)",
    )
    _matcher_args(at)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; returns the exit status."""
    return {"evaluate": _evaluate, "gallery": _gallery, "attribute": _attribute}[args.action](args)


def _evaluate(args: argparse.Namespace) -> int:
    from memray.fingerprint.compare import winner_sentence
    from memray.fingerprint.curves import read_curves, to_gallery
    from memray.fingerprint.evaluate import evaluate, format_table, write_evaluation
    from memray.fingerprint.fid import match_fid_runs, read_fid_table
    from memray.fingerprint.open_set import open_set_sentence

    fcfg = _config(args)
    curves, split = to_gallery(read_curves(args.curves), args.curves)
    protocol = args.protocol or ("split" if split is not None else "leave-one-run-out")
    fid = None
    if args.fid:
        runs = dict(zip(curves.runs.tolist(), curves.labels.tolist(), strict=True))
        fid = match_fid_runs(read_fid_table(args.fid), runs)
    ev = evaluate(
        curves, fcfg, protocol, split, fid=fid, single_layer=not args.no_single_layer, n_boot=args.boot,
        boot_seed=args.boot_seed,
    )  # fmt: skip
    print(f"{args.curves}: {len(curves)} curves × {len(curves.layers)} layers, protocol {protocol}")
    print(format_table(ev.summary))
    print(f"(runs resampled: {args.boot} seeded draws, seed {args.boot_seed})")
    print("\n" + winner_sentence(ev.summary, ev.comparison))
    if ev.open_set is not None:
        print(open_set_sentence(ev.open_set))
    print("\nconfusion (curve method; rows = true label):")
    print(ev.confusion.to_string())
    if args.out:
        meta = {"fingerprint": to_dict(fcfg), "curves": args.curves, "fid": args.fid}
        write_evaluation(args.out, ev, meta)
        print(f"\nwrote {join(args.out, schema.ATTRIBUTION_FILE)} and the evaluation tables")
    return 0


def _gallery(args: argparse.Namespace) -> int:
    from memray.fingerprint.curves import read_curves, to_gallery, write_gallery

    curves, split = to_gallery(read_curves(args.curves), args.curves)
    if args.only_split:
        if split is None:
            raise ValueError(f"{args.curves}: --only-split needs a split column")
        curves = curves.select(np.asarray(split == args.only_split, dtype=bool))
    unlabelled = [n for n, lab in zip(curves.names, curves.labels, strict=True) if lab is None]
    if unlabelled:
        raise ValueError(f"{args.curves}: gallery curves need labels; unlabelled: {unlabelled[:5]}")
    from memray.job.preflight import gallery_record

    meta = {"source": args.curves, "only_split": args.only_split}
    job = gallery_record(args.curves).get("job")  # the curves' encoder and C_T record travels with them
    write_gallery(args.out, curves, {**meta, "job": job} if job else meta)
    print(f"wrote {len(curves)} curves ({len(set(curves.labels.tolist()))} labels) to {args.out}")
    return 0


def _attribute(args: argparse.Namespace) -> int:
    from memray.fingerprint.curves import read_curves, read_gallery, to_gallery
    from memray.fingerprint.evaluate import write_attribution
    from memray.fingerprint.fd_profile import check_gallery_method, resolve_method
    from memray.fingerprint.match import attribute
    from memray.fingerprint.open_set import resolve_open_set
    from memray.job.preflight import check_curve_files

    fcfg = _config(args)
    check_curve_files(args.gallery, args.queries, args.allow_mismatch)
    gallery = read_gallery(args.gallery)
    check_gallery_method(fcfg.method, gallery.method, args.gallery)
    queries, _ = to_gallery(read_curves(args.queries), args.queries)
    fcfg, record = resolve_open_set(fcfg, gallery)
    if record:
        print(f"open set: {record['open_set']}")
    fcfg = resolve_method(replace(fcfg, method=gallery.method), queries.fd_test is not None, args.queries)
    att = attribute(queries, gallery, fcfg)
    print(att.to_string(index=False))
    if args.out:
        meta = {"fingerprint": to_dict(fcfg), "gallery": args.gallery, "queries": args.queries, **record}
        write_attribution(join(args.out, schema.ATTRIBUTION_FILE), att, meta)
        print(f"wrote {join(args.out, schema.ATTRIBUTION_FILE)}")
    return 0
