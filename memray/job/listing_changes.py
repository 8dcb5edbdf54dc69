"""Which input files changed between two listings of a set: added, removed and rewritten names, the first few.

A listing is kept as digests (one per shard or feature file) where a digest is enough to decide; to *name* what
changed, the per-file entries are read back from where they were recorded: every embedded shard's completion
marker holds its listing (``[name, kind, size, stamp]`` per unit), and a reference record holds each embeddings
file's ``[url, rows, stamp]``. Only the shards whose digest differs are read.
"""

from __future__ import annotations

import logging
from typing import Any

from memray.io import storage
from memray.job.markers import SHARD_MARKER

log = logging.getLogger(__name__)
SHOWN = 5
"""Names shown per kind of change."""

Entries = dict[str, tuple[Any, ...]]


def describe(old: Entries, new: Entries) -> str | None:
    """``"added a, b; removed c; changed d (size 10 → 12)"`` between two ``{name: (size, stamp, …)}``, or ``None``."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = []
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            shown = ", ".join(names[:SHOWN]) + (f", … ({len(names)} in all)" if len(names) > SHOWN else "")
            parts.append(f"{what} {shown}")
    return "; ".join(parts) or None


def shard_changes(
    root: str, set_name: str, plans: list[Any], storage_options: dict[str, Any] | None, old_shards: int | None = None
) -> str | None:
    """What changed in an image set's files since its shards under ``root/embeddings/<set_name>/`` were embedded.

    Compares every shard marker found there with the current plan of the same key, reading the recorded listings
    of the shards that differ; the current shards from number ``old_shards`` on (default: past the last marker)
    are new. An old shard without a marker (never embedded) cannot be compared and is left out.
    """
    folder = storage.join(root, "embeddings", set_name)
    try:
        fs, path = storage.filesystem(folder, storage_options)
        keys = sorted(m.rsplit("/", 1)[-1].removesuffix(SHARD_MARKER) for m in fs.glob(f"{path}/shard-*{SHARD_MARKER}"))
    except Exception as exc:  # a description only: the refusal stands without it
        log.debug("cannot list %s: %s", folder, exc)
        return None
    current = {plan.key: plan for plan in plans}
    old: Entries = {}
    new: Entries = {}
    for key in keys:
        plan = current.get(key)
        try:
            stats = storage.read_json(storage.join(folder, key + SHARD_MARKER), storage_options)
        except (OSError, ValueError):
            continue
        if plan is not None and stats.get("listing_digest") == plan.listing_digest():
            continue
        old.update({str(e[0]): tuple(e[1:]) for e in stats.get("listing", [])})
        if plan is not None:
            new.update({str(e[0]): tuple(e[1:]) for e in plan.listing()})
    first_new = old_shards if old_shards is not None else (int(keys[-1].rsplit("-", 1)[-1]) + 1 if keys else None)
    for plan in plans:
        if first_new is not None and plan.shard >= first_new:
            new.update({str(e[0]): tuple(e[1:]) for e in plan.listing()})
    return describe(old, new)


def file_entries(files: list[Any]) -> list[list[Any]]:
    """``[[url, rows, stamp], …]`` of a set's embeddings files (what a record keeps to name them later)."""
    return [[f.url, f.n, f.stamp] for f in files]


def file_changes(old: list[list[Any]] | None, files: list[Any]) -> str | None:
    """What changed between recorded :func:`file_entries` and a set's current embeddings files."""
    if old is None:
        return None
    return describe({str(e[0]): tuple(e[1:]) for e in old}, {str(e[0]): tuple(e[1:]) for e in file_entries(files)})
