"""Views: small transforms of a source image under which a copy should still be found (pure numpy + PIL).

A generator that memorized an image may emit it mirrored, shifted by a pixel or slightly cropped; a ViT is not
invariant to these (one pixel at 28 px is eight at 224), so a copy under a transform looks like a fresh image.
Every test and generated image is therefore embedded under each view, and its evidence score is the smallest
over views (:mod:`memray.stats.evidence`); the training set is embedded once, identity only.

Views act on the **decoded source pixels**, before the encoder's resize and crop:

* ``identity``;
* ``hflip``: ``x[:, ::-1]``;
* ``shift:k`` expands to ``dx+k``, ``dx-k``, ``dy+k``, ``dy-k``: the image moved by k source pixels, the strip it
  leaves filled by **edge replication** (``numpy.pad(mode="edge")``), same size. A copy shifted by +k with any
  padding is matched by the −k view up to its k-pixel border strip;
* ``crop:s``: the centred ``round(s·H) × round(s·W)`` window (offsets ``(H − h)//2``, ``(W − w)//2``), which the
  encoder's preparation then resizes like any image: a zoom by 1/s.

The expanded names (``identity``, ``hflip``, ``dx+1``, …, ``crop0.9``) name the feature columns
(``layer_<ℓ>@<view>``) and the ``view`` column of ``copies.parquet``; identity has no suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

IDENTITY = "identity"


class ViewError(ValueError):
    """A view spec that cannot be parsed."""


@dataclass(frozen=True)
class View:
    """One transform: ``kind`` in identity / hflip / shift / crop; ``dx``, ``dy`` source pixels; ``scale`` of a
    crop."""

    name: str
    kind: str
    dx: int = 0
    dy: int = 0
    scale: float = 1.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W[, C])`` uint8 → the view of it (same dtype; same size except for a crop)."""
        if self.kind == "identity":
            return image
        if self.kind == "hflip":
            return np.ascontiguousarray(image[:, ::-1])
        if self.kind == "shift":
            return shift(image, self.dx, self.dy)
        h, w = image.shape[:2]
        ch, cw = max(1, round(self.scale * h)), max(1, round(self.scale * w))
        top, left = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(image[top : top + ch, left : left + cw])


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``image`` moved right by ``dx`` and down by ``dy`` pixels (negative: left / up), edge-replicated."""
    h, w = image.shape[:2]
    pad = [(max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return np.ascontiguousarray(padded[top : top + h, left : left + w])


def _parse_one(spec: str) -> list[View]:
    kind, _, arg = spec.strip().partition(":")
    if kind in ("identity", "hflip") and not arg:
        return [View(kind, kind)]
    try:
        if kind == "shift":
            k = int(arg)
            if not 1 <= k <= 16:
                raise ValueError
            return [View(f"dx+{k}", "shift", dx=k), View(f"dx-{k}", "shift", dx=-k),
                    View(f"dy+{k}", "shift", dy=k), View(f"dy-{k}", "shift", dy=-k)]  # fmt: skip
        if kind == "crop":
            s = float(arg)
            if not 0.5 <= s < 1.0:
                raise ValueError
            return [View(f"crop{s:g}", "crop", scale=s)]
    except ValueError:
        pass
    raise ViewError(
        f"evidence.views: {spec!r} is not a view; use identity, hflip, shift:<k> (1 ≤ k ≤ 16 pixels) or "
        "crop:<s> (0.5 ≤ s < 1)"
    )


def parse_views(specs: Sequence[str]) -> tuple[View, ...]:
    """The views of ``specs`` expanded, identity first, each once (order otherwise as given).

    Raises:
        ViewError: an unknown spec (one line naming it and the allowed forms).
    """
    out = {IDENTITY: View(IDENTITY, IDENTITY)}
    for spec in specs:
        for v in _parse_one(str(spec)):
            out.setdefault(v.name, v)
    return tuple(out.values())


def extra_views(specs: Sequence[str]) -> tuple[View, ...]:
    """The views of ``specs`` other than identity (what the query sets are embedded under beside it)."""
    return parse_views(specs)[1:]


@dataclass(frozen=True)
class ViewPrepare:
    """``prepare`` under each of ``views``: ``(rgb, prepared) ->`` uint8 ``(V, C, S, S)`` (``prepared``: the
    identity image, which gives the shape when V = 0). Picklable when ``prepare`` is (the read tasks ship it)."""

    prepare: Callable[[np.ndarray], np.ndarray]
    views: tuple[View, ...]

    def __call__(self, rgb: np.ndarray, prepared: np.ndarray) -> np.ndarray:
        if not self.views:
            return np.empty((0, *prepared.shape), np.uint8)
        return np.stack([np.asarray(self.prepare(v(rgb)), dtype=np.uint8) for v in self.views])
