"""The ``memray`` command line: ``audit``, ``score``, ``embed``, ``fingerprint``, ``probe``, ``report``, ``fetch``.

Each subcommand lives in ``memray.commands.<name>`` and exposes ``add_parser(subparsers)`` and ``run(args)``.
Command modules import torch, timm, Ray and FAISS only inside ``run``: ``memray --help`` and
``memray <cmd> --help`` load none of them. User errors (``ValueError``, ``FileNotFoundError``, a full disk or a
read-only file system, also when raised in a Ray task or actor) print one line ``memray <cmd>: error: …`` and exit 2;
Ctrl-C exits 130 with one line; ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import traceback

from memray import version

COMMANDS: tuple[str, ...] = ("audit", "score", "embed", "fingerprint", "probe", "report", "fetch")
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""OS errors about the disk, not the program: a user error like a bad argument."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="memray",
        description="Audit generative image models for training-data memorization (C_T per ViT layer) "
        "and attribute generated images to their model (C_T-layer fingerprints).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--version", action="version", version=f"memray {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"memray.commands.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # FAISS logs every CPU-variant library it tries (and fails) to load at INFO
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(f"memray {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user = user_error(exc)
        if user is None or args.verbose:  # a bug (or -v): the traceback
            raise
        prefix = f"memray {args.command}: "
        print(f"{prefix}error: {_user_message(user).removeprefix(prefix)}", file=sys.stderr)  # one line
        return 2


def user_error(exc: BaseException) -> BaseException | None:
    """The user error behind ``exc`` (itself, or what a Ray task or actor raised), or ``None`` for a bug.

    User errors: ``ValueError``, ``FileNotFoundError``, an ``OSError`` of :data:`DISK_ERRNOS` and Ray's
    ``OutOfDiskError`` (its object store cannot spill to a full disk).
    """
    exc = _original(exc)
    if isinstance(exc, ValueError | FileNotFoundError) or type(exc).__name__ == "OutOfDiskError":
        return exc
    return exc if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS else None


def _original(exc: BaseException) -> BaseException:
    """What a Ray task or actor raised: Ray re-raises it as a subclass of both its own error and the original type,
    whose text is the remote traceback; the original exception is its ``cause``."""
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and cause is not exc:
        exc, cause = cause, getattr(cause, "cause", None)
    return exc


def _user_message(exc: BaseException) -> str:
    """The one-line message of a user error (see :func:`user_error`)."""
    exc = _original(exc)
    if type(exc).__name__ == "OutOfDiskError":  # Ray's own text spans several lines
        return (
            "a Ray node's disk is fuller than Ray's threshold (95% by default), so Ray cannot store objects: free "
            "space on it (df), or start Ray with its --temp-dir on a larger disk"
        )
    return str(exc).strip() or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
