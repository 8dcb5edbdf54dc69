"""A sample's image from its *source*: the file or archive member a user can open, local or ``s3://``.

A source is a string: the URL of an image file (``/data/gen/cat_001.png``, ``s3://bucket/gen/cat_001.png``), or
``<archive url>#<member>`` for a sample inside a tar shard (``#<WebDataset key>``), a Parquet file (``#<row>``) or an
``.npz`` (``#<row>``): ``s3://bucket/train/shard-00003.tar#000123``. ``copies.parquet`` holds one per generated and
training sample (``gen_source``, ``train_source``); :class:`Locator` turns a set's sample ids into sources, and
:func:`fetch_image` / :func:`fetch_images` read them back (the report's thumbnails; ``memray fetch`` for users)::

    from memray.io.fetch import fetch_image
    img = fetch_image("data/sample/train.npz#17")        # (28, 28, 3) uint8
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from memray.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_array, decode_image
from memray.io.listing import KIND_FILE, SourceError, Unit, extension, list_units
from memray.io.sources import read_unit
from memray.io.storage import StorageError

log = logging.getLogger(__name__)

SOURCE_SEP = "#"
_ARCHIVES = {"tar": "tar", "parquet": "parquet", "npz": "npz"}


class FetchError(ValueError):
    """A sample cannot be fetched; the message names the source and why."""


def source_of(unit: Unit, sample_id: str) -> str:
    """The source of ``sample_id`` in ``unit``: the unit's URL (a file), else ``<url>#<member or row>``."""
    if unit.kind == KIND_FILE:
        return unit.url
    prefix = unit.name + "/"
    if not sample_id.startswith(prefix):
        raise FetchError(f"sample id {sample_id!r} is not in {unit.url} (ids there start with {prefix!r})")
    return f"{unit.url}{SOURCE_SEP}{sample_id[len(prefix) :]}"


class Locator:
    """Maps a set's sample ids to sources, from the set's listing (units; no file is opened)."""

    def __init__(self, units: Iterable[Unit]) -> None:
        self.units = {u.name: u for u in units}

    def unit_of(self, sample_id: str) -> Unit:
        """The unit holding ``sample_id`` (a file unit by its name; an archive by the longest name prefix)."""
        if sample_id in self.units and self.units[sample_id].kind == KIND_FILE:
            return self.units[sample_id]
        head = sample_id
        while "/" in head:
            head = head.rsplit("/", 1)[0]
            unit = self.units.get(head)
            if unit is not None and unit.kind != KIND_FILE:
                return unit
        raise FetchError(f"sample id {sample_id!r}: no file or archive of this set holds it")

    def source(self, sample_id: str) -> str:
        """The source string of ``sample_id`` (see the module docstring)."""
        return source_of(self.unit_of(sample_id), sample_id)

    def sources(self, sample_ids: Iterable[str]) -> list[str | None]:
        """:meth:`source` of each id, ``None`` where none of the set's units holds it."""
        out: list[str | None] = []
        for sid in sample_ids:
            try:
                out.append(self.source(str(sid)))
            except FetchError:
                out.append(None)
        return out


def parse_source(source: str) -> tuple[str, str | None]:
    """``(url, member)``: ``member`` is ``None`` for an image file, the key or row inside an archive otherwise."""
    at = source.find(SOURCE_SEP)
    while at >= 0:  # the first '#' right after an archive's name (a member key may hold '#' itself)
        if extension(source[:at]) in _ARCHIVES:
            return source[:at], source[at + 1 :]
        at = source.find(SOURCE_SEP, at + 1)
    return source, None


def _archive_unit(url: str, column: str | None) -> Unit:
    return Unit(_ARCHIVES[extension(url)], url, column, root="")  # ids carry the full URL: "<url>/<member>"


def _decode(payload: bytes | np.ndarray, source: str, max_pixels: int) -> np.ndarray:
    try:
        if isinstance(payload, np.ndarray):
            return decode_array(payload)
        return decode_image(payload, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise FetchError(f"{source}: cannot decode the image ({e})") from e


def fetch_images(
    sources: Iterable[str],
    storage_options: dict[str, Any] | None = None,
    column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, np.ndarray | FetchError]:
    """Decoded images (H, W, 3) uint8 of many sources, each archive read once; failures as :class:`FetchError`.

    ``column``: the set's Parquet image column / ``.npz`` key / tar image extension (``None``: the defaults).
    """
    wanted = list(dict.fromkeys(sources))
    by_archive: dict[str, dict[str, str]] = {}
    out: dict[str, np.ndarray | FetchError] = {}
    for src in wanted:
        url, member = parse_source(src)
        if member is None:
            out[src] = _fetch_file(url, src, storage_options, max_pixels)
        else:
            by_archive.setdefault(url, {})[f"{url}/{member}"] = src
    for url, members in by_archive.items():
        try:
            for sid, payload in read_unit(_archive_unit(url, column), storage_options):
                if sid in members:
                    src = members[sid]
                    try:
                        out[src] = _decode(payload, src, max_pixels)
                    except FetchError as e:
                        out[src] = e
                    if all(members[k] in out for k in members):
                        break
        except (SourceError, StorageError, OSError) as e:
            for src in members.values():
                out.setdefault(src, FetchError(f"{src}: cannot read {url} ({e})"))
        for sid, src in members.items():
            out.setdefault(src, FetchError(f"{src}: no member {sid.rsplit('/', 1)[1]!r} in {url}"))
    return {src: out[src] for src in wanted}


def _fetch_file(url: str, source: str, storage_options: dict[str, Any] | None, max_pixels: int):
    try:
        payload = next(iter(read_unit(Unit(KIND_FILE, url, root=""), storage_options)))[1]
    except (SourceError, StorageError, OSError, StopIteration) as e:
        return FetchError(f"{source}: cannot read it ({e})")
    try:
        return _decode(payload, source, max_pixels)
    except FetchError as e:
        return e


def fetch_image(source: str, storage_options: dict[str, Any] | None = None, column: str | None = None) -> np.ndarray:
    """The decoded image (H, W, 3) uint8 of one source; raises :class:`FetchError` naming it and the cause."""
    got = fetch_images([source], storage_options, column)[source]
    if isinstance(got, FetchError):
        raise got
    return got


def fetch_by_id(
    urls: str | list[str],
    sample_id: str,
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
) -> tuple[str, np.ndarray]:
    """``(source, image)`` of ``sample_id`` in the set given by ``urls`` (listed like the audit lists it)."""
    units = list_units(urls, storage_options, image_column)
    source = Locator(units).source(sample_id)
    return source, fetch_image(source, storage_options, image_column)
