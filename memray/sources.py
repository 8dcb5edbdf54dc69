"""Where images come from: local folders, ``s3://`` prefixes (any fsspec URL), tar shards, Parquet, ``.npz``.

A dataset is one URL or a list of URLs. :func:`list_units` expands it into independently readable
:class:`Unit` s (one image file, one tar shard, one Parquet file, one ``.npz``), sorted by URL so a shard plan is
a pure function of the input. :func:`read_unit` yields ``(sample_id, payload)`` pairs: encoded image bytes for
files, tar members and Parquet cells; a ``uint8`` array for ``.npz`` rows. Nothing is decoded here and nothing is
dropped: an empty file yields ``b""`` (it becomes an error row downstream).

Sample ids are relative to the dataset root (the folder/prefix given, or the common folder of several URLs):
``cats/001.png`` for files, ``<shard>/<key>`` for tar members (WebDataset keys: the member name up to the first
dot of its base name), ``<file>/<id or row>`` for Parquet and ``<file>/<row>`` for ``.npz``. Folder listings
skip names starting with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``); the count skipped is logged.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from memray.storage import filesystem, is_remote, open_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"})
"""Image file extensions (lower case, no dot); matching is case-insensitive."""
DEFAULT_IMAGE_COLUMNS: tuple[str, ...] = ("image", "jpg", "png", "img", "bytes")
"""Parquet columns tried in order when no image column is named."""
NPZ_KEYS: tuple[str, ...] = ("images", "x", "arr_0")
"""``.npz`` keys tried in order when no key is named."""
KIND_FILE, KIND_TAR, KIND_PARQUET, KIND_NPZ = "file", "tar", "parquet", "npz"
_CONTAINERS = {"tar": KIND_TAR, "parquet": KIND_PARQUET, "npz": KIND_NPZ}
_PARQUET_BATCH_ROWS = 256


class SourceError(ValueError):
    """A dataset cannot be listed or read; the message names the path/shard/row and what to do."""


@dataclass(frozen=True)
class Unit:
    """One independently readable piece of a dataset.

    Attributes:
        kind: ``"file"`` | ``"tar"`` | ``"parquet"`` | ``"npz"``.
        url: full URL (``s3://bucket/key``) or absolute local path.
        column: Parquet image column, ``.npz`` key, or tar image extension (``"jpg"``) when a key has several
            image members; ``None`` picks the defaults.
        root: dataset root the sample ids are relative to (``""``: ids carry the full URL).
        id_column: Parquet column holding sample ids (``None``: row index).
    """

    kind: str
    url: str
    column: str | None = None
    root: str = ""
    id_column: str | None = None

    @property
    def name(self) -> str:
        """The unit's path relative to ``root`` (the prefix of its sample ids)."""
        return _relative(self.url, self.root)


def _ext(name: str) -> str:
    """Lower-case extension without the dot (``""`` when none)."""
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _kind_of(name: str) -> str | None:
    return KIND_FILE if _ext(name) in IMAGE_EXTENSIONS else _CONTAINERS.get(_ext(name))


def _relative(url: str, root: str) -> str:
    """``url`` relative to ``root``; the full ``url`` when ``root`` is empty or does not contain it."""
    prefix = root if root.endswith("/") else root + "/"
    return url[len(prefix) :] if root and url.startswith(prefix) else url


def _split_scheme(url: str) -> tuple[str, str]:
    return (url.split("://", 1)[0] + "://", url.split("://", 1)[1]) if "://" in url else ("", url)


def _common_root(roots: list[str]) -> str:
    """Longest common folder of URLs/paths by path components: ``s3://`` or ``/`` at least; ``""`` across schemes."""
    schemes = {_split_scheme(r)[0] for r in roots}
    if len(schemes) != 1:
        return ""
    scheme = schemes.pop()
    parts = [_split_scheme(r)[1].rstrip("/").split("/") for r in roots]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    root = scheme + "/".join(common)
    return root or "/"  # local paths with nothing in common share the file-system root


def _expand(url: str, storage_options: dict[str, Any] | None) -> tuple[str, list[tuple[str, str]]]:
    """(root, [(kind, full url)]) of one input URL; raises naming it when it does not exist or holds nothing."""
    try:
        fs, path = filesystem(url, storage_options)
        path = path.rstrip("/") or path
        remote = is_remote(url)

        def full(p: str) -> str:
            return fs.unstrip_protocol(p) if remote else p

        if remote:
            fs.invalidate_cache(path)  # listings must reflect the store now, not an earlier call in this process
        if fs.isdir(path):
            paths = sorted(fs.find(path))
            visible = [p for p in paths if not any(seg.startswith(".") for seg in p[len(path) :].split("/"))]
            found = [(_kind_of(p), full(p)) for p in visible if _kind_of(p) is not None]
            if len(found) < len(paths):
                log.info("%s: skipped %d hidden or non-image files", url, len(paths) - len(found))
            if not found:
                raise SourceError(
                    f"{url}: no image ({', '.join(sorted(IMAGE_EXTENSIONS))}), .tar, .parquet or .npz files here"
                )
            return full(path), found
        if fs.isfile(path):
            kind = _kind_of(path)
            if kind is None:
                raise SourceError(f"{url}: not an image, .tar, .parquet or .npz file (judged by its extension)")
            return full(posixpath.dirname(path)), [(kind, full(path))]
    except SourceError:
        raise
    except (OSError, ValueError) as e:  # missing bucket, no permission, malformed URL
        raise SourceError(f"{url}: cannot list ({type(e).__name__}: {e}); check the URL and credentials") from e
    raise SourceError(f"{url}: no such file, folder, bucket or prefix")


def list_units(
    urls: str | list[str],
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
) -> list[Unit]:
    """Expand a dataset (one URL or several) into sorted readable units.

    Args:
        urls: local paths or fsspec URLs of folders/prefixes (searched recursively) or single files.
        storage_options: fsspec options (``AWS_ENDPOINT_URL`` from the environment is used for ``s3://``).
        image_column: Parquet image column / ``.npz`` key / tar image extension; ``None`` = defaults.
        id_column: Parquet column with sample ids; ``None`` = row index.

    Returns:
        Units sorted by URL, duplicates removed; all share one root so sample ids are unique across them.

    Raises:
        SourceError: a URL does not exist, cannot be listed, or holds no readable file.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise SourceError("no dataset URL given: pass a folder, prefix or file")
    roots, found = [], {}
    for url in url_list:
        root, items = _expand(str(url), storage_options)
        roots.append(root)
        found.update({u: k for k, u in items})
    root = roots[0] if len(set(roots)) == 1 else _common_root(roots)
    units = [Unit(kind, u, image_column, root, id_column) for u, kind in sorted(found.items())]
    log.debug("%d units under %s", len(units), root or "(several roots)")
    return units


def read_unit(unit: Unit, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, bytes | np.ndarray]]:
    """Yield ``(sample_id, payload)`` for every sample of ``unit``, in storage order.

    Payloads are encoded bytes (file, tar member, Parquet cell; ``b""`` for an empty file or a null cell) or, for
    ``.npz``, one ``uint8`` image of shape ``(H, W)`` or ``(H, W, C)``.

    Raises:
        SourceError: the unit cannot be read (names the shard/file), or ids repeat inside it.
    """
    readers = {KIND_FILE: _read_file, KIND_TAR: _read_tar, KIND_PARQUET: _read_parquet, KIND_NPZ: _read_npz}
    if unit.kind not in readers:
        raise SourceError(f"{unit.url}: unknown unit kind {unit.kind!r}; expected one of {sorted(readers)}")
    yield from readers[unit.kind](unit, storage_options)


def _read_file(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    try:
        with open_url(unit.url, "rb", storage_options) as fh:
            data = fh.read()
    except OSError as e:
        raise SourceError(f"{unit.url}: cannot read image file ({type(e).__name__}: {e})") from e
    yield unit.name, data


def _read_tar(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, bytes]]:
    want = unit.column.lower().lstrip(".") if unit.column else None
    seen: dict[str, str] = {}
    try:
        with open_url(unit.url, "rb", storage_options) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                base = posixpath.basename(name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                key, ext = base.split(".", 1)  # WebDataset: key up to the first dot of the base name
                if _ext(name) not in IMAGE_EXTENSIONS or (want is not None and ext.lower() != want):
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
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{unit.url}: unreadable tar shard ({type(e).__name__}: {e}); re-create or remove it") from e
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
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{unit.url}: unreadable Parquet file ({type(e).__name__}: {e})") from e


def _read_npz(unit: Unit, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with open_url(unit.url, "rb", storage_options) as fh, np.load(fh, allow_pickle=False) as z:
            key = unit.column or next((k for k in NPZ_KEYS if k in z.files), None)
            if key is None or key not in z.files:
                raise SourceError(f"{unit.url}: no image array {key or NPZ_KEYS!r} among keys {z.files}")
            images = z[key]
    except SourceError:
        raise
    except (OSError, ValueError, EOFError) as e:  # not a zip, pickled objects, truncated
        raise SourceError(f"{unit.url}: unreadable .npz ({type(e).__name__}: {e})") from e
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
