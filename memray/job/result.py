"""What an audit's stages pass on (:class:`AuditRun`) and what it returns (:class:`AuditResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from memray.io import storage
from memray.job.claims import AuditClaims
from memray.job.config import AuditConfig
from memray.job.preflight import Preflight
from memray.stats import Mapper


@dataclass(frozen=True)
class AuditResult:
    """Where the results are, the main tables, the verdicts and the job's stats.

    ``verdicts``: one row per generated set (``copying`` / ``closer_to_training`` / ``no_evidence`` /
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


@dataclass
class AuditRun:
    """What the stages pass on: the (probe-extended) config, the checks, the job record, the stats so far, the
    engine's mapper and the generated sets' sizes (the fingerprint subset plan's)."""

    cfg: AuditConfig
    checked: Preflight
    claims: AuditClaims
    meta: dict[str, Any]
    ekey: str
    probe_params: dict[str, dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    mapper: Mapper | None = None  # the engine's, made once per run (score and finish)
    sizes: dict[str, int] = field(default_factory=dict)  # rows embedded per fingerprinted generated set
