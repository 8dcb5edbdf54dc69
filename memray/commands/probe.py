"""``memray probe``: what each layer of your encoder responds to, from the paper's probe sets.

Transformed copies of a seeded sample of the training set (rotated, block-shuffled, downsampled, noisy, cropped,
flipped, exact and near copies) are scored against the training set like generated sets; ``probes.parquet``
holds C_T per probe and layer, ``probes.json`` the layers where each probe is detected and which layers to read
for low-level and for semantic copying.
"""

from __future__ import annotations

import argparse

from memray.commands import parse_key_values


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``memray probe``."""
    p = sub.add_parser(
        "probe",
        help="per-layer sensitivity of the encoder to known transformations of training images (the paper's probes)",
        description="Build probe sets from a seeded sample of the training set and score them per layer. Give "
        "--config (its train/test sets and encoder; its generated sets are not scored) or --train/--test/--out.",
    )
    p.add_argument("--config", help="an audit YAML file")
    p.add_argument("--train", metavar="DIR_OR_URL", help="training images")
    p.add_argument("--test", metavar="DIR_OR_URL", help="held-out images")
    p.add_argument("--out", "--output", dest="output", help="output folder (default: <config output>_probes)")
    p.add_argument("--model", help="timm model name")
    p.add_argument("--weights", help=".safetensors weights of --model")
    p.add_argument("--random-init", action="store_true", help="random weights (recorded)")
    p.add_argument("--probes", help="comma-separated probe names (default: all)")
    p.add_argument("--n", type=int, help="training images sampled (default 500)")
    p.add_argument("--seed", type=int, help="seed of the sample and the transforms (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def probe_config(args: argparse.Namespace):
    """The audit config of a probe-only run (:func:`memray.api.probe_config` from the command line)."""
    from memray.api import probe_config as build

    probes = tuple(x.strip() for x in args.probes.split(",") if x.strip()) if args.probes else None
    return build(args.config, args.train, args.test, args.output, args.model, args.weights, args.random_init,
                 probes, args.n, args.seed, parse_key_values(args.set, "--set"))  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Build and score the probe sets; print the per-probe C_T table and the recommendation."""
    from memray.io import schema
    from memray.job.run import run_job
    from memray.ray.runner import RayRunner

    cfg = probe_config(args)
    result = run_job(cfg, RayRunner(args.address, args.num_cpus))
    print_probes(cfg.output, cfg.storage)
    print(f"\nResults in {cfg.output} ({schema.PROBES_FILE}, {schema.PROBES_SUMMARY_FILE}, ...)")
    if result.report:
        print(f"Report: {result.report}")
    return 0


def print_probes(out: str, storage_options: dict | None) -> None:
    """The probe table (C_T per layer and probe) and the recommendation, from a run folder."""
    import pandas as pd

    from memray.io import schema, storage

    with storage.open_url(storage.join(out, schema.PROBES_FILE), "rb", storage_options) as fh:
        table = pd.read_parquet(fh)
    summary = storage.read_json(storage.join(out, schema.PROBES_SUMMARY_FILE), storage_options)
    wide = table.pivot(index=schema.LAYER, columns=schema.PROBE, values=schema.CT)
    print("\nProbe C_T per layer (rows) and probe (columns); negative and significant = detected:")
    print(wide.round(1).to_string())
    for name, rec in summary.get("probes", {}).items():
        layers = rec.get("detected_layers") or []
        print(f"  {name:<12} detected at layers {','.join(map(str, layers)) if layers else 'none'}")
    print("\n" + summary.get("recommendation", {}).get("text", ""))
