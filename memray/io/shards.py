"""Deterministic embedding shards: which images belong to which shard, and reading one shard into rows.

A shard is a pure function of the sorted input list and ``shard_rows``: image files are chunked in sorted
order; a tar, Parquet or ``.npz`` file is one shard of its own. Reading a shard (streamed, one image at a time)
decodes every image and prepares it for the encoder (resize + crop to uint8); images that cannot be decoded, and
units that cannot be read (status ``unreadable``: one row named after the file or archive, after the samples it did
yield), become rows with a ``status`` and an ``error`` instead of being dropped, so rows read = rows embedded + rows
reported. Files the listing leaves out are reported through ``plan_shards(..., skipped=[])`` (status ``skipped``).
A shard's rows may reach the encoder in several batches: :func:`contiguous_runs` splits a batch into per-shard row
ranges and :class:`RowRanges` tells when a shard's ranges tile all of its rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.images import STATUS_SKIPPED, STATUS_UNREADABLE, STATUSES, ImageDecodeError, decode_array, decode_image
from memray.io.sources import Unit, UnitReadError, list_units, read_unit

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
VIEWS = "views"
"""Column of a read row holding its image under the further views (V, C, S, S) (:func:`iter_shard`)."""
Prepare = Callable[[np.ndarray], np.ndarray]
"""An (H, W, 3) uint8 RGB image → the encoder's uint8 (C, S, S) input (:func:`memray.embedding.embed.make_prepare`)."""
ROWS_UNKNOWN = -1
"""``shard_rows`` of a streamed row that is not its shard's last (see :func:`iter_shard`)."""


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
    :func:`memray.io.sources.list_units`), for the job to report as ``skipped`` rows.
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


def iter_shard(
    plan: ShardPlan,
    prepare: Prepare,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
    views: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Iterator[dict[str, Any]]:
    """Read, decode and prepare a shard's images one at a time (a generator: memory of one image, not the shard).

    Args:
        plan: the shard.
        prepare: callable mapping an (H, W, 3) uint8 RGB image to the encoder's uint8 (C, S, S) input.
        max_pixels: decompression-bomb limit; larger images become ``too_large`` rows.
        storage_options: fsspec options for remote URLs.
        views: ``(rgb, prepared) -> (V, C, S, S)`` uint8: the image under further views
            (:class:`memray.embedding.views.ViewPrepare`; V may be 0), in column ``views`` of every row (zeros on
            failed rows); ``None``: no such column.

    Yields:
        One dict per image in shard order: ``set, shard, row, shard_rows, sample_id, status, error, image``.
        ``shard_rows`` is :data:`ROWS_UNKNOWN` on every row but the last, which carries the shard's row count (the
        count is known only once the shard is read; one row is held back to mark it). Failed rows carry a zero image
        of the prepared shape so every row has one schema. A unit that cannot be read adds one ``unreadable`` row
        whose ``sample_id`` is the unit's name (after any samples it did yield). A shard without any image yields
        nothing.
    """
    rows = _ShardRows(plan, prepare, views)
    held: dict[str, Any] | None = None
    for nxt in rows.samples(max_pixels, storage_options):
        if held is not None:
            yield held
        held = nxt
    if held is not None:
        held[SHARD_ROWS] = rows.n
        yield held


class _ShardRows:
    """The rows of one shard as :func:`iter_shard` yields them, numbered as they are made."""

    def __init__(self, plan: ShardPlan, prepare: Prepare, views: Callable[[np.ndarray, np.ndarray], np.ndarray] | None):
        self.plan, self.prepare, self.views = plan, prepare, views
        self.n = 0
        self.shape: tuple[int, ...] | None = None

    def row(self, sample_id: str, status: str, error: str, image: np.ndarray, rgb: np.ndarray | None = None) -> dict:
        """The next row (``rgb``: the decoded image, for the views; failed rows get zero views)."""
        self.n += 1
        out = {schema.SET: self.plan.set_name, SHARD: self.plan.shard, ROW: self.n - 1, SHARD_ROWS: ROWS_UNKNOWN}
        out |= {schema.SAMPLE_ID: sample_id, schema.STATUS: status, schema.ERROR: error, IMAGE: image}
        if self.views is not None:
            under = self.views(rgb if rgb is not None else np.zeros((8, 8, 3), np.uint8), image)
            out[VIEWS] = under if rgb is not None else np.zeros_like(under)
        return out

    def failed(self) -> np.ndarray:
        """A zero image of the prepared shape (the shape of an 8×8 image's preparation until one decoded)."""
        if self.shape is None:
            self.shape = tuple(self.prepare(np.zeros((8, 8, 3), np.uint8)).shape)
        return np.zeros(self.shape, np.uint8)

    def samples(self, max_pixels: int, storage_options: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        """Every row of the shard's units in order; decode failures and unreadable units as rows."""
        plan = self.plan
        for unit in plan.units:
            try:
                for sample_id, payload in read_unit(unit, storage_options):
                    try:
                        if isinstance(payload, np.ndarray):
                            rgb = decode_array(payload)
                        else:
                            rgb = decode_image(payload, max_pixels=max_pixels)
                        image = np.ascontiguousarray(self.prepare(rgb), dtype=np.uint8)
                        self.shape = image.shape
                        yield self.row(sample_id, STATUS_OK, "", image, rgb)
                    except ImageDecodeError as exc:
                        yield self.row(sample_id, exc.status, str(exc), self.failed())
            except UnitReadError as exc:  # one bad file/archive: report it and read on
                log.warning("set %s %s: %s", plan.set_name, plan.key, exc)
                yield self.row(unit.name, STATUS_UNREADABLE, str(exc), self.failed())


def read_shard(
    plan: ShardPlan,
    prepare: Prepare,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
    views: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Every row of :func:`iter_shard` in a list, each with ``shard_rows`` = the shard's row count.

    For callers that want the whole shard at once (``memray embed``, tests); the Ray job streams
    :func:`iter_shard` instead.
    """
    rows = list(iter_shard(plan, prepare, max_pixels, storage_options, views))
    for r in rows:
        r[SHARD_ROWS] = len(rows)
    return rows


def contiguous_runs(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Positions of a batch's rows grouped by (set, shard) and contiguous ``row`` range, each run in row order."""
    sets = batch[schema.SET].astype(str)
    order = np.lexsort((batch[ROW], batch[SHARD], sets))
    s, h, r = sets[order], batch[SHARD][order], batch[ROW][order]
    cut = (s[1:] != s[:-1]) | (h[1:] != h[:-1]) | (r[1:] != r[:-1] + 1)
    return np.split(order, np.flatnonzero(cut) + 1)


class RowRanges:
    """The row ranges of one shard received so far, as records (dicts) with ``first``, ``last`` (inclusive) and
    ``shard_rows`` (the row count, on the range holding the shard's last row, else :data:`ROWS_UNKNOWN`).

    Records are keyed by range, so a repeated record (a retried batch) counts once.
    """

    def __init__(self) -> None:
        self.runs: dict[tuple[int, int], dict[str, Any]] = {}
        self.total: int | None = None
        self.rows = 0

    def add(self, rec: dict[str, Any]) -> None:
        key = (rec["first"], rec["last"])
        self.rows += 0 if key in self.runs else key[1] - key[0] + 1
        self.runs[key] = rec
        if rec[SHARD_ROWS] != ROWS_UNKNOWN:
            self.total = rec[SHARD_ROWS]

    def cover(self) -> list[dict[str, Any]] | None:
        """Records whose ranges tile ``[0, shard_rows)``, in row order; ``None`` while rows are missing."""
        if self.total is None or self.rows < self.total:
            return None
        ends: dict[int, list[int]] = defaultdict(list)
        for first, last in self.runs:
            ends[first].append(last)
        came: dict[int, int] = {0: -1}  # row reached → first row of the range that reached it
        stack = [0]
        while stack:
            pos = stack.pop()
            for last in ends.get(pos, ()):
                if last + 1 not in came:
                    came[last + 1] = pos
                    stack.append(last + 1)
        if self.total not in came:
            return None
        out, pos = [], self.total
        while pos:
            out.append(self.runs[(came[pos], pos - 1)])
            pos = came[pos]
        return out[::-1]
