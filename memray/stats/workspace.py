"""Global row blocks, their ordered reduction, and the workspace where per-block outputs live.

The training set of one layer is ``n`` rows in a fixed global order; work item ``g`` is the row range
``[g·B, min((g+1)·B, n))`` (:func:`block_range`, ``B = cfg.block_rows``). Per-block partial results are merged by
:func:`reduce_ordered` in block order with a fixed pairwise tree, so a reduction depends only on the data and
``B``: not on the files the rows come from, on how many workers run or on the order they finish in.

A :class:`Workspace` is a picklable handle (a root URL and storage options) under which workers write their
outputs as ``<root>/<key>.npz`` files (local or any fsspec URL such as ``s3://``), atomically, and read them back
(:func:`load_npz`: the arrays of the uncompressed archives ``np.savez`` writes are cut from the bytes directly).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from memray.io.storage import exists, join, open_output, open_url, translate_errors

T = TypeVar("T")


def block_count(n: int, block_rows: int) -> int:
    """Number of global row blocks of ``n`` rows (``ceil(n / block_rows)``)."""
    if block_rows < 1:
        raise ValueError(f"block_rows={block_rows}: need at least 1")
    return -(-int(n) // int(block_rows))


def block_range(g: int, block_rows: int, n: int) -> tuple[int, int]:
    """Global rows ``[start, stop)`` of block ``g``."""
    start = int(g) * int(block_rows)
    if not 0 <= start < n:
        raise IndexError(f"block {g} of {block_count(n, block_rows)} (n={n}, block_rows={block_rows})")
    return start, min(start + int(block_rows), int(n))


def reduce_ordered(items: Iterable[T], merge: Callable[[T, T], T]) -> T:
    """Merge ``items`` (per-block partials, in block order) with a fixed pairwise tree, streaming.

    The tree is that of a binary counter: complete subtrees of 2^j consecutive blocks are merged as soon as two of
    the same size are on the stack, and the remaining ones are merged right to left at the end, so for 7 blocks
    the result is ``m(m(m(0,1), m(2,3)), m(m(4,5), 6))``. The association depends only on the number of items, and
    at most ``log2(n) + 1`` partials are held at once (``items`` may be a lazy iterator, e.g. a mapper's results).

    Raises:
        ValueError: ``items`` is empty.
    """
    stack: list[tuple[int, T]] = []  # (number of blocks merged, partial)
    for item in items:
        size, value = 1, item
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, value = size + left_size, merge(left, value)
        stack.append((size, value))
    if not stack:
        raise ValueError("reduce_ordered: nothing to reduce (no blocks)")
    value = stack.pop()[1]
    while stack:
        value = merge(stack.pop()[1], value)
    return value


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|][a-zA-Z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}")


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` archive's bytes, equal to ``np.load``'s (writable copies, C order).

    An uncompressed archive of plain C-order arrays (what ``np.savez`` writes) is read by slicing each member's
    data at its local header, without ``np.load``'s per-member zip stream, CRC pass and header ``literal_eval``
    (a search task reads hundreds of small archives); any other archive goes to ``np.load(allow_pickle=False)``.
    """
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    for info in infos:
        arr = _stored_npy(data, info)
        if arr is None:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        out[info.filename.removesuffix(".npy")] = arr
    return out


def _stored_npy(data: bytes, info: zipfile.ZipInfo) -> np.ndarray | None:
    """One stored (uncompressed) ``.npy`` member as a C-order array, or ``None`` when it is anything else."""
    start = info.header_offset
    if (info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy")
            or data[start : start + 4] != b"PK\x03\x04"):  # fmt: skip
        return None
    name_len, extra_len = struct.unpack_from("<HH", data, start + 26)
    pos = start + 30 + name_len + extra_len
    end = pos + info.file_size
    if data[pos : pos + 6] != b"\x93NUMPY" or data[pos + 6] not in (1, 2, 3):
        return None
    wide = data[pos + 6] > 1  # format 2.0 and 3.0: a 4-byte header length, else 2
    header = pos + (12 if wide else 10)
    body = header + struct.unpack_from("<I" if wide else "<H", data, pos + 8)[0]
    m = _NPY_HEADER.match(data, header, body)
    if m is None:
        return None
    dtype = np.dtype(m.group(1).decode())
    shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
    count = math.prod(shape)
    if dtype.hasobject or body + count * dtype.itemsize != end:
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=body).reshape(shape).copy()


@dataclass(frozen=True)
class Workspace:
    """Per-block outputs of one fit under ``root``: ``put``/``get`` of named float/int arrays as ``<key>.npz``.

    Keys used by the fit: ``proj/block_{g:06d}`` (``z`` float64 (rows, k)), ``cells/cell_{c:04d}/block_{g:06d}``
    (``z`` float64 (m, k), ``rows`` int64 (m,) global ids, only when m > 0). Writes are atomic
    (:func:`memray.io.storage.open_output`), so a reader never sees a partial file.
    """

    root: str
    storage_options: dict[str, Any] | None = field(default=None, compare=False)

    def url(self, key: str) -> str:
        """URL of the file holding ``key``."""
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid workspace key {key!r}")
        return join(self.root, f"{key}.npz")

    def child(self, name: str) -> Workspace:
        """The workspace under ``<root>/<name>`` (e.g. one per layer), with the same storage options."""
        return Workspace(join(self.root, name), self.storage_options)

    def put(self, key: str, **arrays: np.ndarray) -> None:
        """Write ``arrays`` under ``key`` (atomically; replaces an earlier value)."""
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(a) for name, a in arrays.items()})
        with open_output(self.url(key), self.storage_options) as fh:
            fh.write(buf.getbuffer())

    def get(self, key: str) -> dict[str, np.ndarray]:
        """The arrays written under ``key``.

        Raises:
            FileNotFoundError: nothing was written under ``key``.
        """
        url = self.url(key)
        with translate_errors(url, "read"), open_url(url, "rb", self.storage_options) as fh:
            data = fh.read()
        return load_npz(data)

    def exists(self, key: str) -> bool:
        """Whether something was written under ``key``."""
        return exists(self.url(key), self.storage_options)


@contextlib.contextmanager
def temporary_workspace(prefix: str = "memray-ws-") -> Iterator[Workspace]:
    """A local :class:`Workspace` in a new temporary folder, removed when the ``with`` block ends."""
    root = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Workspace(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
