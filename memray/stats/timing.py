"""Seconds per stage of a layer's scoring, recorded in ``run.json`` so a user sees what each option costs.

The stages of one layer (:data:`STAGES`, in the order they run):

- ``fit``: PCA moments, projection, k-means restarts and the cells of the training rows (or reading a kept fit);
- ``statistic``: the projection and in-cell search round of the test set and every generated set, C_T per set;
- ``views``: projecting the sets' further views (the copy evidence's transforms);
- ``partitions``: refit cells and search rounds of the further partition seeds (``ct.partitions``);
- ``bootstrap``: the bootstrap intervals of C_T (``ct.bootstrap``);
- ``tables``: the ``ct_scores`` / ``ct_cells`` rows and their p-values;
- ``samples``: the per-sample tables, the global top-k copy search (``ct.top_k``) of every view included;
- ``evidence``: the ``replication`` and ``memorized`` tables;
- ``extra``: further tables of the caller (the job's fingerprint subset curves), only when there are any.

A stage that an option turns off is recorded with 0 seconds. Timings are wall-clock seconds of the driver (in a
job, the time the stage's tasks took on the cluster, waiting included).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

STAGES = ("fit", "statistic", "views", "partitions", "bootstrap", "tables", "samples", "evidence")
EXTRA = "extra"


class StageTimes:
    """Seconds per stage of one layer: ``with times.stage("fit"): ...`` adds the block's wall time to ``fit``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block into stage ``name`` (added to what the stage already holds)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (time.perf_counter() - t0)


def stage_totals(layers: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per stage, the seconds summed over layers' stats (each with a ``stages`` dict; layers without one skipped)."""
    out: dict[str, float] = {}
    for rec in layers:
        for name, secs in (rec.get("stages") or {}).items():
            out[name] = out.get(name, 0.0) + float(secs)
    return out
