"""Local paths and object-store URLs (``s3://``, any fsspec protocol) behind one small API.

Writes are atomic: a local file is written to a temporary name in the same folder and renamed; an object store
write is a single PUT of the finished object (S3 objects only appear once complete). Credentials and endpoints
come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``…) or from
``storage_options``; they are never logged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://``."""
    return "://" in str(url) and not str(url).startswith("file://")


def default_storage_options(url: str) -> dict[str, Any]:
    """Storage options from the environment: ``AWS_ENDPOINT_URL`` (or ``MEMRAY_S3_ENDPOINT``) for ``s3://``."""
    if str(url).startswith("s3://"):
        endpoint = os.environ.get("MEMRAY_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of ``url``."""
    opts = {**default_storage_options(url), **(storage_options or {})}
    fs, path = fsspec.core.url_to_fs(str(url), **opts)
    return fs, path


def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None) -> IO:
    """Open a local path or URL for reading."""
    if not is_remote(url):
        return open(str(url).removeprefix("file://"), mode)
    fs, path = filesystem(url, storage_options)
    return fs.open(path, mode)


@contextlib.contextmanager
def open_output(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Write ``url`` atomically: the object/file appears only when the ``with`` block succeeds."""
    if is_remote(url):
        buf = io.BytesIO()
        yield buf
        fs, path = filesystem(url, storage_options)
        fs.pipe_file(path, buf.getvalue())
        return
    target = Path(str(url).removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def join(url: str, *parts: str) -> str:
    """Join path segments onto a local path or URL with ``/``."""
    out = str(url).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a file/object exists at ``url``."""
    if not is_remote(url):
        return Path(str(url).removeprefix("file://")).exists()
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def write_json(url: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    with open_output(url, storage_options) as fh:
        fh.write(data + b"\n")


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Read a JSON file/object."""
    with open_url(url, "rb", storage_options) as fh:
        return json.loads(fh.read())
