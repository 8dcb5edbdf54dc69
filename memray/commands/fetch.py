"""``memray fetch``: write a sample's image to a file, by its source or by (run folder, set, sample id)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``memray fetch``."""
    p = sub.add_parser(
        "fetch",
        help="save the image of a sample (a source from copies.parquet, or a run's set and sample id)",
        description="Read one sample's image from where it is stored (local file, s3://, tar/Parquet/.npz member) "
        "and save it as PNG. SOURCE is a gen_source/train_source value of copies.parquet; or give --run, --set, --id.",
    )
    p.add_argument("source", nargs="?", help="e.g. data/train.npz#17 or s3://bucket/shard-0001.tar#000123")
    p.add_argument("--run", help="a run folder (its run.json lists each set's inputs)")
    p.add_argument("--set", dest="set_name", help="the set's name in that run (train, test or a generated set)")
    p.add_argument("--id", dest="sample_id", help="the sample id (as in the result tables)")
    p.add_argument("-o", "--out", required=True, help="PNG file to write")
    p.add_argument("--column", help="Parquet image column / .npz key / tar image extension (default: the set's)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help="fsspec option")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch and save; prints the source and the image size."""
    from PIL import Image

    from memray.commands import parse_key_values
    from memray.io import schema, storage
    from memray.io.fetch import fetch_by_id, fetch_image

    storage_options = parse_key_values(args.storage_option, "--storage-option") or None
    if args.source:
        source, img = args.source, fetch_image(args.source, storage_options, args.column)
    elif args.run and args.set_name and args.sample_id:
        run_json = storage.read_json(storage.join(args.run, schema.RUN_FILE), storage_options)
        job = run_json.get("job_config", {})
        specs = {s["name"]: s for s in [job.get("train"), job.get("test"), *job.get("generated", [])] if s}
        if args.set_name not in specs:
            raise ValueError(f"set {args.set_name!r} is not in {args.run}; its sets: {sorted(specs)}")
        spec = specs[args.set_name]
        if not spec.get("urls"):
            raise ValueError(f"set {args.set_name!r} was given as embeddings: there are no images to fetch")
        column = args.column or spec.get("image_column")
        source, img = fetch_by_id(list(spec["urls"]), args.sample_id, storage_options, column)
    else:
        raise ValueError("give a SOURCE, or --run, --set and --id")
    import os

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(img).save(args.out)
    print(f"{source} -> {args.out} ({img.shape[1]}x{img.shape[0]})")
    return 0
