"""User errors raised inside Ray Data functions, carried to the driver intact.

Ray Data wraps an exception raised in a map function in ``UserCodeException("UDF failed to process a data block.")``
and only the text of the original's traceback reaches the driver: a full disk or an unreachable store would surface
as a long traceback instead of its one-line message. :func:`raise_own_errors` makes Ray Data raise the map function's
own exception, and :func:`user_errors` (around each map function's body) raises a user error as
:class:`StageError` (a ``ValueError`` with the original's message and class name, and a ``UserCodeException`` so Ray
Data keeps its internal frames off the console) and anything else as ``UserCodeException`` from it, as Ray Data
itself does. A plain Ray task needs none of this (Ray re-raises its exception with the original as ``cause``), but
when one of many tasks fails, :func:`settle` collects the others so Ray does not print each further failure's
traceback; :func:`one_line` is the original message for a log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import UserCodeException

from memray.io.storage import DISK_FULL_ERRNOS

SETTLE_TIMEOUT_S = 60.0
"""Longest wait for the cancelled tasks' outcomes after a failure (a task inside native code stops only on return;
the failures of tasks still running then may still be printed by Ray)."""


class StageError(UserCodeException, ValueError):
    """A user error (bad input or settings, a storage failure) raised in a Ray Data function.

    ``str()`` is the original's one-line message; ``kind``: the original's class name (the original itself stays
    in the worker: it may not survive pickling).
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return self.message  # Ray Data appends its retry advice to args[0]; the message stays one line

    def __reduce__(self) -> tuple[Any, ...]:  # keep the message and the kind across pickling
        return (type(self), (self.message, self.kind))


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user's to fix (a ``ValueError``, a missing file, a full disk), not a bug."""
    if isinstance(exc, ValueError | FileNotFoundError):
        return True
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise a user error of the block as :class:`StageError`, any other error as ``UserCodeException``."""
    try:
        yield
    except (StageError, UserCodeException):
        raise
    except Exception as exc:
        if is_user_error(exc):
            raise StageError(str(exc).strip() or type(exc).__name__, type(exc).__name__) from exc
        raise UserCodeException("UDF failed to process a data block.") from exc


def raise_own_errors(ds: ray.data.Dataset) -> None:
    """Make ``ds`` (and the datasets derived from it) raise its map functions' own exceptions, which
    :func:`user_errors` shaped, instead of wrapping them (``DataContext.raise_original_map_exception``)."""
    ds.context.raise_original_map_exception = True


def settle(refs: list[Any]) -> None:
    """After one of ``refs`` failed: cancel the tasks still running and fetch every outcome, so that Ray does not
    print each further failure's traceback as an "unhandled error" when the refs are freed."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=SETTLE_TIMEOUT_S)
    for ref in ready:
        with contextlib.suppress(Exception):
            ray.get(ref)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (of the original, for what a Ray task raised) on one line, for the log."""
    cause = getattr(exc, "cause", None)
    original = cause if isinstance(cause, BaseException) else exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
