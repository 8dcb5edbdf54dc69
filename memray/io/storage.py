"""Local paths and object-store URLs (``s3://``, any fsspec protocol) behind one small API.

Writes are atomic: a local file is written to a temporary name in the same folder and renamed (created with mode
``0o666 & ~umask``, as ``open`` does); an object store write is a single PUT of the finished object (S3 objects
only appear once complete). Credentials and endpoints come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``…) or from ``storage_options``; they are never logged.

``s3://`` URLs get bounded timeouts and retries by default (:func:`default_storage_options`), and every call to an
object store ends within a deadline (``storage_options.op_timeout_s``, :mod:`memray.io.filesystems`). Every entry
point turns a failure of the store (no credentials, refused connection, timeout, past the deadline, access denied,
I/O error) into one :class:`StorageError` that names the URL, the cause and what to check; a missing object stays
:class:`FileNotFoundError`. The filesystems and their deadlines are :mod:`memray.io.filesystems`, the errors
:mod:`memray.io.storage_errors`; this module re-exports both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from memray.io.filesystems import (
    OP_TIMEOUT_S,
    S3_CONNECT_TIMEOUT_S,
    S3_MAX_ATTEMPTS,
    S3_READ_TIMEOUT_S,
    S3FS_RETRIES,
    Store,
    default_storage_options,
    filesystem,
    store,
)
from memray.io.storage_errors import (
    DISK_FULL_ERRNOS,
    StorageError,
    deadline_error,
    is_remote,
    is_storage_failure,
    storage_error,
    translate_errors,
)


def open_url(
    url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None, block_size: int | None = None
) -> IO:
    """Open a local path or URL for reading (``block_size``: read-ahead bytes per request of a remote object).

    Raises:
        FileNotFoundError: no such file/object.
        StorageError: any other failure to open it (see the module docstring).
    """
    with translate_errors(url, "open"):
        if not is_remote(url):
            return open(str(url).removeprefix("file://"), mode)
        if mode != "rb":
            raise ValueError(f"{url}: remote objects are opened as bytes (mode 'rb'), not {mode!r}")
        return store(url, storage_options).open(block_size)


def _create_temp(target: Path) -> tuple[int, Path]:
    """Create a new temporary file beside ``target`` with mode ``0o666 & ~umask`` (``mkstemp`` forces 0600)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target.parent}: could not create a unique temporary file")


@contextlib.contextmanager
def open_output(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Write ``url`` atomically: the object/file appears only when the ``with`` block succeeds.

    Raises:
        StorageError: the file/object cannot be created or committed, or the disk refused the bytes written in the
            block (full, over quota: :data:`DISK_FULL_ERRNOS`); other errors of the ``with`` block pass as is.
    """
    if is_remote(url):
        buf = io.BytesIO()
        yield buf
        with translate_errors(url, "write"):
            st = store(url, storage_options)
            data = buf.getvalue()
            st.call("pipe_file", st.path, data, nbytes=len(data))
        return
    target = Path(str(url).removeprefix("file://"))
    with translate_errors(url, "write"):
        try:  # the folder usually exists: one system call fewer per file
            fd, tmp = _create_temp(target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        with translate_errors(url, "write"):
            os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:  # no other file's write raises these here
            raise storage_error(url, "write", exc) from exc
        raise


def join(url: str, *parts: str) -> str:
    """Join path segments onto a local path or URL with ``/``."""
    out = str(url).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a file/object exists at ``url``; a store that cannot be asked raises :class:`StorageError`."""
    with translate_errors(url, "check"):
        if not is_remote(url):
            return Path(str(url).removeprefix("file://")).exists()
        st = store(url, storage_options)
        return bool(st.call("exists", st.path))


def remove(url: str, storage_options: dict[str, Any] | None = None, recursive: bool = False) -> None:
    """Delete a file/object (or, with ``recursive``, a folder/prefix) if it exists."""
    with translate_errors(url, "delete"):
        st = store(url, storage_options)
        if st.call("exists", st.path):
            st.call("rm", st.path, recursive=recursive)


def write_json(url: str, obj: object, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    with open_output(url, storage_options) as fh:
        fh.write(data + b"\n")


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Read a JSON file/object (``FileNotFoundError`` when missing, :class:`StorageError` when unreadable)."""
    with translate_errors(url, "read"), open_url(url, "rb", storage_options) as fh:
        return json.loads(fh.read())


__all__ = [
    "OP_TIMEOUT_S",
    "S3FS_RETRIES",
    "S3_CONNECT_TIMEOUT_S",
    "S3_MAX_ATTEMPTS",
    "S3_READ_TIMEOUT_S",
    "StorageError",
    "Store",
    "deadline_error",
    "default_storage_options",
    "exists",
    "filesystem",
    "is_remote",
    "is_storage_failure",
    "join",
    "open_output",
    "open_url",
    "read_json",
    "remove",
    "storage_error",
    "store",
    "translate_errors",
    "write_json",
]
