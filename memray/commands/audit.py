"""``memray audit``: run the Ray audit job from folders/URLs given on the command line, or from a YAML config.

``memray audit --train DIR --test DIR --gen NAME=DIR [--gen ...] --out DIR`` runs the paper's defaults with no
config file; ``--write-config FILE`` saves the YAML it ran (for ``ray job submit`` on a cluster).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from memray.commands import add_encoder_input_flags, encoder_input_settings, parse_key_values
from memray.io import schema, storage

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``memray audit``."""
    p = sub.add_parser(
        "audit",
        help="embed image sets on Ray and score memorization (C_T per layer)",
        description="Run the audit job on folders/URLs (--train/--test/--gen/--out, the paper's defaults) or as "
        "described by a YAML config (--config). Connects to RAY_ADDRESS when set (ray job submit), else starts a "
        "local Ray.",
    )
    p.add_argument("--config", help="YAML file (see jobs/configs/); or give --train/--test/--gen/--out instead")
    p.add_argument("--train", metavar="DIR_OR_URL", help="training images (folder, s3:// prefix, tar/Parquet/.npz)")
    p.add_argument("--test", metavar="DIR_OR_URL", help="held-out images from the training distribution")
    p.add_argument(
        "--gen", action="append", default=[], metavar="NAME=DIR_OR_URL",
        help="a generated set (repeat for several)",
    )  # fmt: skip
    p.add_argument(
        "--label", action="append", default=[], metavar="NAME=LABEL",
        help="the model family of generated set NAME (labelled sets form the fingerprint gallery)",
    )  # fmt: skip
    p.add_argument("--out", "--output", dest="output", help="output folder or s3:// prefix (overrides the config's)")
    p.add_argument("--model", help="timm model name (default vit_base_patch16_224.orig_in21k, the paper's)")
    p.add_argument("--weights", help="local or s3:// .safetensors weights of --model (else the timm hub)")
    p.add_argument("--random-init", action="store_true", help="random weights (no download; recorded)")
    add_encoder_input_flags(p)
    p.add_argument("--write-config", metavar="FILE", help="also write the config this run uses as YAML")
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
    starts; nothing is written to the output folder before all checks passed. The output folder (and a reference
    being built) is then claimed (:mod:`memray.job.claims`): a second run into it is refused at once.
    """
    from memray.fingerprint.config import FingerprintConfig
    from memray.job.run import run_job

    overrides = parse_key_values(args.set, "--set")
    if args.output:
        overrides["output"] = args.output
    if args.gallery:
        overrides["fingerprint.gallery"] = args.gallery
    cfg = _config(args, overrides)
    if (args.fingerprint or args.gallery) and cfg.fingerprint is None:
        cfg = dataclasses.replace(cfg, fingerprint=FingerprintConfig())
    from memray.ray.runner import RayRunner  # imports no Ray until the runner starts, after the checks

    def on_started() -> None:
        if args.write_config:
            write_config(cfg, args.write_config)

    result = run_job(cfg, RayRunner(args.address, args.num_cpus), args.allow_gallery_mismatch, on_started)
    print_summary(result)
    if result.attribution is not None:
        print("\nAttribution of the unlabelled generated sets (C_T-layer fingerprints, 1-NN):")
        print(result.attribution.to_string(index=False))
    reported = sum(c["rows_reported"] + c.get("files_skipped", 0) for c in result.stats["counts"].values())
    if reported:
        print(f"\n{reported} image(s) not embedded (failed or skipped): see {schema.ERRORS_FILE}")
    scores = storage.join(cfg.output, schema.CT_SCORES_FILE)
    files = ", ".join((schema.RUN_FILE, schema.VERDICTS_FILE, schema.CT_SCORES_FILE, schema.COPIES_FILE))
    print(f"\nResults in {cfg.output} ({files}, ...)")
    print(f"Read them with: python -c \"import pandas as pd; print(pd.read_parquet('{scores}'))\"")
    print(f"Report: {result.report}" if result.report else "Report: not written (see the log; `memray report DIR`)")
    return 0


def _config(args: argparse.Namespace, overrides: dict):
    """The audit config: the YAML file with overrides, or one built from --train/--test/--gen/--out."""
    from memray.api import audit_config_data
    from memray.job.config import audit_config_from_dict, load_audit_config

    overrides.update({f"embed.{k}": v for k, v in encoder_input_settings(args).items()})  # --pooling, --mean, …
    folders = {"--train": args.train, "--test": args.test, "--gen": args.gen, "--label": args.label}
    if args.config:
        if any(folders.values()):
            raise ValueError(f"give either --config or {'/'.join(folders)}/--out, not both (labels: --set)")
        emb = {"model": args.model, "weights": args.weights, "random_init": args.random_init or None}
        overrides.update({f"embed.{k}": v for k, v in emb.items() if v})
        return load_audit_config(args.config, overrides)
    required = {"--train": args.train, "--test": args.test, "--gen": args.gen, "--out": args.output}
    missing = [k for k, v in required.items() if not v]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (or --config FILE)")
    labels = {}
    for spec in args.label:  # the label is a name, kept as typed (not read as YAML: "1.10" stays "1.10")
        name, sep, label = spec.partition("=")
        if not sep or not name or not label:
            raise ValueError(f"--label {spec!r}: use NAME=FAMILY")
        labels[name] = label
    gens = {}
    for spec in args.gen:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--gen {spec!r}: use NAME=DIR_OR_URL")
        if name in gens:
            raise ValueError(f"--gen {name}=…: the name {name!r} is given twice; each generated set needs its own name")
        gens[name] = {"urls": [where], **({"label": labels.pop(name)} if name in labels else {})}
    if labels:
        raise ValueError(f"--label {sorted(labels)}: no --gen set of that name")
    overrides.pop("output", None)
    data = audit_config_data(args.train, args.test, gens, args.output, args.model, args.weights, args.random_init,
                             overrides)  # fmt: skip
    return audit_config_from_dict(data, "memray audit")


def write_config(cfg, path: str) -> None:
    """Write ``cfg`` as a YAML audit config (storage options left out: they may hold secrets)."""
    import yaml

    from memray.config import to_dict

    data = to_dict(cfg)
    data.pop("storage_options", None)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    log.info("wrote the config of this run to %s", path)


def _cells(flagged, shown: int = 4) -> str:
    """``["L1:c0", "L1:c1", …]`` shortened to its first ``shown`` cells and a count."""
    cells = [str(c) for c in flagged]
    return ",".join(cells) if len(cells) <= shown else f"{len(cells)} cells ({','.join(cells[:shown])}, …)"


def print_summary(result) -> None:
    """The verdict per generated set, C_T per layer and set, and the probe sets' table and recommendation."""
    from memray.job.probes import is_probe_set

    v = result.verdicts
    if v is not None and len(v):
        alpha = float(v[schema.ALPHA].iloc[0])
        print(f"\nVerdict per generated set (one Holm family per set: C_T, cells, replication and concentration "
              f"per layer; alpha = {alpha:g}):")  # fmt: skip
        for _, row in v[~v[schema.GEN_SET].map(is_probe_set)].iterrows():
            where = f" ({row[schema.TEST]})" if row[schema.P_HOLM] < alpha else ""
            layers, reps, flagged = (list(row[c]) for c in (schema.LAYERS, schema.REPLICATION_LAYERS,
                                                            schema.FLAGGED_CELLS))  # fmt: skip
            where += f" C_T at layers {','.join(map(str, layers))}" if layers else ""
            if reps:
                spaces = ["pixels" if x == schema.PIXEL_LAYER else str(x) for x in reps]
                where += f"; replicating at {', '.join(spaces)}"
            cells = f"; flagged {_cells(flagged)}" if flagged else ""
            advice = row[schema.ADVICE] and row[schema.VERDICT] != schema.VERDICT_COPYING
            note = f"\n    note: {row[schema.ADVICE]}" if advice else ""
            print(f"  {row[schema.GEN_SET]:<16} {row[schema.VERDICT]:<19} p_holm={row[schema.P_HOLM]:.2g}{where}"
                  f"{cells}{note}")  # fmt: skip
    scores = result.ct_scores[~result.ct_scores[schema.GEN_SET].map(is_probe_set)]
    table = scores.pivot(index=schema.LAYER, columns=schema.GEN_SET, values=schema.CT)
    print("\nC_T per layer (rows) and generated set (columns); C_T << 0 means copying:")
    print(table.round(2).to_string())
    if result.ct_scores[schema.GEN_SET].map(is_probe_set).any():
        from memray.commands.probe import print_probes

        print_probes(result.output, result.storage_options)
