"""Precomputed embeddings as inputs ("bring your own embeddings"): list feature Parquet files, read them as Rows.

A set given as ``embeddings: [URL, ...]`` instead of images names files, folders or globs (local or ``s3://``) of
memray feature Parquet: memray's own shard layout (``embeddings/<set>/shard-NNNNN.parquet`` beside ``.done.json``
markers; ``.errors.parquet`` files are not features) or any table of ``sample_id`` + ``layer_<ℓ>`` columns
(fixed-size lists, or lists of equal length, of floats; what ``memray embed`` writes).

Listing reads footers only (plus, for variable-size list columns, the first row to learn the dimension). The files
are in natural order of their URLs (digit runs compare as numbers, so ``shard-100000`` follows ``shard-99999``);
the set's global row order is the files in that order, rows in file order. Sample ids must be unique within a
set (:func:`check_embedding_ids`): the copy evidence names training rows by them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema
from memray.io.features import FeatureFileError, FeatureSet, column_matrix, load_features
from memray.io.listing import _stamp
from memray.io.rows import ParquetRows, open_parquet, pieces
from memray.io.storage import is_remote, store, translate_errors

log = logging.getLogger(__name__)

ERRORS_SUFFIX = ".errors.parquet"
DONE_SUFFIX = ".done.json"
_GLOB = re.compile(r"[*?\[]")
_SHARD = re.compile(r"^(shard-\d+)\.parquet$")
IDS_BATCH = 65536  # sample ids read at a time by check_embedding_ids
DUPLICATES_SHOWN = 5


class EmbeddingInputError(FeatureFileError):
    """Precomputed embeddings cannot be used; the message names the URL or file and what to do."""


@dataclass(frozen=True)
class EmbeddingFile:
    """One feature Parquet file: URL, rows, ``{layer: dim}`` and a change stamp (mtime ns / ETag) from the listing."""

    url: str
    n: int
    layers: dict[int, int]
    stamp: str = ""

    def listing_digest(self) -> str:
        """12 hex chars of sha256 over the file's URL, rows, layers and stamp (changes when the file is rewritten)."""
        text = json.dumps([self.url, self.n, sorted(self.layers.items()), self.stamp], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def listing_digest(files: list[EmbeddingFile]) -> str:
    """12 hex chars of sha256 over the per-file digests in order (a set's whole listing)."""
    return hashlib.sha256(",".join(f.listing_digest() for f in files).encode()).hexdigest()[:12]


def natural_key(url: str) -> list[Any]:
    """Sort key comparing digit runs as numbers: ``shard-9`` < ``shard-10``."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", url)]


def is_listing(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is a glob or a folder/prefix (not a single file)."""
    if _GLOB.search(str(url).split("://", 1)[-1]):
        return True
    with translate_errors(url, "list"):
        if not is_remote(url):
            return os.path.isdir(str(url).removeprefix("file://"))
        st = store(url, storage_options)
        return st.isdir(st.path)


def _is_feature_name(path: str) -> bool:
    base = posixpath.basename(path)
    return base.endswith(".parquet") and not base.endswith(ERRORS_SUFFIX) and not base.startswith(".")


def _expand(url: str, storage_options: dict[str, Any] | None) -> list[tuple[str, int | None, str]]:
    """[(full url, size, stamp)] of the feature files one URL names (a file, a folder searched recursively, a glob)."""
    st = store(url, storage_options)
    fs, path = st.fs, st.path
    remote = is_remote(url)
    if remote:
        fs.invalidate_cache()
    full = (lambda p: fs.unstrip_protocol(p)) if remote else (lambda p: p)
    found = st.call("glob", path, detail=True) if _GLOB.search(path) else st.find(path)
    if found is None and st.call("isfile", path, action="list"):
        if not path.endswith(".parquet") or path.endswith(ERRORS_SUFFIX):
            raise EmbeddingInputError(f"{url}: not a feature Parquet file (sample_id + layer_<n> columns)")
        return [(full(path), *_stamp(path, st.call("info", path, action="list"), remote))]
    if found is None:
        raise EmbeddingInputError(f"{url}: no such file, folder, bucket or prefix")
    glob = _GLOB.search(path)
    root = path[: glob.start()].rsplit("/", 1)[0] if glob else path
    out, folders = [], {}
    for p, info in sorted(found.items()):
        if info.get("type") == "directory":
            out += _expand(full(p), storage_options)
            continue
        if any(seg.startswith(".") for seg in p[len(root) :].split("/") if seg) or not _is_feature_name(p):
            continue
        shard = _SHARD.match(posixpath.basename(p))
        if shard:
            parent = posixpath.dirname(p)
            if parent not in folders:  # the shard's folder: from this listing, or listed once (globs)
                folders[parent] = set(found) if not glob else set(st.call("ls", parent, detail=False))
            names = folders[parent]
            if any(n.endswith(DONE_SUFFIX) for n in names) and p[: -len(".parquet")] + DONE_SUFFIX not in names:
                raise EmbeddingInputError(
                    f"{full(p)}: no {shard.group(1)}{DONE_SUFFIX} beside it, so the embedding job that wrote it has "
                    "not finished; finish (resume) that job or remove the file"
                )
        out.append((full(p), *_stamp(p, info, remote)))
    return out


def _footer(url: str, stamp: str, storage_options: dict[str, Any] | None) -> EmbeddingFile:
    """Rows and ``{layer: dim}`` of one file from its footer (variable-size lists: the first row's length)."""
    with translate_errors(url, "read"), open_parquet(url, storage_options) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:
            raise EmbeddingInputError(f"{url}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
        sch = pf.schema_arrow
        if schema.SAMPLE_ID not in sch.names:
            raise EmbeddingInputError(f"{url}: no '{schema.SAMPLE_ID}' column; is this a memray feature table?")
        layers = {}
        for name in sch.names:
            ell = schema.parse_layer_column(name)
            if ell is None:
                continue
            typ = sch.field(name).type
            typ = getattr(typ, "storage_type", typ)
            if hasattr(typ, "list_size"):
                layers[ell] = int(typ.list_size)
            elif pf.metadata.num_rows:
                first = next(pf.iter_batches(batch_size=1, columns=[name])).column(0)
                layers[ell] = int(column_matrix(first, name, url).shape[1])
        if not layers:
            raise EmbeddingInputError(f"{url}: no layer_<n> columns found")
        return EmbeddingFile(url, int(pf.metadata.num_rows), dict(sorted(layers.items())), stamp)


def list_embedding_files(urls: str | list[str], storage_options: dict[str, Any] | None = None) -> list[EmbeddingFile]:
    """Every feature Parquet file the URLs name, in natural URL order, duplicates removed; footers only.

    Raises:
        EmbeddingInputError: a URL names nothing, a non-feature file, an unfinished memray shard, or no file at all.
        StorageError: the store cannot be listed or read.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    found: dict[str, str] = {}
    for url in url_list:
        with translate_errors(url, "list"):
            items = _expand(str(url), storage_options)
        if not items:
            raise EmbeddingInputError(f"{url}: no feature .parquet files here (.errors.parquet files are not features)")
        found.update({u: stamp for u, _size, stamp in items})
    if not found:
        raise EmbeddingInputError("no embedding URL given: pass feature Parquet files, folders or globs")
    files = [_footer(u, found[u], storage_options) for u in sorted(found, key=natural_key)]
    log.info("%d embedding files, %d rows under %s", len(files), sum(f.n for f in files), ", ".join(url_list))
    return files


def embedding_layers(files: list[EmbeddingFile]) -> dict[int, int]:
    """``{layer: dim}`` that every file has; raises naming the file that lacks a layer or has another dimension."""
    if not files:
        raise EmbeddingInputError("no embedding files")
    ref: dict[int, tuple[int, str]] = {}
    for f in files:
        for ell, d in f.layers.items():
            ref.setdefault(ell, (d, f.url))
    for f in files:
        for ell, (d, where) in ref.items():
            if ell not in f.layers:
                raise EmbeddingInputError(
                    f"{f.url}: no column layer_{ell}, which {where} has; give every file the same layers"
                )
            if f.layers[ell] != d:
                raise EmbeddingInputError(
                    f"{f.url}: layer_{ell} has dimension {f.layers[ell]}, {where} has {d}; the files must come from "
                    "one embedder"
                )
    return {ell: ref[ell][0] for ell in sorted(ref)}


def _id_batches(files: list[EmbeddingFile], storage_options: dict[str, Any] | None) -> Any:
    """``(url, ids)`` per batch of :data:`IDS_BATCH` rows: the ``sample_id`` column only, as an object array of str."""
    for f in files:
        with translate_errors(f.url, "read"), open_parquet(f.url, storage_options) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=IDS_BATCH, columns=[schema.SAMPLE_ID]):
                yield f.url, batch.column(0).cast(pa.string()).to_numpy(zero_copy_only=False)


def check_embedding_ids(
    files: list[EmbeddingFile], set_name: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Refuse a set whose files repeat a ``sample_id`` (within or across files), naming the first few.

    Reads the id column once and keeps a 64-bit hash per row (8 bytes a row); only ids whose hash repeats are read
    again and compared as strings.

    Raises:
        EmbeddingInputError: one line naming the set, the first :data:`DUPLICATES_SHOWN` repeated ids and where the
            first one occurs.
    """
    import pandas as pd  # hash_array: a vectorised 64-bit hash of strings

    parts = [pd.util.hash_array(ids) for _, ids in _id_batches(files, storage_options)]
    hashes = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    suspects = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    if not suspects.size:
        return
    first: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}  # id -> the files it occurs in, in order (insertion order: first repeat first)
    for url, ids in _id_batches(files, storage_options):
        for sid in ids[np.isin(pd.util.hash_array(ids), suspects)]:
            if sid in first:
                repeated.setdefault(sid, [first[sid]]).append(url)
            first.setdefault(sid, url)
    if repeated:
        shown = list(repeated)[:DUPLICATES_SHOWN]
        where = " and ".join(sorted(set(repeated[shown[0]]), key=natural_key))
        raise EmbeddingInputError(
            f"set {set_name!r}: {len(repeated)} sample id(s) occur more than once in its embeddings, e.g. {shown} "
            f"({shown[0]!r} in {where}); give every row its own sample_id (results name rows by it)"
        )


def rows_for(files: list[EmbeddingFile], layer: int, storage_options: dict[str, Any] | None = None) -> ParquetRows:
    """Layer ``layer`` of the files as one :class:`ParquetRows` (global row = file order, rows in file order)."""
    dims = {f.url: f.layers.get(int(layer)) for f in files}
    for url, d in dims.items():
        if d is None:
            raise EmbeddingInputError(f"{url}: no column layer_{layer}")
    if len(set(dims.values())) > 1:
        embedding_layers(files)  # raises naming the file with another dimension
    dim = next(iter(dims.values()), 0) or 0
    return ParquetRows(pieces([(f.url, f.n) for f in files]), int(layer), storage_options, dim)


def load_feature_input(url: str, layer: int = 1, storage_options: dict[str, Any] | None = None) -> FeatureSet:
    """A feature file (``.npy``/``.npz``/``.parquet``, :func:`memray.io.features.load_features`), or a folder or glob of
    feature Parquet read through :func:`list_embedding_files` and concatenated in its order (every layer, float32)."""
    if not is_listing(url, storage_options):
        return load_features(url, layer, storage_options)
    files = list_embedding_files([url], storage_options)
    layers = {ell: rows_for(files, ell, storage_options) for ell in embedding_layers(files)}
    first = next(iter(layers.values()))
    ids = first.ids(np.arange(first.n, dtype=np.int64))
    return FeatureSet(ids, {ell: rows.read(0, rows.n) for ell, rows in layers.items()}, str(url))
