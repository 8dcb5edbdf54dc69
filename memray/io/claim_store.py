"""Where a claim record lives, with the compare-and-swap operations :mod:`memray.io.claim` is built on.

Each store holds one small object, ``<folder>/.memray-claim.json``, and offers ``read`` / ``create`` (only if absent)
/ ``replace`` (only if unchanged since read) / ``delete`` (only if unchanged). A *token* says "unchanged": the bytes
read (local files) or the object's ETag (S3).

- :class:`LocalStore`: every operation runs under an exclusive ``flock`` of ``<folder>/.memray-claim.lock`` (held
  for milliseconds, released by the kernel if the process dies), so read-compare-write is atomic; the record itself
  is written to a temporary file and linked/renamed into place, so it is never seen half-written.
- :class:`S3Store`: ``PutObject`` with ``If-None-Match: *`` (create) or ``If-Match: <ETag>`` (replace) and
  ``DeleteObject`` with ``If-Match``; the store decides, so exactly one of two racing writers wins. The age of a
  record is measured on the store's clock (response ``Date`` − ``LastModified``), so hosts' clocks need not agree.
- :class:`ListedStore`: any other fsspec store (or an S3 endpoint without conditional writes): create writes the
  record when absent, waits :data:`SETTLE_S` and reads it back; two writers whose existence checks fall within one
  write's latency of each other both write, and the one whose record is read back wins. Replace and delete compare
  then write, so a takeover racing a renewal can, in a window of milliseconds, leave the later writer holding it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from memray.io import storage

log = logging.getLogger(__name__)
CLAIM_FILE = ".memray-claim.json"
LOCK_FILE = ".memray-claim.lock"
SETTLE_S = 1.0
"""Seconds a :class:`ListedStore` waits between writing a new claim and reading it back."""
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_UNSUPPORTED = {"NotImplemented", "501"}

try:
    import fcntl
except ImportError:  # not POSIX: claims are checked without the lock (ListedStore's guarantees)
    fcntl = None  # type: ignore[assignment]


class NoConditionalWrites(Exception):
    """The object store rejected a conditional write (``If-None-Match``) as not implemented."""


Token = bytes | str
"""What says "unchanged since read": the record's bytes (local files, :class:`ListedStore`) or the object's ETag."""
Read = tuple[bytes, Token, float | None]
"""``(record bytes, token, age in seconds on the store's clock or None)``."""


class LocalStore:
    """A claim file in a local (or mounted shared) folder; see the module docstring."""

    def __init__(self, folder: str) -> None:
        self.dir = Path(str(folder).removeprefix("file://"))
        self.path = self.dir / CLAIM_FILE
        self.url = str(self.path)
        self.unlocked = False  # the filesystem refused a flock once (warned about then)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None and not self.unlocked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:  # a filesystem without locks: create stays exclusive (link), the rest not
                    log.warning("%s: no file locks here (%s); claims are checked without them", self.dir, exc)
                    self.unlocked = True
            yield
        finally:
            os.close(fd)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _tmp(self, data: bytes) -> Path:
        tmp = self.dir / f".{CLAIM_FILE}.{os.urandom(6).hex()}.tmp"
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def read(self) -> Read | None:
        if not self.path.exists():  # a reader's question: no folder or lock file is created for it
            return None
        with self._locked():
            data = self._read()
        return None if data is None else (data, data, None)

    def create(self, data: bytes) -> Token | None:
        with self._locked():
            tmp = self._tmp(data)
            try:
                os.link(tmp, self.path)  # fails if a claim exists, also without the lock
            except FileExistsError:
                return None
            except OSError:  # no hard links on this filesystem
                if self.path.exists():
                    return None
                os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return data

    def replace(self, data: bytes, token: Token) -> Token | None:
        with self._locked():
            if self._read() != token:
                return None
            os.replace(self._tmp(data), self.path)
        return data

    def delete(self, token: Token) -> bool:
        with self._locked():
            if self._read() != token:
                return False
            self.path.unlink()
        return True


def _error_code(exc: BaseException) -> str:
    """The S3 error code (or HTTP status) behind an s3fs exception, else ``""``."""
    seen = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {})
            return str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        seen = seen.__cause__ or seen.__context__
    return ""


class S3Store:
    """A claim object on S3 written with conditional requests; see the module docstring."""

    def __init__(self, folder: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = storage.join(folder, CLAIM_FILE)
        self.fs, path = storage.filesystem(self.url, storage_options)
        self.bucket, self.key, _ = self.fs.split_path(path)

    def _call(self, op: str, **kwargs: Any) -> dict[str, Any] | None:
        """``op`` on the claim object; ``None`` when a precondition failed or the object is missing."""
        try:
            return self.fs.call_s3(op, Bucket=self.bucket, Key=self.key, **kwargs)
        except FileNotFoundError:
            return None
        except OSError as exc:
            code = _error_code(exc)
            if code in _PRECONDITION:
                return None
            if code in _UNSUPPORTED:
                raise NoConditionalWrites(str(exc)) from exc
            raise

    def read(self) -> Read | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, dict[str, Any]]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            return await resp["Body"].read(), resp

        try:
            data, resp = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        age = None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        with contextlib.suppress(TypeError, ValueError):  # no usable Date header: the record's own clock
            age = (parsedate_to_datetime(date) - resp["LastModified"]).total_seconds()
        return data, resp["ETag"], age

    def create(self, data: bytes) -> Token | None:
        resp = self._call("put_object", Body=data, IfNoneMatch="*")
        return None if resp is None else resp["ETag"]

    def replace(self, data: bytes, token: Token) -> Token | None:
        resp = self._call("put_object", Body=data, IfMatch=token)
        return None if resp is None else resp["ETag"]

    def delete(self, token: Token) -> bool:
        try:
            return self._call("delete_object", IfMatch=token) is not None
        except NoConditionalWrites:  # a store without conditional deletes: compare, then delete
            got = self.read()
            if got is None or got[1] != token:
                return False
            return self._call("delete_object") is not None


class ListedStore:
    """A claim object on a store without conditional writes; see the module docstring for its race."""

    def __init__(self, folder: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = storage.join(folder, CLAIM_FILE)
        self.fs, self.path = storage.filesystem(self.url, storage_options)

    def read(self) -> Read | None:
        self.fs.invalidate_cache(self.path)
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data, None

    def create(self, data: bytes) -> Token | None:
        if self.read() is not None:
            return None
        self.fs.pipe_file(self.path, data)
        time.sleep(SETTLE_S)
        got = self.read()
        return data if got is not None and got[0] == data else None

    def replace(self, data: bytes, token: Token) -> Token | None:
        got = self.read()
        if got is None or got[0] != token:
            return None
        self.fs.pipe_file(self.path, data)
        return data

    def delete(self, token: Token) -> bool:
        got = self.read()
        if got is None or got[0] != token:
            return False
        self.fs.rm(self.path)
        return True


ClaimStore = LocalStore | S3Store | ListedStore


def claim_store(folder: str, storage_options: dict[str, Any] | None = None) -> ClaimStore:
    """The store for ``folder``: local path, ``s3://`` prefix, or any other fsspec URL."""
    if not storage.is_remote(folder):
        return LocalStore(folder)
    if str(folder).startswith("s3://"):
        return S3Store(folder, storage_options)
    return ListedStore(folder, storage_options)
