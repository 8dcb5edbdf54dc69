"""The ``memray`` command line: ``audit``, ``score``, ``embed``, ``fingerprint``, ``probe``, ``report``, ``fetch``.

Each subcommand lives in ``memray.commands.<name>`` and exposes ``add_parser(subparsers)`` and ``run(args)``.
Command modules import torch, timm, Ray and FAISS only inside ``run``: ``memray --help`` and
``memray <cmd> --help`` load none of them. User errors (``ValueError``, ``FileNotFoundError``) print one line
``memray <cmd>: error: …`` and exit 2; Ctrl-C exits 130 with one line; ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from memray import version

COMMANDS: tuple[str, ...] = ("audit", "score", "embed", "fingerprint", "probe", "report", "fetch")


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
    except (ValueError, FileNotFoundError) as exc:  # user errors: one clear line, no traceback
        if args.verbose:
            raise
        print(f"memray {args.command}: error: {_user_message(exc)}", file=sys.stderr)
        return 2


def _user_message(exc: BaseException) -> str:
    """The one-line message of a user error, also when it was raised inside a Ray task or actor.

    Ray re-raises a task's exception as a subclass of both its own error and the original type, whose text is
    the remote traceback; the original exception is its ``cause``.
    """
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and cause is not exc:
        exc, cause = cause, getattr(cause, "cause", None)
    return str(exc).strip() or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
