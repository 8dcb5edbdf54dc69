"""The filesystem of a URL, and the one place memray's calls to object stores go through: :meth:`Store.call`.

:func:`store` makes the fsspec filesystem of a URL from memray's defaults (:func:`default_storage_options`: S3
connect/read timeouts and retries) deep-merged with the user's ``storage_options``, and pairs it with a deadline.
Every object-store call memray makes (HEAD, existence check, listing page, ranged read, write, delete) runs through
:meth:`Store.call`, which cancels it at the deadline and raises one :class:`StorageError` naming the URL, the
operation, the deadline and the option to raise.

Why this deadline: botocore's ``read_timeout`` bounds each wait for the next bytes, so an endpoint that sends one
byte every few seconds keeps a call alive forever. memray bounds the whole call instead, retries included: it may
take ``op_timeout_s`` seconds (``storage_options.op_timeout_s``, default 300) for every 64 MiB it moves
(:func:`deadline_s`). A HEAD or one listing page (up to 1,000 keys) gets ``op_timeout_s``; reading or writing n
bytes gets ``op_timeout_s × ceil(n / 64 MiB)``. One limit thus serves both: a call may go no slower than 64 MiB per
``op_timeout_s`` (0.2 MiB/s by default), far below any working link, so a large object never trips a deadline sized
for a listing page, and a prefix of millions of objects is listed as many bounded pages (progress logged every
:data:`LIST_PROGRESS_S`), never as one unbounded call. Only asynchronous fsspec filesystems (s3, gcs, http, …) can be
cancelled; local files get no deadline.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.spec import AbstractBufferedFile

from memray.io.config import STORAGE_OP_TIMEOUT, storage_op_timeout
from memray.io.storage_errors import deadline_error, is_remote

log = logging.getLogger(__name__)

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
OP_TIMEOUT_S = 300.0
"""Default deadline in seconds of one object-store call per :data:`DEADLINE_BYTES` it moves
(``storage_options.op_timeout_s``)."""
DEADLINE_BYTES = 64 * 2**20
"""Bytes a call may move per ``op_timeout_s`` (:func:`deadline_s`)."""
LIST_PAGE_KEYS = 1000
"""Keys per S3 listing page (S3's maximum): each page is one call with its own deadline."""
LIST_PROGRESS_S = 10.0
"""A listing still running logs its count (INFO) at most this often."""
_CANCEL_GRACE_S = 5.0  # how long a cancelled call may take to close its connection
_VERBS = {"info": "check", "exists": "check", "isfile": "check", "size": "check", "isdir": "list", "find": "list"}
_VERBS |= {"ls": "list", "glob": "list", "call_s3": "list", "cat_file": "read", "pipe_file": "write", "rm": "delete"}


def deadline_s(op_timeout_s: float, nbytes: int = 0) -> float:
    """Deadline of a call moving ``nbytes``: ``op_timeout_s × max(1, ceil(nbytes / DEADLINE_BYTES))`` seconds."""
    return float(op_timeout_s) * max(1, math.ceil(int(nbytes) / DEADLINE_BYTES))


class _PastDeadline(Exception):
    """Raised on fsspec's event loop when a call ran past its deadline (not a TimeoutError: no client timeout can
    pass for it)."""


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a cancelled call's late error is not news: mark it seen


async def _within(seconds: float, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``await fn(*args, **kwargs)``, cancelled after ``seconds`` (then :class:`_PastDeadline`)."""
    task = asyncio.ensure_future(fn(*args, **kwargs))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        return task.result()
    task.add_done_callback(_retrieve)
    task.cancel()  # aiohttp closes the request's connection
    await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
    raise _PastDeadline


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (nested dicts merge key by key; other values replace)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


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


@dataclass(frozen=True)
class Store:
    """A filesystem, the path of one URL on it, and the deadline of memray's calls to it.

    Attributes:
        fs: the fsspec filesystem. path: the URL without its protocol. url: the URL (named in errors).
        op_timeout_s: seconds per call per 64 MiB moved; ``None`` for local and other synchronous filesystems.
    """

    fs: fsspec.AbstractFileSystem
    path: str
    url: str
    op_timeout_s: float | None

    def call(self, method: str, *args: Any, nbytes: int = 0, action: str = "", **kwargs: Any) -> Any:
        """``fs.<method>(*args, **kwargs)``, cancelled after :func:`deadline_s` (``op_timeout_s``, ``nbytes``).

        ``action`` names the operation in the error (``"read"``; default: from ``method``).

        Raises:
            StorageError: the call ran past its deadline (any other error of the method passes as is).
        """
        if self.op_timeout_s is None:
            return getattr(self.fs, method)(*args, **kwargs)
        seconds = deadline_s(self.op_timeout_s, nbytes)
        try:
            return sync(self.fs.loop, _within, seconds, getattr(self.fs, f"_{method}"), *args, **kwargs)
        except _PastDeadline:
            raise deadline_error(self.url, action or _VERBS.get(method, method), seconds, nbytes) from None

    @property
    def _pages_s3(self) -> bool:
        """S3 listings go page by page (not for version-aware filesystems, which list object versions)."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        return "s3" in protocols and self.op_timeout_s is not None and not getattr(self.fs, "version_aware", False)

    def _s3_page(self, path: str, **kwargs: Any) -> dict[str, Any]:
        bucket, key, _ = self.fs.split_path(path)
        prefix = key.rstrip("/") + "/" if key else ""
        return self.call("call_s3", "list_objects_v2", Bucket=bucket, Prefix=prefix, **kwargs)

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a folder/prefix (S3: something is under it, one page of one key)."""
        if not self._pages_s3:
            return bool(self.call("isdir", path))
        try:
            page = self._s3_page(path, MaxKeys=1)
        except FileNotFoundError:  # no such bucket
            return False
        return bool(page.get("Contents")) or not self.fs.split_path(path)[1]

    def find(self, path: str) -> dict[str, dict[str, Any]] | None:
        """``{name: info}`` of every file under the folder/prefix ``path``; ``None`` when it is not one.

        On S3 each page of :data:`LIST_PAGE_KEYS` keys is one call with its own deadline, and a listing still
        running logs its count every :data:`LIST_PROGRESS_S`; elsewhere one ``isdir`` and one ``find`` call.
        """
        if not self._pages_s3:
            return self.call("find", path, detail=True) if self.call("isdir", path) else None
        bucket, key, _ = self.fs.split_path(path)
        out: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"MaxKeys": LIST_PAGE_KEYS}
        start = last = time.monotonic()
        while True:
            page = self._s3_page(path, **kwargs)
            for obj in page.get("Contents", []):
                name = f"{bucket}/{obj['Key']}"
                out[name] = {**obj, "name": name, "size": obj["Size"], "type": "file"}
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
            if time.monotonic() - last >= LIST_PROGRESS_S:
                last = time.monotonic()
                log.info("%s: %d objects listed so far (%.0f s)", self.url, len(out), last - start)
        if last > start:
            log.info("%s: %d objects listed in %.0f s", self.url, len(out), time.monotonic() - start)
        return out if out or not key else None

    def open(self, block_size: int | None = None) -> IO[bytes]:
        """The object/file for reading; on an object store each ranged read is one call with its own deadline.

        ``block_size``: read-ahead bytes per request (default: the filesystem's, 50 MiB for S3).

        Raises:
            FileNotFoundError: no such object. StorageError: past a deadline.
        """
        if self.op_timeout_s is None:
            return self.fs.open(self.path, "rb", **({"block_size": block_size} if block_size else {}))
        size = self.call("info", self.path, action="read").get("size")
        if size is None:  # a store that does not tell sizes (some HTTP servers): one read of the whole object
            return io.BytesIO(self.call("cat_file", self.path))
        return _BoundedFile(self, int(size), block_size or getattr(self.fs, "default_block_size", None))


class _BoundedFile(AbstractBufferedFile):
    """A read-only object whose every ranged read (``cat_file``) is one :meth:`Store.call` with its deadline."""

    def __init__(self, st: Store, size: int, block_size: int | None) -> None:
        self.store = st
        super().__init__(st.fs, st.path, mode="rb", block_size=block_size or "default", size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.store.call("cat_file", self.path, start=start, end=end, nbytes=end - start)


def store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The :class:`Store` of ``url``: options are memray's defaults, then ``storage_options`` (deep-merged).

    ``storage_options.op_timeout_s`` sets the deadline (default :data:`OP_TIMEOUT_S`); it and ``retries`` (s3fs'
    attempts per call) are memray's keys, not passed to fsspec.

    Raises:
        FieldError: ``op_timeout_s`` is not a finite number > 0.
    """
    opts = _merge(default_storage_options(url), dict(storage_options or {}))
    op_timeout = storage_op_timeout(opts)
    opts.pop(STORAGE_OP_TIMEOUT, None)
    retries = opts.pop(_S3FS_RETRIES_KEY, None) if str(url).startswith("s3://") else None
    fs, path = fsspec.core.url_to_fs(str(url), **opts)
    if retries is not None:
        fs.retries = max(1, int(retries))
    bounded = isinstance(fs, AsyncFileSystem) and is_remote(url)
    return Store(fs, path, str(url), (op_timeout or OP_TIMEOUT_S) if bounded else None)


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of ``url`` (calls on it are not bounded: use :func:`store`)."""
    st = store(url, storage_options)
    return st.fs, st.path
