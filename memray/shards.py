"""Deterministic embedding shards: which images belong to which shard, and reading one shard into rows.

A shard is a pure function of the sorted input list and ``shard_rows``: image files are chunked in sorted
order; a tar, Parquet or ``.npz`` file is one shard of its own. Reading a shard decodes every image and
prepares it for the encoder (resize + crop to uint8); images that cannot be decoded, and units that cannot be
read (status ``unreadable``: one row named after the file or archive, after the samples it did yield), become rows
with a ``status`` and an ``error`` instead of being dropped, so rows read = rows embedded + rows reported. Files the
listing leaves out are reported through ``plan_shards(..., skipped=[])`` (status ``skipped``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray import schema
from memray.images import STATUS_SKIPPED, STATUS_UNREADABLE, STATUSES, ImageDecodeError, decode_array, decode_image
from memray.job_config import DatasetSpec
from memray.sources import Unit, UnitReadError, list_units, read_unit

log = logging.getLogger(__name__)

STATUS_OK = "ok"
ROW_STATUSES: tuple[str, ...] = (STATUS_OK, *STATUSES, STATUS_UNREADABLE, STATUS_SKIPPED)
"""Every ``status`` a row of the job can carry: ``ok``, a decode failure, ``unreadable`` (the file/archive could
not be read) or ``skipped`` (listed but not an input: hidden, other extension)."""
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
        """Inverse of :meth:`to_json` (JSON written before units had ``size``/``stamp`` loads too)."""
        d = json.loads(text)
        return cls(d["set_name"], int(d["shard"]), tuple(Unit(**u) for u in d["units"]))

    def listing(self) -> list[list]:
        """Per unit, as listed: ``[name, kind, size, stamp]`` (size in bytes or None; stamp: mtime ns / ETag)."""
        return [[u.name, u.kind, u.size, u.stamp] for u in self.units]

    def listing_digest(self) -> str:
        """12 hex chars of sha256 over the canonical JSON of the set name and :meth:`listing`.

        Changes when a unit of this shard is added, removed, renamed, resized or rewritten (new mtime/ETag), so a
        resumed job can refuse or redo a shard whose inputs changed.
        """
        text = json.dumps({"set": self.set_name, "listing": self.listing()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def plan_shards(
    spec: DatasetSpec,
    shard_rows: int,
    storage_options: dict[str, Any] | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> list[ShardPlan]:
    """Split a dataset's sorted units into shards: files in chunks of ``shard_rows``, containers one each.

    ``skipped``: if given, ``(url, reason)`` is appended for every listed file that is not an input (see
    :func:`memray.sources.list_units`), for the job to report as ``skipped`` rows.
    """
    units = list_units(list(spec.urls), storage_options, image_column=spec.image_column, skipped=skipped)
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
        failed rows carry a zero image of the same shape so every row has one schema. A unit that cannot be read
        adds one ``unreadable`` row whose ``sample_id`` is the unit's name (after any samples it did yield).
    """
    rows: list[dict[str, Any]] = []
    shape: tuple[int, ...] | None = None

    def add(sample_id: str, status: str, error: str, image: np.ndarray | None) -> None:
        row = {schema.SET: plan.set_name, SHARD: plan.shard, ROW: len(rows), schema.SAMPLE_ID: sample_id}
        rows.append(row | {schema.STATUS: status, schema.ERROR: error, IMAGE: image})

    for unit in plan.units:
        try:
            for sample_id, payload in read_unit(unit, storage_options):
                try:
                    if isinstance(payload, np.ndarray):
                        rgb = decode_array(payload)
                    else:
                        rgb = decode_image(payload, max_pixels=max_pixels)
                    image = np.ascontiguousarray(prepare(rgb), dtype=np.uint8)
                    shape = image.shape
                    add(sample_id, STATUS_OK, "", image)
                except ImageDecodeError as exc:
                    add(sample_id, exc.status, str(exc), None)
        except UnitReadError as exc:  # one bad file/archive: report it and read on
            log.warning("set %s %s: %s", plan.set_name, plan.key, exc)
            add(unit.name, STATUS_UNREADABLE, str(exc), None)
    if shape is None:
        shape = tuple(prepare(np.zeros((8, 8, 3), np.uint8)).shape)
    for row in rows:
        row[SHARD_ROWS] = len(rows)
        if row[IMAGE] is None:
            row[IMAGE] = np.zeros(shape, np.uint8)
    return rows
