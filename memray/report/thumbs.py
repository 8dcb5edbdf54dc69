"""Image thumbnails for the copy galleries: fetch a source, shrink (or enlarge tiny images) to a small PNG.

A source is a path/URL of an image file or ``<archive url>#<member or row>``; it is fetched with
:func:`memray.io.fetch.fetch_image`. One that cannot be fetched becomes a grey placeholder with the reason.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

THUMB_PX = 84  # the longer side of a thumbnail (28 px images: 3 × 3 blocks)
_PLACEHOLDER_GREY = 200
REASON_CHARS = 60  # of the failure shown under a placeholder
Source = str | float | None  # a gen_source/train_source cell of a table (NaN/None when not recorded)


def thumbnail(img: np.ndarray, size: int = THUMB_PX) -> np.ndarray:
    """A (h, w, 3) uint8 image with its longer side ≤ ``size``.

    Images at most half that size are enlarged by the largest integer factor that fits, nearest-neighbour (28 px
    → 84 px at ``size`` 84: every pixel a sharp 3×3 block); larger ones are shrunk to fit (Lanczos, aspect kept).
    """
    img = np.ascontiguousarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    longest = max(h, w)
    if longest * 2 <= size:
        f = size // longest
        return np.repeat(np.repeat(img, f, axis=0), f, axis=1)
    if longest <= size:
        return img
    im = Image.fromarray(img)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im)


def png_data_uri(img: np.ndarray) -> str:
    """A ``data:image/png;base64,…`` URI of a uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _reason(source: str, exc: Exception) -> str:
    """The failure in a few words: the message without the source it starts with (the tile's title has it)."""
    text = str(exc).removeprefix(source).lstrip(": ") or type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _key(source: Source) -> str:
    return "" if source is None or (isinstance(source, float) and np.isnan(source)) else str(source)


class Thumbnails:
    """Fetches and caches thumbnails by source during one report build; counts the failures."""

    def __init__(self, storage_options: dict[str, Any] | None = None, size: int = THUMB_PX) -> None:
        self.storage_options = storage_options
        self.size = size
        self.failed = 0
        self._cache: dict[str, tuple[str, str]] = {}  # source → (data URI, reason ("" when fetched))
        grey = np.full((size, size, 3), _PLACEHOLDER_GREY, dtype=np.uint8)
        self._placeholder = png_data_uri(grey)

    def _store(self, key: str, got: np.ndarray | Exception) -> None:
        if isinstance(got, Exception):
            log.info("report: cannot show %s: %s", key, got)
            self._cache[key] = (self._placeholder, _reason(key, got))
            self.failed += 1
        else:
            self._cache[key] = (png_data_uri(thumbnail(got, self.size)), "")

    def prefetch(self, sources: Iterable[Source], column: str | None = None) -> None:
        """Fetch many sources at once (each archive read once); ``column``: the set's image column/key."""
        from memray.io.fetch import fetch_images

        todo = [k for k in dict.fromkeys(_key(s) for s in sources) if k and k not in self._cache]
        try:
            found = fetch_images(todo, self.storage_options, column) if todo else {}
        except (ValueError, OSError) as exc:  # e.g. a malformed source: leave these to get(), one by one
            log.info("report: batch fetch failed (%s); fetching one by one", exc)
            found = {}
        for key, got in found.items():
            self._store(key, got)

    def get(self, source: Source) -> tuple[str, str]:
        """(data URI, reason) of ``source``: the thumbnail and "", or the grey placeholder and why."""
        key = _key(source)
        if not key:
            return self._placeholder, "no source recorded"
        if key not in self._cache:
            from memray.io.fetch import fetch_image

            try:
                self._store(key, fetch_image(key, self.storage_options))
            except (ValueError, OSError) as exc:  # FetchError is a ValueError
                self._store(key, exc)
        return self._cache[key]

    def img(self, source: Source, alt: str) -> tuple[str, str]:
        """(``<img class="thumb">`` tag, escaped reason or "") for ``source``."""
        uri, reason = self.get(source)
        cls = "thumb placeholder" if reason else "thumb"
        title = html.escape(f"{source}: {reason}" if reason else str(source))
        tag = f'<img class="{cls}" width="{self.size}" height="{self.size}" alt="{html.escape(alt)}" '
        return tag + f'title="{title}" src="{uri}">', html.escape(reason)
