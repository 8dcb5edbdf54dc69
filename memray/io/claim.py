"""One writer per folder: a claim record with a lease that the running job renews.

A job that writes a folder (an audit's output, a reference it builds) first creates ``<folder>/.memray-claim.json``::

    {"holder": "alice@node-1 pid 4242", "host": "node-1", "pid": 4242, "proc_start": "912345",
     "started": "2026-12-07T10:00:00.000Z", "renewed": "2026-12-07T10:05:00.000Z", "lease_s": 300.0,
     "run_id": "5f0c…", "purpose": "memray audit"}

- :func:`acquire` creates it atomically (:mod:`memray.io.claim_store`). A live claim of another run raises
  :class:`ClaimHeldError`, one line naming the holder, the start, the last renewal and when the lease expires.
- A claim is *stale* (:func:`stale_reason`) when its lease expired (not renewed for ``lease_s`` seconds), or when
  it was made on this host by a process that is gone (no such pid, or a pid reused by a later process). A stale claim
  is replaced by compare-and-swap, so of several runs taking it over exactly one succeeds; the takeover is logged.
- While held, a daemon thread renews it every ``lease_s / 3`` seconds, so a run of many hours keeps it. A renewal
  that finds another run's record (possible only after the lease ran out unrenewed, e.g. a suspended driver) marks
  the claim lost: :meth:`Claim.check` then raises :class:`ClaimLostError`.
- :meth:`Claim.release` stops the renewals and deletes the record only if it is still this run's.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from memray.io import storage
from memray.io.claim_store import CLAIM_FILE, ClaimStore, ListedStore, NoConditionalWrites, Read, Token, claim_store
from memray.io.config import CLAIM_LEASE_S as DEFAULT_LEASE_S

log = logging.getLogger(__name__)
ACQUIRE_TRIES = 5
__all__ = ["CLAIM_FILE", "DEFAULT_LEASE_S", "Claim", "ClaimHeldError", "ClaimLostError", "ClaimRecord", "acquire"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), ``""`` where unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def process_alive(pid: int, proc_start: str = "") -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``proc_start`` (when known)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = process_start(pid) if proc_start else ""
    return not (now and now != proc_start)


@dataclass(frozen=True)
class ClaimRecord:
    """Who holds a folder: ``holder`` (``user@host pid N``), when it started and last renewed (ISO UTC)."""

    holder: str
    host: str
    pid: int
    proc_start: str
    started: str
    renewed: str
    lease_s: float
    run_id: str
    purpose: str = ""

    @classmethod
    def new(cls, lease_s: float, purpose: str = "") -> ClaimRecord:
        """A record for this process, started and renewed now, with a fresh run id."""
        host, pid = socket.gethostname(), os.getpid()
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user without a passwd entry
            user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        now = _iso(_now())
        return cls(f"{user}@{host} pid {pid}", host, pid, process_start(pid), now, now, float(lease_s),
                   uuid.uuid4().hex, purpose)  # fmt: skip

    def renewed_now(self) -> ClaimRecord:
        return replace(self, renewed=_iso(_now()))

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ClaimRecord:
        """Parse a record; ``ValueError`` when it is not one."""
        try:
            raw = json.loads(data)
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a claim record ({exc})") from None

    def age_s(self, store_age: float | None = None) -> float:
        """Seconds since the last renewal: the store's measure when it has one, else this host's clock."""
        age = store_age if store_age is not None else (_now() - _parse(self.renewed)).total_seconds()
        return max(0.0, age)


def stale_reason(
    rec: ClaimRecord, age_s: float, host: str | None = None, alive: Callable[[int, str], bool] = process_alive
) -> str | None:
    """Why ``rec`` may be taken over (lease expired; same host and its process gone), or ``None`` if it is live."""
    if age_s > rec.lease_s:
        return f"its lease expired {age_s - rec.lease_s:.0f} s ago"
    if rec.host == (host or socket.gethostname()) and not alive(rec.pid, rec.proc_start):
        return f"its process {rec.pid} on {rec.host} is gone"
    return None


def describe(rec: ClaimRecord, age_s: float) -> str:
    """``alice@node-1 pid 4242 since 2026-12-07T10:00Z (lease renewed 5 s ago, expires in 295 s)``."""
    since = _parse(rec.started).strftime("%Y-%m-%dT%H:%MZ")
    left = max(0.0, rec.lease_s - age_s)
    return f"{rec.holder} since {since} (lease renewed {age_s:.0f} s ago, expires in {left:.0f} s)"


class ClaimHeldError(ValueError):
    """Another live run holds the folder; the message names it (one line)."""

    def __init__(self, message: str, record: ClaimRecord | None = None) -> None:
        super().__init__(message)
        self.record = record

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.record))


class ClaimLostError(ValueError):
    """Another run took this run's claim over (its lease had run out unrenewed)."""


class Claim:
    """A held claim: renewed in the background until :meth:`release` (also a context manager)."""

    def __init__(self, store: ClaimStore, folder: str, record: ClaimRecord, token: Token) -> None:
        self.store, self.folder, self.record, self.token = store, folder, record, token
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> None:
        """Write a fresh ``renewed`` time if the record is still ours; else mark the claim lost."""
        if self.lost:
            return
        new = self.record.renewed_now()
        with storage.translate_errors(self.store.url, "renew claim"):
            token = self.store.replace(new.to_json(), self.token)
            if token is None:
                got = self.store.read()
                other = _record(got)
                if other is not None and other.run_id == self.record.run_id:  # our write landed; answer was lost
                    self.record, self.token = other, got[1]
                    return
                self.lost = f"taken over by {other.holder if other else 'nobody (the claim was deleted)'}"
                log.error("claim on %s lost: %s; another run may be writing it", self.folder, self.lost)
                return
        self.record, self.token = new, token

    def _loop(self) -> None:
        while not self._stop.wait(self.record.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # a store that is down now may answer at the next try; the lease covers it
                log.warning("claim on %s not renewed: %s", self.folder, exc)
            if self.lost:
                return

    def start_renewing(self) -> Claim:
        self._thread = threading.Thread(target=self._loop, name=f"memray-claim {self.folder}", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise :class:`ClaimLostError` if another run took the claim over."""
        if self.lost:
            raise ClaimLostError(f"{self.folder}: this run's claim was {self.lost}; its results there may be mixed "
                                 "with the other run's: rerun into a new folder")  # fmt: skip

    def release(self) -> None:
        """Stop renewing; delete the record if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost:
            return
        try:
            with storage.translate_errors(self.store.url, "release claim"):
                if not self.store.delete(self.token):
                    log.warning("claim on %s was no longer this run's; left in place", self.folder)
        except Exception as exc:  # the run's outcome stands; the record expires with its lease
            log.warning("claim on %s not released (%s); it expires after %.0f s", self.folder, exc, self.record.lease_s)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _record(got: Read | None) -> ClaimRecord | None:
    return None if got is None else ClaimRecord.from_json(got[0])


def acquire(
    folder: str,
    lease_s: float = DEFAULT_LEASE_S,
    storage_options: dict[str, Any] | None = None,
    purpose: str = "",
    label: str = "",
    doing: str = "written",
    advice: str = "wait, or write somewhere else",
    renew: bool = True,
) -> Claim:
    """Claim ``folder`` for this run (taking over a stale claim), renewing it in the background when ``renew``.

    Raises:
        ClaimHeldError: a live claim of another run: ``{label}{folder} is being {doing} by {holder} since … (lease
            renewed N s ago, expires in M s); {advice}, or remove {claim file} if that run is gone``.
        ValueError: the claim file is not a claim record.
        StorageError: the store cannot be reached.
    """
    store = claim_store(folder, storage_options)
    ours = ClaimRecord.new(lease_s, purpose)
    data = ours.to_json()
    for _ in range(ACQUIRE_TRIES):
        with storage.translate_errors(store.url, "claim"):
            try:
                token = store.create(data)
            except NoConditionalWrites as exc:
                log.warning("%s: conditional writes not supported (%s); claiming by read-back", store.url, exc)
                store = ListedStore(folder, storage_options)
                token = store.create(data)
            if token is not None:
                return _held(store, folder, ours, token, renew)
            got = store.read()
            if got is None:  # released in between: try again
                continue
            try:
                cur = ClaimRecord.from_json(got[0])
            except ValueError as exc:
                raise ValueError(f"{store.url}: {exc}; remove it if no run is writing {folder}") from None
            age = cur.age_s(got[2])
            if cur.run_id == ours.run_id:  # our create landed but its answer was lost
                return _held(store, folder, ours, got[1], renew)
            why = stale_reason(cur, age)
            if why is None:
                raise ClaimHeldError(
                    f"{label}{folder} is being {doing} by {describe(cur, age)}; {advice}, or remove {store.url} if "
                    "that run is gone",
                    cur,
                )
            token = store.replace(data, got[1])
            if token is not None:
                log.warning("%s: took over the claim of %s (%s)", folder, cur.holder, why)
                return _held(store, folder, ours, token, renew)
    raise ClaimHeldError(f"{label}{folder}: its claim changed hands {ACQUIRE_TRIES} times while this run tried to "
                         f"take it; {advice}")  # fmt: skip


def _held(store: ClaimStore, folder: str, record: ClaimRecord, token: Token, renew: bool) -> Claim:
    claim = Claim(store, folder, record, token)
    log.info("claimed %s (%s, lease %.0f s)", folder, record.holder, record.lease_s)
    return claim.start_renewing() if renew else claim
