"""Reading ``.safetensors`` weights files, local or from object storage, never unpickling anything.

:func:`read_safetensors_header` reads only the 8-byte length and the JSON header (two ranged reads), so a
multi-GB checkpoint on ``s3://`` can be checked in milliseconds; :func:`read_weights` reads the whole file;
:func:`weights_digest` streams it once through SHA-256 (the weights' identity, in bounded memory).
Pickle checkpoints (``.pth``, ``.bin``, …) are refused by name before any byte is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import torch

from memray.io.storage import StorageError, is_storage_failure, open_url, storage_error, store

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES: frozenset[str] = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"})
_CONVERT_HINT = (
    'convert it on a trusted machine: python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('IN.pth', map_location='cpu', weights_only=True); "
    "st.save_file(sd.get('model', sd), 'OUT.safetensors')\""
)
DIGEST_CHUNK = 8 * 1024**2  # bytes read at a time by weights_digest
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
#: safetensors dtype names → torch dtypes (others get float32 stand-ins in the shape-only check).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class WeightsError(ValueError):
    """The encoder or its weights cannot be provided; the message says what to do."""


def _check_suffix(url: str) -> None:
    """Only ``.safetensors`` files are read; pickles are refused before anything is read."""
    suffix = PurePosixPath(str(url).split("?")[0]).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{url}: {suffix} checkpoints are pickles and are never loaded (unpickling runs code); {_CONVERT_HINT}"
        )
    if suffix != SAFE_SUFFIX:
        raise WeightsError(f"{url}: expected a {SAFE_SUFFIX} file (got {suffix or 'no suffix'}); {_CONVERT_HINT}")


@contextlib.contextmanager
def _reading(url: str) -> Iterator[None]:
    """A missing file or a failing store (no credentials, refused, …) inside the block → one-line WeightsError."""
    try:
        yield
    except FileNotFoundError as exc:
        raise WeightsError(f"{url}: weights file not found (embed.weights / --weights)") from exc
    except Exception as exc:
        if isinstance(exc, StorageError) or is_storage_failure(exc):
            raise WeightsError(str(storage_error(url, "read the weights", exc))) from exc
        raise


def read_weights(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of a ``.safetensors`` file; other suffixes are refused before anything is read."""
    _check_suffix(url)
    with _reading(url), open_url(url, "rb", storage_options) as fh:
        return fh.read()


def weights_digest(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a weights file is, by content: its SHA-256 and size, read once in chunks of :data:`DIGEST_CHUNK` bytes.

    Returns:
        ``{"sha256": 64 hex chars, "bytes": size}``, plus ``"etag"`` for an object in a store that reports one.
    """
    _check_suffix(url)
    sha, size = hashlib.sha256(), 0
    with _reading(url):
        st = store(url, storage_options)
        info = st.call("info", st.path)
        with open_url(url, "rb", storage_options) as fh:
            while chunk := fh.read(DIGEST_CHUNK):
                sha.update(chunk)
                size += len(chunk)
    out: dict[str, Any] = {"sha256": sha.hexdigest(), "bytes": size}
    etag = info.get("ETag", info.get("etag"))
    if etag:
        out["etag"] = str(etag).strip('"')
    return out


def read_safetensors_header(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Names, dtypes and shapes of a ``.safetensors`` file from its header alone.

    Reads the file size, the 8-byte little-endian header length and the JSON header (ranged reads); checks that
    every entry's ``data_offsets`` fit its dtype and shape and lie inside the file (a cut-off file is caught).

    Returns:
        ``{"bytes": file size, "header_bytes": 8 + header length, "tensors": {name: (dtype, shape)}}``.
    """
    _check_suffix(url)
    bad = f"{url}: not a safetensors file, or cut off"
    with _reading(url):
        st = store(url, storage_options)
        size = int(st.call("size", st.path, action="read"))
        n = int.from_bytes(st.call("cat_file", st.path, start=0, end=8), "little") if size >= 8 else 0
        if not 2 <= n <= MAX_HEADER_BYTES or 8 + n > size:
            raise WeightsError(f"{bad} (header length {n}, file size {size} bytes); {_CONVERT_HINT}")
        raw = st.call("cat_file", st.path, start=8, end=8 + n, nbytes=n)
    try:
        header = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise WeightsError(f"{bad} (its header is not JSON: {exc})") from exc
    if len(raw) != n or not isinstance(header, dict):
        raise WeightsError(f"{bad} (its header is not a JSON object of {n} bytes)")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{bad} (malformed header entry {name!r})") from exc
        itemsize = ST_DTYPES[dtype].itemsize if dtype in ST_DTYPES else None
        numel = int(torch.Size(shape).numel()) if all(d >= 0 for d in shape) else -1
        if numel < 0 or not 0 <= start <= end or (itemsize is not None and end - start != numel * itemsize):
            raise WeightsError(f"{bad} (header entry {name!r}: data_offsets {[start, end]} do not fit {dtype}{shape})")
        tensors[name] = (dtype, shape)
        data_end = max(data_end, end)
    if 8 + n + data_end > size:
        raise WeightsError(f"{url}: cut off: its header describes {8 + n + data_end} bytes, the file has {size}")
    return {"bytes": size, "header_bytes": 8 + n, "tensors": tensors}
