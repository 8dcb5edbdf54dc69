"""Local paths and object-store URLs (``s3://``, any fsspec protocol) behind one small API.

Writes are atomic: a local file is written to a temporary name in the same folder and renamed (created with mode
``0o666 & ~umask``, as ``open`` does); an object store write is a single PUT of the finished object (S3 objects
only appear once complete). Credentials and endpoints come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``…) or from ``storage_options``; they are never logged.

``s3://`` URLs get bounded timeouts and retries by default (:func:`default_storage_options`). Every entry point
turns a failure of the store (no credentials, refused connection, timeout, access denied, I/O error) into one
:class:`StorageError` that names the URL, the cause and what to check; a missing object stays
:class:`FileNotFoundError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

S3_CONNECT_TIMEOUT_S = 5
"""Default seconds to open a TCP connection to an S3 endpoint (botocore ``connect_timeout``)."""
S3_READ_TIMEOUT_S = 15
"""Default seconds to wait for the next bytes of an answer (botocore ``read_timeout``). An endpoint that accepts
connections and never answers fails one call after about 8 × this (2 s3fs tries × 3 botocore attempts, a couple
of requests per call, plus backoff): ~2 minutes by default, 21 s measured with ``read_timeout=2``."""
S3_MAX_ATTEMPTS = 3
"""Default botocore attempts per request (``retries.mode = "standard"``: backoff, transient errors only)."""
S3FS_RETRIES = 2
"""Default s3fs attempts around each call (``S3FileSystem.retries``; also retries broken body reads)."""
_S3FS_RETRIES_KEY = "retries"  # not an S3FileSystem argument: memray sets it as the filesystem's attribute

_CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the job runs, or storage_options key/secret"
)
_REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
DISK_FULL_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
}
"""Errors of a local write refused by the disk, with the cause in a few words; :func:`open_output` names its URL."""


class StorageError(ValueError):
    """A storage operation failed; the message names the URL, the cause in a few words and what to check.

    Attributes:
        url: the URL the operation was about.
        unreachable: True when the store itself failed (no credentials, refused, timed out): nothing on it can be
            read now; False for a failure about this one object (access denied, I/O error).
    """

    def __init__(self, message: str, url: str = "", unreachable: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.unreachable = unreachable

    def __reduce__(self) -> tuple[Any, ...]:  # keep the attributes across Ray/pickle
        return (type(self), (str(self), self.url, self.unreachable))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (nested dicts merge key by key; other values replace)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://``."""
    return "://" in str(url) and not str(url).startswith("file://")


def default_storage_options(url: str) -> dict[str, Any]:
    """Default fsspec options of ``url``; user ``storage_options`` deep-merge over them.

    For ``s3://``: ``config_kwargs`` with connect/read timeouts and botocore retries (standard mode), s3fs'
    ``retries``, and ``client_kwargs.endpoint_url`` from ``MEMRAY_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``.
    """
    if not str(url).startswith("s3://"):
        return {}
    opts: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        },
        _S3FS_RETRIES_KEY: S3FS_RETRIES,
    }
    endpoint = os.environ.get("MEMRAY_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def _options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    return _merge(default_storage_options(url), dict(storage_options or {}))


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of ``url`` (options: defaults, then ``storage_options``)."""
    opts = _options(url, storage_options)
    retries = opts.pop(_S3FS_RETRIES_KEY, None) if str(url).startswith("s3://") else None
    fs, path = fsspec.core.url_to_fs(str(url), **opts)
    if retries is not None:
        fs.retries = max(1, int(retries))
    return fs, path


@functools.cache
def _failure_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientError

        types.append(ClientError)
    return tuple(types)


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the store (botocore/aiohttp/OS/timeout), not a missing object."""
    return isinstance(exc, _failure_types()) and not isinstance(exc, FileNotFoundError | StorageError)


def _classify(exc: BaseException, remote: bool) -> tuple[str, str, bool]:
    """(cause in a few words, what to check, unreachable) of a storage failure."""
    names = {c.__name__ for c in type(exc).__mro__}
    cause = getattr(exc, "__cause__", None)
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code", "")
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "ProfileNotFound"}:
        return "no usable credentials found", _CREDENTIAL_HINT, True
    if isinstance(exc, PermissionError) and code in _REFUSED_CREDENTIALS:
        return "credentials refused by the endpoint", _CREDENTIAL_HINT, True
    if isinstance(exc, PermissionError):
        hint = "check that these credentials may access this bucket and key" if remote else "check its permissions"
        return "access denied", hint, False
    if names & {"ReadTimeoutError", "ConnectTimeoutError", "TimeoutError", "FSTimeoutError", "ServerTimeoutError"}:
        hint = (
            "check AWS_ENDPOINT_URL (storage_options.client_kwargs.endpoint_url) and the network, or raise "
            "storage_options.config_kwargs.read_timeout / connect_timeout"
        )
        return "no answer from the endpoint within the timeout", hint, True
    if names & {"ConnectionError", "EndpointConnectionError", "ConnectionClosedError", "ClientConnectionError"}:
        hint = (
            "check AWS_ENDPOINT_URL (storage_options.client_kwargs.endpoint_url), that the server is up and reachable"
        )
        return "cannot connect to the endpoint", hint, True
    if "NoRegionError" in names:
        return "no region configured", "set AWS_DEFAULT_REGION or storage_options.client_kwargs.region_name", True
    if "ParamValidationError" in names:
        return "invalid bucket or key", "check the URL", False
    if names & {"BotoCoreError", "ClientError"}:
        return "storage client error", "check AWS_ENDPOINT_URL, the credentials and the storage_options", True
    if getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
        return DISK_FULL_ERRNOS[exc.errno], "free space (or quota) on that disk, or write the output elsewhere", False
    if getattr(exc, "errno", None) == errno.EROFS:
        return "read-only file system", "write the output elsewhere", False
    return "I/O error", "check the path, the free space and the permissions", False


def storage_error(url: str, action: str, exc: BaseException) -> StorageError:
    """A :class:`StorageError` for ``exc`` raised while doing ``action`` (``"read"``, ``"write"``…) on ``url``."""
    if isinstance(exc, StorageError):
        return exc
    cause, hint, unreachable = _classify(exc, is_remote(url))
    detail = f"{type(exc).__name__}: {exc}"[:300]
    return StorageError(f"{url}: cannot {action}: {cause} ({detail}); {hint}", str(url), unreachable)


@contextlib.contextmanager
def translate_errors(url: str, action: str) -> Iterator[None]:
    """Re-raise storage failures inside the block as :class:`StorageError` (``FileNotFoundError`` passes)."""
    try:
        yield
    except BaseException as exc:
        if is_storage_failure(exc):
            raise storage_error(url, action, exc) from exc
        raise


def open_url(url: str, mode: str = "rb", storage_options: dict[str, Any] | None = None) -> IO:
    """Open a local path or URL for reading.

    Raises:
        FileNotFoundError: no such file/object.
        StorageError: any other failure to open it (see the module docstring).
    """
    with translate_errors(url, "open"):
        if not is_remote(url):
            return open(str(url).removeprefix("file://"), mode)
        fs, path = filesystem(url, storage_options)
        return fs.open(path, mode)


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
            fs, path = filesystem(url, storage_options)
            fs.pipe_file(path, buf.getvalue())
        return
    target = Path(str(url).removeprefix("file://"))
    with translate_errors(url, "write"):
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
        fs, path = filesystem(url, storage_options)
        return fs.exists(path)


def remove(url: str, storage_options: dict[str, Any] | None = None, recursive: bool = False) -> None:
    """Delete a file/object (or, with ``recursive``, a folder/prefix) if it exists."""
    with translate_errors(url, "delete"):
        fs, path = filesystem(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def write_json(url: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    with open_output(url, storage_options) as fh:
        fh.write(data + b"\n")


def read_json(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Read a JSON file/object (``FileNotFoundError`` when missing, :class:`StorageError` when unreadable)."""
    with translate_errors(url, "read"), open_url(url, "rb", storage_options) as fh:
        return json.loads(fh.read())
