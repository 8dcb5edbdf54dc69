"""Image decoding shared by ``memray embed`` and the Ray job: bytes → (H, W, 3) uint8 RGB, failures as statuses.

Conversions (documented choices, identical everywhere memray decodes):

- ``L``/``1``/``P``/``CMYK``/``YCbCr``/… → RGB with Pillow's own ``convert("RGB")``.
- Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is **dropped**: the stored colour channels are kept,
  exactly as ``PIL.Image.convert("RGB")`` and torchvision's default image loader do (no compositing).
- 16-bit greyscale (``I;16*``, and ``I`` read as a 16-bit range) is scaled to 8 bit by ``round(v / 257)``,
  which maps 0 → 0 and 65535 → 255 exactly.
- Multi-frame files (GIF, TIFF) give their first frame. EXIF orientation is not applied (as torchvision's loader).
- A PNG whose pixel data holds fewer rows than its header declares is ``truncated`` (Pillow would return the
  missing rows as zeros without a word): its IDAT stream is measured against the header's row sizes.

A file that cannot be decoded raises :class:`ImageDecodeError` with one of :data:`STATUSES`; callers record it as
an error row and go on. ``max_pixels`` decides which images are too large: Pillow's own decompression-bomb check
(global ``Image.MAX_IMAGE_PIXELS``, which refuses above twice its value, also per GIF/ICO frame) would refuse first
above 178,956,970 pixels, so while an image is decoded with a ``max_pixels`` above Pillow's limit, the limit is
raised to ``max_pixels`` (and restored after); otherwise it is left as it is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

STATUS_EMPTY = "empty"  # 0 bytes
STATUS_NOT_IMAGE = "not_image"  # not a format Pillow recognises, or an unsupported pixel format
STATUS_CORRUPT = "corrupt"  # header recognised, pixel data invalid
STATUS_TRUNCATED = "truncated"  # pixel data ends early
STATUS_TOO_LARGE = "too_large"  # more pixels than max_pixels (decompression-bomb guard)
STATUSES: tuple[str, ...] = (STATUS_EMPTY, STATUS_NOT_IMAGE, STATUS_CORRUPT, STATUS_TRUNCATED, STATUS_TOO_LARGE)
STATUS_UNREADABLE = "unreadable"  # for callers: the file/archive could not be read (I/O error, corrupt archive)
STATUS_SKIPPED = "skipped"  # for callers: listed but not an input (hidden, not an image/.tar/.parquet/.npz)

#: Pillow's default decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS`` as shipped, ~9459² pixels).
DEFAULT_MAX_PIXELS = 89_478_485


#: Keys tried, in order, for the image array in an ``.npz`` file.
NPZ_IMAGE_KEYS: tuple[str, ...] = ("images", "x", "arr_0")

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_PILLOW_LIMIT_LOCK = threading.Lock()
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageDecodeError(Exception):
    """An image could not be decoded. ``status`` is one of :data:`STATUSES`; ``message`` says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an RGB array.

    Args:
        data: the file's bytes.
        max_pixels: images with more than this many pixels (width × height, read from the header before any
            pixel data is decoded) are refused with status ``too_large``.

    Returns:
        ``(H, W, 3)`` C-contiguous uint8 array, RGB order.

    Raises:
        ImageDecodeError: with status ``empty``, ``not_image``, ``corrupt``, ``truncated`` or ``too_large``.
            No other exception escapes for bad input.
    """
    if len(data) == 0:
        raise ImageDecodeError(STATUS_EMPTY, "0 bytes")
    with _pillow_limit(max_pixels):
        return _decode(data, max_pixels)


@contextlib.contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit at least ``max_pixels`` inside the block (restored after)."""
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(STATUS_TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        fmt = _sniff_format(data)
        if fmt is not None:  # the signature of an image format, but a header Pillow cannot parse
            raise ImageDecodeError(
                STATUS_CORRUPT, f"{fmt} signature but an unreadable header ({len(data)} bytes)"
            ) from exc
        raise ImageDecodeError(STATUS_NOT_IMAGE, f"not a recognised image format ({len(data)} bytes)") from exc
    except Exception as exc:  # a recognised header that Pillow cannot parse
        raise ImageDecodeError(STATUS_CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                STATUS_TOO_LARGE, f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
            )
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(STATUS_TOO_LARGE, str(exc)) from exc
        except EOFError as exc:
            raise ImageDecodeError(STATUS_TRUNCATED, f"EOFError: {exc}") from exc
        except Exception as exc:
            status = STATUS_TRUNCATED if "truncated" in str(exc).lower() else STATUS_CORRUPT
            raise ImageDecodeError(status, f"{type(exc).__name__}: {exc}") from exc
        if im.format == "PNG" and (short := _png_short(im, data)):
            raise ImageDecodeError(STATUS_TRUNCATED, short)
        return _to_rgb(im)


def decode_array(image: np.ndarray) -> np.ndarray:
    """An already decoded uint8 image array as ``(H, W, 3)`` RGB (greyscale replicated, alpha dropped).

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` and ``(H, W, 4)`` uint8 arrays (e.g. rows of an ``.npz``).

    Raises:
        ImageDecodeError: ``empty`` for a 0-pixel array, ``not_image`` for another dtype or shape.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageDecodeError(STATUS_NOT_IMAGE, f"dtype {arr.dtype}; expected uint8 pixels in 0..255")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]
    elif arr.ndim == 2:
        rgb = np.repeat(arr[:, :, None], 3, axis=2)
    else:
        raise ImageDecodeError(
            STATUS_NOT_IMAGE, f"shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if rgb.size == 0:
        raise ImageDecodeError(STATUS_EMPTY, f"shape {arr.shape} has no pixels")
    return np.ascontiguousarray(rgb)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_short(im: Image.Image, data: bytes) -> str | None:
    """Why a loaded PNG lacks rows its IHDR declares (its IDAT data inflates short), or ``None`` when complete.

    Pillow stops quietly when the zlib stream ends early and leaves the rest zero, so the check runs only when the
    last decoded row is all zero bytes (or the PNG is interlaced); it inflates the IDAT chunks once more, counting.
    """
    interlaced = bool(im.info.get("interlace"))
    width, height = im.size
    if not interlaced and any(im.crop((0, height - 1, width, height)).tobytes()):
        return None
    pos, header, inflated = 8, None, 0
    inflate = zlib.decompressobj()
    try:
        while pos + 8 <= len(data) and not inflate.eof:
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            body = data[pos + 8 : pos + 8 + length]
            if kind == b"IHDR" and len(body) >= 13:
                header = struct.unpack(">IIBBBBB", body[:13])
            elif kind == b"IDAT":
                while body and not inflate.eof:  # bounded memory: 1 MiB of output at a time
                    inflated += len(inflate.decompress(body, 1 << 20))
                    body = inflate.unconsumed_tail
            elif kind == b"IEND":
                break
            pos += 12 + length
        inflated += len(inflate.flush())
    except zlib.error:
        return None  # damaged data Pillow accepted anyway: not a truncation this check can size
    if header is None or header[3] not in _PNG_CHANNELS:
        return None
    w, h, depth, colour = header[:4]

    def row_bytes(n: int) -> int:  # filter byte + packed samples
        return 1 + (n * _PNG_CHANNELS[colour] * depth + 7) // 8

    if interlaced:
        passes = [((w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7]
        need = sum(row_bytes(pw) * ph for pw, ph in passes if pw > 0 and ph > 0)
    else:
        need = h * row_bytes(w)
    if inflated >= need:
        return None
    rows = f"{inflated // row_bytes(w)} of {h} rows" if not interlaced else "interlaced"
    return f"PNG pixel data ends early: {inflated} of {need} bytes ({rows})"


def _sniff_format(data: bytes) -> str | None:
    """The image format whose magic bytes start ``data``, or ``None``."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as ``(H, W, 3)`` uint8 RGB (see the module docstring for each mode)."""
    mode = im.mode
    try:
        if mode == "RGB":
            arr = np.asarray(im)
        elif mode in _SIXTEEN_BIT_MODES:
            wide = np.asarray(im).astype(np.float64)
            gray = np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
            arr = np.repeat(gray[:, :, None], 3, axis=2)
        elif mode == "F":
            raise ImageDecodeError(STATUS_NOT_IMAGE, "32-bit float pixels have no defined 8-bit range; save as uint8")
        elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
            arr = np.asarray(im.convert("RGBA"))[:, :, :3]
        else:
            arr = np.asarray(im.convert("RGB"))
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(STATUS_NOT_IMAGE, f"cannot convert pixel mode {mode!r} to RGB: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageDecodeError(STATUS_NOT_IMAGE, f"pixel mode {mode!r} gave an array {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)
