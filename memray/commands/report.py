"""``memray report RUN_DIR``: (re)build the self-contained HTML report of a run folder."""

from __future__ import annotations

import argparse
from typing import Any


def parse_storage_options(specs: list[str] | None) -> dict[str, Any]:
    """``K=V`` pairs → nested fsspec options; dotted keys nest (``client_kwargs.endpoint_url=…``), values are
    YAML scalars (``anon=true`` → True, ``12`` → 12)."""
    import yaml

    out: dict[str, Any] = {}
    for spec in specs or []:
        key, sep, raw = spec.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--storage-option {spec!r}: give KEY=VALUE")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--storage-option {spec!r}: {p!r} is both a value and a section")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``memray report``."""
    p = subparsers.add_parser(
        "report",
        help="write report.html for a run folder: verdicts, C_T curves, likeliest copies, fingerprints",
        description="Read a run folder (local or s3://) and write one self-contained HTML report (inline figures "
        "and thumbnails, no external requests) to RUN_DIR/report.html or --out.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (local path or s3:// URL)")
    p.add_argument("--out", metavar="FILE", help="where to write the report (default RUN_DIR/report.html)")
    p.add_argument(
        "--storage-option", action="append", metavar="K=V", default=[],
        help="fsspec option for reading the run and its images, repeatable; dotted keys nest "
        "(client_kwargs.endpoint_url=http://…)",
    )  # fmt: skip
    p.add_argument("--max-sets", type=int, default=8, help="generated sets with a copy gallery (default 8)")
    p.add_argument("--copies-per-set", type=int, default=8, help="generated samples per gallery (default 8)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it was written."""
    from memray.report import build_report

    url = build_report(
        args.run_dir,
        storage_options=parse_storage_options(getattr(args, "storage_option", None)) or None,
        out_url=getattr(args, "out", None),
        max_sets=getattr(args, "max_sets", 8),
        copies_per_set=getattr(args, "copies_per_set", 8),
    )
    print(url)
    return 0
