"""The one-line error of a failed storage operation, and how a store's failures are told apart from a missing object.

:class:`StorageError` names the URL, the cause in a few words and what to check; :func:`storage_error` builds it
from whatever the client raised (botocore, aiohttp, OS, timeouts), :func:`deadline_error` for a call that ran past
memray's own deadline (:mod:`memray.io.filesystems`). A missing object stays :class:`FileNotFoundError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
from collections.abc import Iterator
from typing import Any


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://``."""
    return "://" in str(url) and not str(url).startswith("file://")


_CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where the job runs, or storage_options key/secret"
)
_REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
DISK_FULL_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
}
"""Errors of a local write refused by the disk, with the cause in a few words; ``open_output`` names its URL."""


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


def deadline_error(url: str, action: str, seconds: float, nbytes: int = 0) -> StorageError:
    """The :class:`StorageError` of a call on ``url`` that ran past memray's deadline of ``seconds``.

    The store answered too slowly (trickling, overloaded or stalled): every later call would wait as long, so it
    counts as unreachable.
    """
    moved = f" to move {nbytes:,} bytes" if nbytes else ""
    return StorageError(
        f"{url}: cannot {action}: the endpoint did not finish within {seconds:g} s{moved} (storage_options."
        "op_timeout_s; it answers too slowly or has stalled); check the endpoint and the network, or raise "
        "storage_options.op_timeout_s",
        str(url),
        unreachable=True,
    )
