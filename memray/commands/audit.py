"""``memray audit``: run the Ray audit job from a YAML config (locally or on the connected cluster)."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from memray.commands import parse_key_values
from memray.io import schema, storage

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``memray audit``."""
    p = sub.add_parser(
        "audit",
        help="embed image sets on Ray and score memorization (C_T per layer)",
        description="Run the audit job described by a YAML config. Connects to RAY_ADDRESS when set "
        "(ray job submit), else starts a local Ray.",
    )
    p.add_argument("--config", required=True, help="YAML file (see jobs/configs/)")
    p.add_argument("--output", help="override the config's output URL (local folder or s3://…)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by dotted key, e.g. --set ct.seed=1 --set resources.actors=2 (YAML values)",
    )
    p.add_argument(
        "--fingerprint",
        action="store_true",
        help="also compute C_T-layer fingerprints (default settings unless the config has a 'fingerprint' section)",
    )
    p.add_argument("--gallery", help="attribute against this saved gallery.parquet (implies --fingerprint)")
    p.add_argument(
        "--allow-gallery-mismatch",
        action="store_true",
        help="use a gallery made with another encoder, preprocessing or C_T config (refused by default)",
    )
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the config, start or join Ray, run the job; print a per-set, per-layer C_T table and the paths.

    Every check that needs no Ray (inputs listed, encoder and weights, sizes, output, gallery) runs before Ray
    starts; nothing is written to the output folder before all checks passed.
    """
    from memray.config import FingerprintConfig
    from memray.job.preflight import preflight
    from memray.job_config import load_audit_config

    overrides = parse_key_values(args.set, "--set")
    if args.output:
        overrides["output"] = args.output
    if args.gallery:
        overrides["fingerprint.gallery"] = args.gallery
    cfg = load_audit_config(args.config, overrides)
    if (args.fingerprint or args.gallery) and cfg.fingerprint is None:
        cfg = dataclasses.replace(cfg, fingerprint=FingerprintConfig())
    checked = preflight(cfg, args.allow_gallery_mismatch)
    from memray.ray.pipeline import run_audit  # Ray is imported only once the config passed its checks
    from memray.ray.session import init_ray

    init_ray(args.address, args.num_cpus)
    result = run_audit(cfg, checked=checked, allow_gallery_mismatch=args.allow_gallery_mismatch)
    table = result.ct_scores.pivot(index=schema.LAYER, columns=schema.GEN_SET, values=schema.CT)
    print("\nC_T per layer (rows) and generated set (columns); C_T << 0 means copying:")
    print(table.round(2).to_string())
    if result.attribution is not None:
        print("\nAttribution of the unlabelled generated sets (C_T-layer fingerprints, 1-NN):")
        print(result.attribution.to_string(index=False))
    reported = sum(c["rows_reported"] + c.get("files_skipped", 0) for c in result.stats["counts"].values())
    if reported:
        print(f"\n{reported} image(s) not embedded (failed or skipped): see {schema.ERRORS_FILE}")
    scores = storage.join(cfg.output, schema.CT_SCORES_FILE)
    print(f"\nResults in {cfg.output} (run.json, {schema.CT_SCORES_FILE}, {schema.CT_CELLS_FILE}, ...)")
    print(f"Read them with: python -c \"import pandas as pd; print(pd.read_parquet('{scores}'))\"")
    return 0
