"""Settings of the inputs: one set of images or embeddings (:class:`DatasetSpec`), and memray's own storage option."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memray.config import NON_EMPTY, FieldError, fail, rule, validate

CLAIM_LEASE_S = 300.0
"""Default lease of the claims on the output folder and a reference being built (:mod:`memray.io.claim`)."""

STORAGE_OP_TIMEOUT = "op_timeout_s"
"""memray's own key in ``storage_options`` (not passed to fsspec): the deadline in seconds of one object-store call
per 64 MiB it moves (:mod:`memray.io.filesystems`)."""


def storage_op_timeout(storage_options: Mapping[str, Any] | None) -> float | None:
    """``storage_options["op_timeout_s"]`` as a float, ``None`` when not set.

    Raises:
        FieldError: not a finite number > 0 (``storage_options.op_timeout_s='abc': must be a finite number > 0 …``).
    """
    if not storage_options or STORAGE_OP_TIMEOUT not in storage_options:
        return None
    value = storage_options[STORAGE_OP_TIMEOUT]
    if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise FieldError(
            f"storage_options.{STORAGE_OP_TIMEOUT}",
            value,
            "a finite number > 0 (seconds one object-store call may take per 64 MiB it moves)",
        )
    return float(value)


NAME_RULE = "(a folder name: non-empty, not '.' or '..', without '/' or '\\')"


def _name_ok(name: str) -> bool:
    """A set name that is one path segment: ``embeddings/<name>/`` must stay inside the output folder."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def _urls_ok(urls: tuple[str, ...]) -> bool:
    """Each URL non-empty (an empty list means "not given": DatasetSpec checks that one of urls/embeddings is)."""
    return all(urls)


@dataclass(frozen=True)
class DatasetSpec:
    """One set: images (``urls``: local folders, ``s3://`` prefixes, tar shards, Parquet, ``.npz``) or precomputed
    embeddings (``embeddings``: feature Parquet files, folders or globs, see :mod:`memray.io.embedding_inputs`).

    Exactly one of ``urls`` / ``embeddings`` is given. ``label``: the model/architecture that produced a generated
    set (used as a fingerprint gallery label).
    """

    SECTION = "dataset"

    name: str = field(metadata=rule(NAME_RULE, _name_ok))
    urls: tuple[str, ...] = field(default=(), metadata=rule("(at least one, each non-empty)", _urls_ok))
    label: str | None = field(default=None, metadata=NON_EMPTY)
    image_column: str | None = field(default=None, metadata=NON_EMPTY)
    embeddings: tuple[str, ...] = field(default=(), metadata=rule("(at least one, each non-empty)", _urls_ok))

    def __post_init__(self) -> None:
        given = self.urls  # as given (a list from YAML), for the message
        validate(self)
        if not self.urls and not self.embeddings:
            allowed = ("a list of strings (at least one, each non-empty), or give embeddings: [URL, …] (precomputed "
                       "feature Parquet files, folders or globs) instead")  # fmt: skip
            raise FieldError(f"{self.SECTION}.urls", given, allowed, type(self), "urls")
        if self.urls and self.embeddings:
            raise fail(self, "embeddings", "empty when urls is given: a set is images (urls) or precomputed "
                       "embeddings (embeddings), not both")  # fmt: skip
        if self.embeddings and self.image_column is not None:
            raise fail(self, "image_column", "null when the set is given as embeddings (there are no images)")

    @property
    def is_embeddings(self) -> bool:
        """Whether this set is given as precomputed embeddings (no images to read or embed)."""
        return bool(self.embeddings)
