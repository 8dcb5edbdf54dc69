"""Completion markers: the one place the job reads, writes and validates "this work is done", whatever runs it.

A marker is written last, after the files it vouches for, and holds the key (:mod:`memray.job.keys`) of the inputs
the work was made from; a rerun keeps the work only while the marker is readable, its key still matches and its
files open. The engine that did the work (Ray actors, or :class:`memray.job.local.LocalEngine` in process) only
hands over the counts; the file names and JSON contents below are part of the on-disk format (older folders resume).

- **shard** ``<root>/embeddings/<set>/shard-NNNNN.done.json``: rows read/embedded/reported, ``embed_key``, the
  weights record, the shard's input listing and its digest, the rows with NaN/inf features;
- **layer** ``<out>/layers/layer_<ℓ>/done.json``: the layer's stats, ``score_key`` and its part files;
- **fit** ``<reference>/reference.json`` → ``fits``: ``{fit key: {"layers": […], "finished": ISO time}}`` once every
  layer's fit is kept. Inside one fit workspace, the ``fit`` entry saved last marks the workspace complete; that one
  stays in :mod:`memray.stats.fit_store`, because the pure core (:mod:`memray.stats.engine`) writes and reads it and
  the core imports no job module; :func:`workspace_fit_done` reads it for the job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from memray.io import finite, storage
from memray.io.embedding_inputs import DONE_SUFFIX
from memray.io.shards import ShardPlan
from memray.job.shard_files import shard_url
from memray.stats.fit_store import FIT_KEY
from memray.stats.workspace import Workspace

log = logging.getLogger(__name__)
SHARD_MARKER = DONE_SUFFIX  # shard-NNNNN.done.json beside shard-NNNNN.parquet
LAYER_MARKER = "done.json"  # layers/layer_<ℓ>/done.json
REFERENCE_FILE = "reference.json"
FITS = "fits"  # reference.json: {fit key: {"layers": [...], "finished": ISO time}} of every complete fit


# shards ---------------------------------------------------------------------------------------------------------


def shard_record(
    plan: ShardPlan,
    rows_read: int,
    written: dict[str, int],
    embed_key: str,
    weights: dict[str, Any] | None,
    nonfinite: dict | None = None,
    views: tuple[str, ...] = (),
    pixels: int = 0,
) -> dict[str, Any]:
    """A shard marker's contents: ``rows_read``, the ``written`` counts (``rows_embedded``, ``rows_reported``, as
    :func:`memray.job.shard_files.finish_shard` returns them), ``embed_key``, ``weights`` (when there is a record),
    ``nonfinite`` (``{layer: [rows, [sample ids]]}``), ``pixels`` (the side of pixel space, when on), ``views``
    (the further views the shard's file holds, when any: :mod:`memray.embedding.views`), ``listing_digest`` and
    ``listing``."""
    record = {"rows_read": rows_read, **written, "embed_key": embed_key, **({"weights": weights} if weights else {})}
    record[finite.NONFINITE_KEY] = finite.to_json(nonfinite or {})
    if views:
        record["views"] = list(views)
    if pixels:
        record["pixels"] = int(pixels)
    record.update(listing_digest=plan.listing_digest(), listing=plan.listing())
    return record


def write_shard_marker(out: str, plan: ShardPlan, record: dict[str, Any], storage_options: dict | None) -> None:
    """Write a shard's marker (after its feature and error files)."""
    storage.write_json(shard_url(out, plan, SHARD_MARKER), record, storage_options)


def read_shard_marker(out: str, plan: ShardPlan, storage_options: dict | None) -> dict[str, Any]:
    """A shard's marker (``FileNotFoundError`` when it has none)."""
    return storage.read_json(shard_url(out, plan, SHARD_MARKER), storage_options)


def shard_done(
    out: str,
    plan: ShardPlan,
    embed_key: str,
    storage_options: dict | None,
    views: tuple[str, ...] = (),
    pixels: int = 0,
) -> bool:
    """Whether a shard's outputs are complete and were made from its current listing with this embed key, under
    the further ``views`` (a marker without ``views`` has none)."""
    marker = shard_url(out, plan, SHARD_MARKER)
    if not storage.exists(marker, storage_options):
        return False
    try:
        stats = storage.read_json(marker, storage_options)
    except (OSError, ValueError) as exc:
        log.warning("set %s %s: unreadable marker (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if stats.get("embed_key") != embed_key or stats.get("listing_digest") != plan.listing_digest():
        log.info(
            "set %s %s: its input files changed since it was embedded; embedding it again", plan.set_name, plan.key
        )
        return False
    if int(stats.get("pixels", 0)) != int(pixels):
        log.info("set %s %s: embedded with pixel space %s, now %s; embedding it again", plan.set_name, plan.key,
                 stats.get("pixels", 0), pixels)  # fmt: skip
        return False
    if list(stats.get("views", [])) != list(views):
        log.info("set %s %s: embedded under views %s, now %s; embedding it again", plan.set_name, plan.key,
                 stats.get("views", []), list(views))  # fmt: skip
        return False
    if int(stats.get("rows_embedded", 0)) == 0:
        return True
    try:
        with storage.open_url(shard_url(out, plan, ".parquet"), "rb", storage_options) as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        with storage.open_url(shard_url(out, plan, ".errors.parquet"), "rb", storage_options) as fh:
            pq.ParquetFile(fh)
    except Exception as exc:  # truncated or overwritten by hand: redo rather than fail later
        log.warning("set %s %s: damaged shard files (%s); embedding it again", plan.set_name, plan.key, exc)
        return False
    if rows != int(stats["rows_embedded"]):
        log.warning("set %s %s: %d rows on disk, marker says %s; embedding it again", plan.set_name, plan.key, rows,
                    stats["rows_embedded"])  # fmt: skip
        return False
    return True


# layers ---------------------------------------------------------------------------------------------------------


def read_layer_marker(layer_dir: str, storage_options: dict | None) -> dict[str, Any]:
    """A finished layer's marker (``FileNotFoundError`` when it has none)."""
    return storage.read_json(storage.join(layer_dir, LAYER_MARKER), storage_options)


def layer_done(
    layer_dir: str, score_key: str, files: Callable[[dict[str, Any]], list[str]], storage_options: dict | None
) -> bool:
    """Whether the layer's marker exists with ``score_key`` and the current layout (a ``parts`` list) and every
    Parquet file ``files(marker)`` names opens."""
    marker = storage.join(layer_dir, LAYER_MARKER)
    if not storage.exists(marker, storage_options):
        return False
    try:
        record = storage.read_json(marker, storage_options)
        if record.get("score_key") != score_key:
            log.info("score: %s was made from other inputs or settings; scoring it again", layer_dir)
            return False
        if "parts" not in record:  # an earlier release's layout (whole per-sample tables): not mixed with parts
            log.info("score: %s has an earlier layout; scoring it again", layer_dir)
            return False
        for url in files(record):
            with storage.open_url(url, "rb", storage_options) as fh:
                pq.ParquetFile(fh)
    except Exception as exc:  # a damaged or missing table: score the layer again
        log.warning("score: %s is damaged (%s); scoring it again", layer_dir, exc)
        return False
    return True


def clear_layer_marker(layer_dir: str, storage_options: dict | None) -> None:
    """Remove a layer's marker: the layer is unfinished from here on."""
    storage.remove(storage.join(layer_dir, LAYER_MARKER), storage_options)


def write_layer_marker(
    layer_dir: str, stats: dict[str, Any], score_key: str, parts: dict, storage_options: dict | None
) -> None:
    """Write a layer's marker (after its tables): ``stats``, ``score_key`` and ``parts`` (per table, its part files
    ``[[path relative to the layer, rows, group], …]``)."""
    storage.write_json(
        storage.join(layer_dir, LAYER_MARKER), {**stats, "score_key": score_key, "parts": parts}, storage_options
    )


# fits -----------------------------------------------------------------------------------------------------------


def fit_done(reference: str | None, key: str, storage_options: dict | None) -> bool:
    """Whether ``reference`` holds a complete fit of ``key`` (and so its embeddings): an audit then only reads it."""
    if not reference:
        return False
    try:
        return key in (storage.read_json(storage.join(reference, REFERENCE_FILE), storage_options).get(FITS) or {})
    except FileNotFoundError:
        return False


def write_fit_marker(reference: str, key: str, layers: list[int], storage_options: dict | None) -> None:
    """Record in ``reference.json`` that every layer's fit of ``key`` is written (call while holding its claim)."""
    url = storage.join(reference, REFERENCE_FILE)
    data = storage.read_json(url, storage_options)
    finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data[FITS] = {**(data.get(FITS) or {}), key: {"layers": sorted(layers), "finished": finished}}
    storage.write_json(url, data, storage_options)


def workspace_fit_done(url: str, storage_options: dict | None) -> bool:
    """Whether the fit workspace at ``url`` (``fit/<fit key>/layer_<ℓ>``) holds its complete fit."""
    return Workspace(url, storage_options).exists(FIT_KEY)
