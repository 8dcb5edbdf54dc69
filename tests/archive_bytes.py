"""Small in-memory test inputs shared by the source, shard and Ray I/O tests: PNG bytes and tar archives."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image


def png_bytes(value: int, size: int = 6, channels: int = 3) -> bytes:
    """A ``size × size`` PNG of one grey value (RGB when ``channels == 3``, else greyscale)."""
    shape = (size, size, 3) if channels == 3 else (size, size)
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive of ``{member name: bytes}`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
