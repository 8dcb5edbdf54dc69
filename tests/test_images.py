"""decode_image on real files written here (good, broken, odd modes), folder listing and .npz image arrays."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memray.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_array,
    decode_image,
)

RNG_SEED = 0


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(RNG_SEED).integers(0, 256, (24, 30, 3), dtype=np.uint8)


def write(tmp_path: Path, name: str, data: bytes) -> bytes:
    (tmp_path / name).write_bytes(data)
    return (tmp_path / name).read_bytes()  # decode what is on disk, as the CLI does


def status_of(data: bytes, **kwargs: int) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert info.value.message
    return info.value.status


def test_good_png_jpeg_exact_or_close(tmp_path: Path, rgb: np.ndarray) -> None:
    out = decode_image(write(tmp_path, "a.png", encode(Image.fromarray(rgb), "PNG")))
    assert out.dtype == np.uint8 and out.shape == (24, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    smooth = np.repeat(np.linspace(0, 255, 30, dtype=np.uint8)[None, :, None], 24, 0).repeat(3, 2)
    jpg = decode_image(write(tmp_path, "b.jpg", encode(Image.fromarray(smooth), "JPEG", quality=95)))
    assert np.abs(jpg.astype(int) - smooth).max() <= 8


def test_broken_files_get_their_status(tmp_path: Path, rgb: np.ndarray) -> None:
    png = encode(Image.fromarray(rgb), "PNG")
    jpg = encode(Image.fromarray(rgb), "JPEG", quality=90)
    flipped = png[:60] + bytes(b ^ 0xFF for b in png[60:120]) + png[120:]  # inside the IDAT stream
    assert status_of(write(tmp_path, "corrupt.png", flipped)) == "corrupt"
    assert status_of(write(tmp_path, "header.png", png[:33])) == "corrupt"  # PNG signature, no image data
    assert status_of(write(tmp_path, "trunc.jpg", jpg[: len(jpg) // 2])) == "truncated"
    assert status_of(write(tmp_path, "trunc.png", png[: len(png) // 2])) == "truncated"
    assert status_of(write(tmp_path, "empty.png", b"")) == "empty"
    assert status_of(write(tmp_path, "notes.png", b"these are my notes, not a picture\n")) == "not_image"


def test_grey_rgba_palette_cmyk(tmp_path: Path, rgb: np.ndarray) -> None:
    grey = rgb[:, :, 0]
    out = decode_image(write(tmp_path, "g.png", encode(Image.fromarray(grey), "PNG")))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    alpha = np.zeros((24, 30, 1), np.uint8)  # fully transparent: the stored colours are kept (alpha dropped)
    out = decode_image(write(tmp_path, "a.png", encode(Image.fromarray(np.concatenate([rgb, alpha], 2)), "PNG")))
    np.testing.assert_array_equal(out, rgb)
    la = Image.fromarray(np.stack([grey, alpha[:, :, 0]], 2), "LA")
    np.testing.assert_array_equal(decode_image(encode(la, "PNG")), np.repeat(grey[:, :, None], 3, axis=2))
    pal = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(decode_image(encode(pal, "PNG")), np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    np.testing.assert_array_equal(decode_image(encode(cmyk, "TIFF")), np.asarray(cmyk.convert("RGB")))


def test_sixteen_bit_png_scaled_to_eight_bit(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    data = write(tmp_path, "deep.png", encode(Image.fromarray(wide), "PNG"))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    expected = np.array([[0, 1, 128], [255, 4, 233]], dtype=np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_decompression_bomb_limit(tmp_path: Path) -> None:
    data = write(tmp_path, "big.png", encode(Image.new("L", (120, 100)), "PNG"))  # tiny file, 12,000 pixels
    assert status_of(data, max_pixels=11_999) == "too_large"
    assert decode_image(data, max_pixels=12_000).shape == (100, 120, 3)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # the global limit is left as Pillow ships it


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + valid IHDR declaring a huge image, then a tiny IDAT and IEND (a few dozen bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_pillow_bomb_error_and_warning_become_too_large() -> None:
    assert status_of(png_header_only(20_000, 10_000)) == "too_large"  # > 2× Pillow's limit: its error
    with pytest.warns(Image.DecompressionBombWarning):  # between 1× and 2×: Pillow only warns, memray refuses
        assert status_of(png_header_only(10_000, 9_000)) == "too_large"


def test_max_pixels_above_pillows_own_limit_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    header = png_header_only(13_500, 13_500)  # 182,250,000 pixels: above twice Pillow's limit (178,956,970)
    assert status_of(header) == "too_large"
    assert status_of(header, max_pixels=200_000_000) == "truncated"  # let through, then decoded until its data ends
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # restored
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # a process that lowered Pillow's limit
    data = encode(Image.new("L", (120, 100)), "PNG")
    assert decode_image(data, max_pixels=12_000).shape == (100, 120, 3)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow warns at the limit memray gave it; memray refuses
        assert status_of(data, max_pixels=11_999) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_decode_array_channels_and_refusals(rgb: np.ndarray) -> None:
    grey = rgb[:, :, 1]
    np.testing.assert_array_equal(decode_array(grey), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(decode_array(grey[:, :, None]), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(decode_array(np.concatenate([rgb, rgb[:, :, :1]], 2)), rgb)
    assert decode_array(rgb[:, ::-1]).flags.c_contiguous
    for bad, status in ((rgb.astype(np.float32), "not_image"), (rgb[:, :, :2], "not_image"), (rgb[:0], "empty")):
        with pytest.raises(ImageDecodeError) as info:
            decode_array(bad)
        assert info.value.status == status


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_by_hand(rgb: np.ndarray, interlaced: bool = False, keep: float = 1.0) -> bytes:
    """A valid RGB PNG written here (filter 0, Adam7 when interlaced) whose zlib stream holds only the first
    ``keep`` fraction of the scanline bytes: every chunk and CRC correct, just fewer rows than IHDR declares."""
    h, w, _ = rgb.shape
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, int(interlaced))
    idat = zlib.compress(raw[: int(len(raw) * keep)])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_png_with_fewer_rows_than_its_header_is_truncated(rgb: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(png_by_hand(rgb)), rgb)  # the hand-written PNG is valid
    np.testing.assert_array_equal(decode_image(png_by_hand(rgb, interlaced=True)), rgb)
    for keep in (0.5, 23 / 24):  # 12 of 24 rows; all but the last row
        with pytest.raises(ImageDecodeError) as info:
            decode_image(png_by_hand(rgb, keep=keep))
        assert info.value.status == "truncated" and f"{int(24 * keep)} of 24 rows" in info.value.message
    assert status_of(png_by_hand(rgb, interlaced=True, keep=0.9)) == "truncated"
    black = rgb.copy()
    black[-3:] = 0  # complete images whose last rows are black still decode
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(black), "PNG")), black)
    np.testing.assert_array_equal(decode_image(png_by_hand(black, interlaced=True)), black)
    grey16 = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    assert decode_image(encode(grey16, "PNG")).shape == (24, 30, 3)
