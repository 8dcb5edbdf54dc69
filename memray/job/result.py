"""What an audit returns: where its results are, the main tables, the verdicts and the job's stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from memray.io import storage


@dataclass(frozen=True)
class AuditResult:
    """Where the results are, the main tables, the verdicts and the job's stats.

    ``verdicts``: one row per generated set (``copying`` / ``localized_copying`` / ``no_evidence`` /
    ``undefined``, Holm p, layers, advice); ``report``: URL of ``report.html`` (``None`` if it failed);
    :meth:`table` reads any other table of the run (``copies``, ``ct_cells``, ``neighbors``, ``errors``, …).
    """

    output: str
    ct_scores: pd.DataFrame
    stats: dict[str, Any]
    attribution: pd.DataFrame | None = None
    verdicts: pd.DataFrame | None = None
    report: str | None = None
    storage_options: dict[str, Any] | None = None

    def table(self, name: str) -> pd.DataFrame:
        """A table of the run folder by name (``copies``) or file name (``copies.parquet``)."""
        file = name if name.endswith(".parquet") else f"{name}.parquet"
        with storage.open_url(storage.join(self.output, file), "rb", self.storage_options) as fh:
            return pd.read_parquet(fh)
