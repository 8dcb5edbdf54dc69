"""Deterministic embedding shards: which images belong to which shard, and reading one shard into rows.

A shard is a pure function of the sorted input list and ``shard_rows``: image files are chunked in sorted
order; a tar, Parquet or ``.npz`` file is one shard of its own. Reading a shard decodes every image and
prepares it for the encoder (resize + crop to uint8); images that cannot be decoded become rows with a
``status`` and an ``error`` instead of being dropped, so rows read = rows embedded + rows reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray import schema
from memray.images import ImageDecodeError, decode_array, decode_image
from memray.job_config import DatasetSpec
from memray.sources import Unit, list_units, read_unit

log = logging.getLogger(__name__)

STATUS_OK = "ok"
# Columns of a read row (besides the image itself).
SHARD = "shard"
ROW = "row"
SHARD_ROWS = "shard_rows"
IMAGE = "image"


@dataclass(frozen=True)
class ShardPlan:
    """One shard of one set: a tuple of source units read in order."""

    set_name: str
    shard: int
    units: tuple[Unit, ...]

    @property
    def key(self) -> str:
        """Stable file stem of this shard's outputs."""
        return f"shard-{self.shard:05d}"

    def to_json(self) -> str:
        """A JSON string (Arrow-friendly, for Ray Data rows)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(d["set_name"], int(d["shard"]), tuple(Unit(**u) for u in d["units"]))


def plan_shards(spec: DatasetSpec, shard_rows: int, storage_options: dict[str, Any] | None = None) -> list[ShardPlan]:
    """Split a dataset's sorted units into shards: files in chunks of ``shard_rows``, containers one each."""
    units = list_units(list(spec.urls), storage_options, image_column=spec.image_column)
    plans: list[ShardPlan] = []
    files: list[Unit] = []

    def flush() -> None:
        if files:
            plans.append(ShardPlan(spec.name, len(plans), tuple(files)))
            files.clear()

    for unit in units:
        if unit.kind == "file":
            files.append(unit)
            if len(files) == shard_rows:
                flush()
        else:
            flush()
            plans.append(ShardPlan(spec.name, len(plans), (unit,)))
    flush()
    if not plans:
        raise FileNotFoundError(f"set {spec.name!r}: no images found under {', '.join(spec.urls)}")
    return plans


def read_shard(
    plan: ShardPlan,
    prepare: Any,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read, decode and prepare every image of a shard.

    Args:
        plan: the shard.
        prepare: callable mapping an (H, W, 3) uint8 RGB image to the encoder's uint8 (3, S, S) input.
        max_pixels: decompression-bomb limit; larger images become ``too_large`` rows.
        storage_options: fsspec options for remote URLs.

    Returns:
        One dict per image in shard order: ``set, shard, row, shard_rows, sample_id, status, error, image``;
        failed rows carry a zero image of the same shape so every row has one schema.
    """
    rows: list[dict[str, Any]] = []
    shape: tuple[int, ...] | None = None
    for unit in plan.units:
        for sample_id, payload in read_unit(unit, storage_options):
            status, error, image = STATUS_OK, "", None
            try:
                if isinstance(payload, np.ndarray):
                    rgb = decode_array(payload)
                else:
                    rgb = decode_image(payload, max_pixels=max_pixels)
                image = np.ascontiguousarray(prepare(rgb), dtype=np.uint8)
                shape = image.shape
            except ImageDecodeError as exc:
                status, error = exc.status, str(exc)
            rows.append(
                {
                    schema.SET: plan.set_name,
                    SHARD: plan.shard,
                    ROW: len(rows),
                    schema.SAMPLE_ID: sample_id,
                    schema.STATUS: status,
                    schema.ERROR: error,
                    IMAGE: image,
                }
            )
    if shape is None:
        shape = tuple(prepare(np.zeros((8, 8, 3), np.uint8)).shape)
    for row in rows:
        row[SHARD_ROWS] = len(rows)
        if row[IMAGE] is None:
            row[IMAGE] = np.zeros(shape, np.uint8)
    return rows
