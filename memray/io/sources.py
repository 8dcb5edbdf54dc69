"""Where images come from: local folders, ``s3://`` prefixes (any fsspec URL), tar shards, Parquet, ``.npz``.

A dataset is one URL or a list of URLs. :func:`list_units` expands it into independently readable
:class:`Unit` s (one image file, one tar shard, one Parquet file, one ``.npz``), sorted by URL so a shard plan is
a pure function of the input; the listing lives in :mod:`memray.io.listing` and is re-exported here with
:class:`Unit`, :class:`SourceError`, :data:`IMAGE_EXTENSIONS` and the ``KIND_*`` constants. This module reads
the units: :func:`read_unit` yields ``(sample_id, payload)`` pairs: encoded image bytes for files, tar members and
Parquet cells; a ``uint8`` array for ``.npz`` rows. Nothing is decoded here and nothing is dropped: an empty file
yields ``b""`` (it becomes an error row downstream). A unit that cannot be read (missing, dangling symlink,
permission denied, corrupt or truncated archive) raises :class:`UnitReadError` naming it, after the samples it did
yield; a failure of the store itself (no credentials, endpoint down) raises :class:`memray.io.storage.StorageError`.
:func:`iter_samples` reads a whole dataset in process; :func:`assign_global_ids` numbers sorted sample ids.

Sample ids are relative to the dataset root (the folder/prefix given, or the common folder of several URLs):
``cats/001.png`` for files, ``<shard>/<key>`` for tar members (WebDataset keys: the member name up to the first
dot of its base name), ``<file>/<id or row>`` for Parquet and ``<file>/<row>`` for ``.npz``. Folder listings
skip names starting with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``) and files of other extensions; each one
skipped is reported by name through ``list_units(..., skipped=[])``. Each unit carries its size and a change stamp
(local mtime in ns, object ETag) from the listing, so a resumed job can tell that its inputs did not change.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from memray.io.listing import (
    IMAGE_EXTENSIONS,
    KIND_FILE,
    KIND_NPZ,
    KIND_PARQUET,
    KIND_TAR,
    SourceError,
    Unit,
    extension,
    list_units,
)
from memray.io.storage import StorageError, is_remote, is_storage_failure, open_url, storage_error

log = logging.getLogger(__name__)

DEFAULT_IMAGE_COLUMNS: tuple[str, ...] = ("image", "jpg", "png", "img", "bytes")
"""Parquet columns tried in order when no image column is named."""
NPZ_KEYS: tuple[str, ...] = ("images", "x", "arr_0")
"""``.npz`` keys tried in order when no key is named."""
_PARQUET_BATCH_ROWS = 256


class UnitReadError(SourceError):
    """One unit cannot be read (missing, unreadable, corrupt, truncated); the message names it and the cause.

    Raised after the samples the unit did yield; callers record it as an ``unreadable`` row and go on.
    """


def read_unit(unit: Unit, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, bytes | np.ndarray]]:
    """Yield ``(sample_id, payload)`` for every sample of ``unit``, in storage order.

    Payloads are encoded bytes (file, tar member, Parquet cell; ``b""`` for an empty file or a null cell) or, for
    ``.npz``, one ``uint8`` image of shape ``(H, W)`` or ``(H, W, C)``.

    Raises:
        UnitReadError: the unit cannot be read (missing, dangling symlink, no permission, corrupt or truncated);
            raised after the samples already yielded, names the file and the cause.
        StorageError: the store itself failed (no credentials, endpoint refused or timed out).
        SourceError: the unit does not fit the settings (no such column/key, several images per tar key, repeated
            ids, not uint8 pixels): fix the settings or the data.
    """
    readers = {KIND_FILE: _read_file, KIND_TAR: _read_tar, KIND_PARQUET: _read_parquet, KIND_NPZ: _read_npz}
    if unit.kind not in readers:
        raise SourceError(f"{unit.url}: unknown unit kind {unit.kind!r}; expected one of {sorted(readers)}")
    try:
        yield from readers[unit.kind](unit, storage_options)
    except (SourceError, StorageError):
        raise
    except Exception as e:  # a client error the readers do not name (aiohttp, botocore) in the middle of a read
        if not is_storage_failure(e):
            raise
        raise _read_failure(unit, "cannot read", e) from e


def _read_failure(unit: Unit, what: str, exc: BaseException, hint: str = "") -> SourceError | StorageError:
    """The error to raise for ``exc`` while reading ``unit``: a StorageError when the store itself is unreachable
    (every unit would fail: stop and say what to check), else a :class:`UnitReadError` for this unit alone."""
    if isinstance(exc, StorageError) or is_storage_failure(exc):
        err = storage_error(unit.url, "read", exc)
        if err.unreachable:
            return err
        if isinstance(exc, StorageError):
            return UnitReadError(str(exc))
    if isinstance(exc, FileNotFoundError) and not is_remote(unit.url) and os.path.islink(unit.url):
        what = f"dangling symlink (to {os.readlink(unit.url)}), {what}"
    return UnitReadError(f"{unit.url}: {what} ({type(exc).__name__}: {exc}){hint}")


def _read_file(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    try:
        with open_url(unit.url, "rb", storage_options) as fh:
            data = fh.read()
    except (OSError, StorageError) as e:  # missing (dangling symlink, deleted since listed), no permission, I/O
        raise _read_failure(unit, "cannot read image file", e) from e
    yield unit.name, data


class _CompleteTarInfo(tarfile.TarInfo):
    """Tar headers that refuse a cut or damaged archive: :mod:`tarfile` silently ends a stream at a header that is
    cut, missing (no end-of-archive block) or invalid, dropping every member after it."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        if len(buf) < tarfile.BLOCKSIZE:
            where = "where a header should start" if not buf else f"inside a header ({len(buf)} of 512 bytes)"
            raise tarfile.ReadError(f"archive ends {where}, with no end-of-archive block: empty or truncated")
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"invalid member header ({e}): corrupt") from e


def _read_tar(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    want = unit.column.lower().lstrip(".") if unit.column else None
    seen: dict[str, str] = {}
    try:
        with (
            open_url(unit.url, "rb", storage_options) as fh,
            tarfile.open(fileobj=fh, mode="r|*", tarinfo=_CompleteTarInfo) as tar,
        ):
            for member in tar:
                name = member.name.removeprefix("./")
                base = posixpath.basename(name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                key, ext = base.split(".", 1)  # WebDataset: key up to the first dot of the base name
                if extension(name) not in IMAGE_EXTENSIONS or (want is not None and ext.lower() != want):
                    continue
                key = posixpath.join(posixpath.dirname(name), key)
                if key in seen:
                    raise SourceError(
                        f"{unit.url}: key {key!r} has several image members ({seen[key]}, {name}); "
                        f"pick one with image_column=<extension>, e.g. {ext.lower()!r}"
                    )
                seen[key] = name
                extracted = tar.extractfile(member)
                yield f"{unit.name}/{key}", extracted.read() if extracted is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error, StorageError) as e:
        raise _read_failure(unit, "unreadable tar shard", e, "; re-create or remove it") from e
    if not seen:
        log.warning("%s: tar shard holds no image members", unit.url)


def _read_parquet(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen: set[str] = set()
    try:
        with open_url(unit.url, "rb", storage_options) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            col = unit.column or next((c for c in DEFAULT_IMAGE_COLUMNS if c in names), None)
            if col is None or col not in names:
                raise SourceError(
                    f"{unit.url}: no image column {col or DEFAULT_IMAGE_COLUMNS!r} among {names}; set image_column"
                )
            if unit.id_column is not None and unit.id_column not in names:
                raise SourceError(f"{unit.url}: id column {unit.id_column!r} not among {names}; set id_column")
            cols = [col] if unit.id_column is None else [col, unit.id_column]
            row = 0
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=cols):
                images = batch.column(col)
                if pa.types.is_struct(images.type):  # Hugging Face datasets: struct<bytes: binary, path: string>
                    if images.type.get_field_index("bytes") < 0:
                        raise SourceError(f"{unit.url}: struct column {col!r} has no 'bytes' field ({images.type})")
                    images = images.flatten()[images.type.get_field_index("bytes")]
                if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
                    raise SourceError(f"{unit.url}: column {col!r} is {images.type}, expected binary image bytes")
                n = batch.num_rows
                ids = batch.column(unit.id_column).to_pylist() if unit.id_column else list(range(row, row + n))
                for i, (sid, payload) in enumerate(zip(ids, images.to_pylist(), strict=True)):
                    if sid is None:
                        raise SourceError(f"{unit.url}: row {row + i} has a null id in column {unit.id_column!r}")
                    sid = str(sid)
                    if sid in seen:
                        raise SourceError(f"{unit.url}: id {sid!r} (column {unit.id_column!r}) occurs more than once")
                    seen.add(sid)
                    yield f"{unit.name}/{sid}", payload or b""
                row += n
    except SourceError:
        raise
    except (pa.ArrowException, OSError, StorageError) as e:
        raise _read_failure(unit, "unreadable Parquet file", e) from e


def _read_npz(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with open_url(unit.url, "rb", storage_options) as fh:
            head = fh.read(4)
            if not head.startswith(b"PK"):  # else np.load would try (and advise) unpickling it
                raise UnitReadError(
                    f"{unit.url}: unreadable .npz: not a zip archive (starts {head!r}); expected numpy.savez output"
                )
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                key = unit.column or next((k for k in NPZ_KEYS if k in z.files), None)
                if key is None or key not in z.files:
                    raise SourceError(f"{unit.url}: no image array {key or NPZ_KEYS!r} among keys {z.files}")
                images = z[key]
    except SourceError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, StorageError) as e:  # corrupt, truncated
        raise _read_failure(unit, "unreadable .npz", e) from e
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3, 4))):
        raise SourceError(f"{unit.url}: {key!r} is {images.dtype} {images.shape}; expected uint8 N×H×W or N×H×W×C")
    for row in range(images.shape[0]):
        yield f"{unit.name}/{row}", images[row]


def check_unique_ids(sample_ids: list[str], where: str = "dataset") -> None:
    """Raise :class:`SourceError` naming up to 5 ids that occur more than once in ``sample_ids``."""
    if dups := sorted(k for k, c in Counter(sample_ids).items() if c > 1):
        raise SourceError(f"{where}: {len(dups)} sample ids occur more than once, e.g. {dups[:5]}; ids must be unique")


def iter_samples(
    urls: str | list[str],
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
) -> Iterator[tuple[str, bytes | np.ndarray]]:
    """All samples of a dataset in unit order (the in-process reader); raises on a repeated sample id."""
    seen: set[str] = set()
    for unit in list_units(urls, storage_options, image_column, id_column):
        for sid, payload in read_unit(unit, storage_options):
            if sid in seen:
                raise SourceError(f"{unit.url}: sample id {sid!r} occurs more than once in this dataset")
            seen.add(sid)
            yield sid, payload


def assign_global_ids(sample_ids_sorted: list[str], offset: int = 0) -> np.ndarray:
    """Global int64 ids ``offset, offset+1, …`` for sorted, unique sample ids (a pure function of the input).

    Give each set (train, test, each generated set) its own offset so ids never collide across sets.

    Raises:
        SourceError: ids repeat (names them) or are not sorted (names the first pair out of order).
    """
    ids = list(sample_ids_sorted)
    check_unique_ids(ids, "assign_global_ids")
    for i, (a, b) in enumerate(itertools.pairwise(ids)):
        if a > b:
            raise SourceError(f"assign_global_ids: ids not sorted at position {i}: {a!r} > {b!r}; sort them first")
    if offset < 0 or offset + len(ids) > np.iinfo(np.int64).max:
        raise SourceError(f"assign_global_ids: offset {offset} out of range for {len(ids)} ids")
    return np.arange(offset, offset + len(ids), dtype=np.int64)


__all__ = [
    "DEFAULT_IMAGE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "KIND_FILE",
    "KIND_NPZ",
    "KIND_PARQUET",
    "KIND_TAR",
    "NPZ_KEYS",
    "SourceError",
    "Unit",
    "UnitReadError",
    "assign_global_ids",
    "check_unique_ids",
    "iter_samples",
    "list_units",
    "read_unit",
]
