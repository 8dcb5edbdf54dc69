"""Listing a dataset: one URL or several (local folders, ``s3://`` prefixes, single files) into sorted units.

:func:`list_units` expands a dataset into independently readable :class:`Unit` s (one image file, one tar shard,
one Parquet file, one ``.npz``), sorted by URL so a shard plan is a pure function of the input; all units share one
root (the folder/prefix given, or the common folder of several URLs) that sample ids are relative to. Folder
listings skip names starting with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``) and files of other extensions;
each one skipped is reported by name through ``list_units(..., skipped=[])``. Each unit carries its size and a
change stamp (local mtime in ns, object ETag) from the listing, so a resumed job can tell that its inputs did not
change. An object-store prefix is listed page by page, each page within the storage deadline, with its count
logged while a long listing runs (:meth:`memray.io.filesystems.Store.find`). A URL that does not exist or holds
nothing readable raises :class:`SourceError`; a failure of the store itself (or one past its deadline) raises
:class:`memray.io.storage.StorageError`. Reading units is :mod:`memray.io.sources`, which re-exports these names.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from memray.config import ConfigError
from memray.io.storage import StorageError, is_remote, is_storage_failure, storage_error, store

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"})
"""Image file extensions (lower case, no dot); matching is case-insensitive."""
KIND_FILE, KIND_TAR, KIND_PARQUET, KIND_NPZ = "file", "tar", "parquet", "npz"
_CONTAINERS = {"tar": KIND_TAR, "parquet": KIND_PARQUET, "npz": KIND_NPZ}


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
        size: byte size from the listing (``None``: unknown, e.g. a dangling symlink).
        stamp: change stamp from the listing: local mtime in ns, the object's ETag (or LastModified); ``""`` unknown.
    """

    kind: str
    url: str
    column: str | None = None
    root: str = ""
    id_column: str | None = None
    size: int | None = None
    stamp: str = ""

    @property
    def name(self) -> str:
        """The unit's path relative to ``root`` (the prefix of its sample ids)."""
        return _relative(self.url, self.root)


def extension(name: str) -> str:
    """Lower-case extension without the dot (``""`` when none)."""
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _kind_of(name: str) -> str | None:
    return KIND_FILE if extension(name) in IMAGE_EXTENSIONS else _CONTAINERS.get(extension(name))


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


_KNOWN = "an image/.tar/.parquet/.npz"


def _skip_reason(path: str, remote: bool) -> str:
    """Why a listed file is not a unit (``skipped`` entries)."""
    if not remote and os.path.islink(path) and os.path.isdir(path):
        return "symlink to a folder (not followed)"
    ext = extension(path)
    return f"extension .{ext} not {_KNOWN}" if ext else f"no extension (not {_KNOWN})"


def _stamp(path: str, info: dict[str, Any], remote: bool) -> tuple[int | None, str]:
    """(size, change stamp) of a listed file: local size and mtime in ns (symlinks followed), else ETag/LastModified."""
    if not remote:
        try:
            st = os.stat(path)
        except OSError:  # dangling symlink, vanished: listed anyway, unreadable when read
            return None, ""
        return st.st_size, str(st.st_mtime_ns)
    size = info.get("size", info.get("Size"))
    for key in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated"):
        if info.get(key) not in (None, ""):
            return (None if size is None else int(size)), str(info[key]).strip('"')
    return (None if size is None else int(size)), ""


def _walk_local(root: str, skipped: list[tuple[str, str]]) -> list[str]:
    """Every file and symlink under a local folder (symlinked folders not followed, listed as entries).

    A sub-folder that cannot be listed is appended to ``skipped`` (fsspec's ``find`` would omit it silently); the
    root itself failing raises.
    """

    def failed(exc: OSError) -> None:
        if os.path.normpath(str(exc.filename)) == os.path.normpath(root):
            raise exc
        skipped.append((str(exc.filename), f"folder cannot be listed ({type(exc).__name__}: {exc.strerror or exc})"))

    out = []
    for folder, dirs, files in os.walk(root, onerror=failed):
        out += [os.path.join(folder, d) for d in dirs if os.path.islink(os.path.join(folder, d))]
        out += [os.path.join(folder, f) for f in files]
    return sorted(out)


def _expand(
    url: str, storage_options: dict[str, Any] | None, skipped: list[tuple[str, str]]
) -> tuple[str, list[tuple[str, str, int | None, str]]]:
    """(root, [(kind, full url, size, stamp)]) of one input URL; appends files left out to ``skipped``.

    Raises:
        SourceError: it does not exist or holds nothing readable. StorageError: the store cannot be listed.
    """
    try:
        st = store(url, storage_options)
        fs, path = st.fs, st.path.rstrip("/") or st.path
        remote = is_remote(url)

        def full(p: str) -> str:
            return fs.unstrip_protocol(p) if remote else p

        if remote:
            fs.invalidate_cache(path)  # listings must reflect the store now, not an earlier call in this process
            listing = st.find(path)  # page by page, each page within the deadline
        else:
            listing = {p: {} for p in _walk_local(path, skipped)} if fs.isdir(path) else None
        if listing is not None:
            found = []
            for p in sorted(listing):
                if any(seg.startswith(".") for seg in p[len(path) :].split("/")):
                    skipped.append((full(p), "hidden"))
                elif _kind_of(p) is None:
                    skipped.append((full(p), _skip_reason(p, remote)))
                else:
                    found.append((_kind_of(p), full(p), *_stamp(p, listing[p], remote)))
            if len(found) < len(listing):
                log.info("%s: skipped %d hidden or non-image files", url, len(listing) - len(found))
            if not found:
                raise SourceError(
                    f"{url}: no image ({', '.join(sorted(IMAGE_EXTENSIONS))}), .tar, .parquet or .npz files here"
                )
            return full(path), found
        if st.call("isfile", path, action="list"):
            kind = _kind_of(path)
            if kind is None:
                raise SourceError(f"{url}: not an image, .tar, .parquet or .npz file (judged by its extension)")
            info = st.call("info", path, action="list")
            return full(posixpath.dirname(path)), [(kind, full(path), *_stamp(path, info, remote))]
    except (SourceError, StorageError, ConfigError):
        raise
    except FileNotFoundError as e:
        raise SourceError(f"{url}: no such file, folder, bucket or prefix ({e})") from e
    except Exception as e:
        if is_storage_failure(e):  # no credentials, refused, timed out, access denied
            raise storage_error(url, "list", e) from e
        if isinstance(e, ValueError):  # malformed URL
            raise SourceError(f"{url}: cannot list ({type(e).__name__}: {e}); check the URL") from e
        raise
    raise SourceError(f"{url}: no such file, folder, bucket or prefix")


def list_units(
    urls: str | list[str],
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Unit]:
    """Expand a dataset (one URL or several) into sorted readable units.

    Args:
        urls: local paths or fsspec URLs of folders/prefixes (searched recursively) or single files.
        storage_options: fsspec options (``AWS_ENDPOINT_URL`` from the environment is used for ``s3://``).
        image_column: Parquet image column / ``.npz`` key / tar image extension; ``None`` = defaults.
        id_column: Parquet column with sample ids; ``None`` = row index.
        skipped: if given, ``(url, reason)`` is appended for every listed file that is not a unit (sorted by URL;
            reasons: ``hidden``, ``extension .jfif not an image/.tar/.parquet/.npz``, …).

    Returns:
        Units sorted by URL, duplicates removed; all share one root so sample ids are unique across them. Each
        carries ``size`` and ``stamp`` from the listing (no extra request per file).

    Raises:
        SourceError: a URL does not exist or holds no readable file.
        StorageError: the store cannot be listed (credentials, endpoint, timeout, access denied).
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise SourceError("no dataset URL given: pass a folder, prefix or file")
    roots, found, left_out = [], {}, {}
    for url in url_list:
        own: list[tuple[str, str]] = []
        root, items = _expand(str(url), storage_options, own)
        roots.append(root)
        found.update({u: (k, size, stamp) for k, u, size, stamp in items})
        left_out.update(own)
    root = roots[0] if len(set(roots)) == 1 else _common_root(roots)
    units = [Unit(k, u, image_column, root, id_column, size, stamp) for u, (k, size, stamp) in sorted(found.items())]
    if skipped is not None:
        skipped.extend(sorted((u, why) for u, why in left_out.items() if u not in found))
    log.debug("%d units under %s (%d files skipped)", len(units), root or "(several roots)", len(left_out))
    return units
