"""The per-layer scoring loop's interfaces: a layer's sets as row handles (:class:`LayerSets`), where they and the
fits' workspaces come from (:class:`LayerSource`) and where the tables go (:class:`LayerSink`); implemented by
:class:`memray.stats.layers.ArraySource` / :class:`~memray.stats.layers.MemorySink` (in process) and the job's
``FileSource`` / ``FolderSink`` (:mod:`memray.job.score`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import pandas as pd

from memray.io.rows import Rows
from memray.stats.evidence import ViewSets
from memray.stats.parts import Part, PartDir
from memray.stats.score import FittedLayer, GenScore

#: ``extra(fitted, scored) -> {table name: DataFrame}``: further per-layer tables (the fingerprint subset curves).
Extra = Callable[[FittedLayer, dict[str, GenScore]], dict[str, pd.DataFrame]]
#: A layer's table: a frame, or (the per-sample tables) the part files tasks wrote.
Piece = pd.DataFrame | list[Part]


class LayerSets(NamedTuple):
    """One layer's inputs as row handles (never read whole by the caller): training, test and generated sets."""

    train: Rows
    test: Rows
    gens: dict[str, Rows]
    views: ViewSets = {}  # noqa: RUF012 (a NamedTuple default, never mutated)


class LayerSource(Protocol):
    """Where a layer's sets and its fit workspaces come from."""

    def sets(self, layer: int) -> LayerSets:
        """The layer's training handle, test set and generated sets."""
        ...

    def workspace(self, layer: int) -> Any | None:
        """The fit's workspace (``None``: a temporary local folder, removed with the fit)."""
        ...

    def query_workspace(self, layer: int) -> Any | None:
        """Where the query sets' projected rows go (``None``: inside the fit's workspace)."""
        ...

    def partition_workspace(self, layer: int) -> Callable[[int], Any] | None:
        """``seed -> workspace`` of the further partition fits (``None``: temporary folders)."""
        ...

    def release(self, layer: int, partitions: bool) -> None:
        """Called once the layer's tables are written: remove what the layer's fits left that is not kept."""
        ...


class LayerSink(Protocol):
    """Where a layer's tables go; a finished layer is read back instead of scored again."""

    def done(self, layer: int) -> bool:
        """Whether the layer's tables exist and were made from the same inputs and settings."""
        ...

    def part_dir(self, layer: int) -> PartDir:
        """An empty folder every task can write the layer's per-sample part files to (cleared of earlier ones)."""
        ...

    def write(self, layer: int, tables: dict[str, Piece], stats: dict[str, Any]) -> None:
        """Keep the layer's tables (frames, or the part files under :meth:`part_dir`) and its stats."""
        ...

    def read(self, layer: int) -> tuple[dict[str, Piece], dict[str, Any]]:
        """The tables and stats of a finished layer."""
        ...
