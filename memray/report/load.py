"""Read a run folder (local path or ``s3://`` URL) into one :class:`RunData` for the report.

Every table is read with its schema's columns: a column an older run lacks is added as NaN; a missing optional
file is ``None`` with a reason in :attr:`RunData.absent` (the report says so instead of failing).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memray.io import schema
from memray.io.storage import StorageError, exists, join, open_url, read_json
from memray.probes.config import PROBE_SET_PREFIX

log = logging.getLogger(__name__)

GALLERY_FILE = schema.GALLERY_FILE
ATTRIBUTION_FID_FILE = schema.ATTRIBUTION_FID_FILE
EVALUATION_DIR = schema.EVALUATION_DIR
EVALUATION_FILE = schema.EVALUATION_FILE
ACCURACY_FILE = schema.ACCURACY_FILE
CONFUSION_FILE = schema.CONFUSION_FILE
NEIGHBOR_COLUMNS = (schema.ROLE, schema.GEN_SET, schema.LAYER, schema.NN_DISTANCE)

_GALLERY_SCHEMA = pa.schema(
    [("name", pa.string()), ("run", pa.string()), (schema.LABEL, pa.string()), (schema.LAYER, pa.int32()),
     (schema.CT, pa.float64())]
)  # fmt: skip

# attribute name → (file relative to the run folder, schema or None for CSV/free tables)
TABLES: dict[str, tuple[str, pa.Schema | None]] = {
    "ct_scores": (schema.CT_SCORES_FILE, schema.CT_SCORES_SCHEMA),
    "ct_cells": (schema.CT_CELLS_FILE, schema.CT_CELLS_SCHEMA),
    "verdicts": (schema.VERDICTS_FILE, schema.VERDICTS_SCHEMA),
    "neighbors": (schema.NEIGHBORS_FILE, schema.NEIGHBORS_SCHEMA),
    "copies": (schema.COPIES_FILE, schema.COPIES_SCHEMA),
    "errors": (schema.ERRORS_FILE, schema.ERRORS_SCHEMA),
    "stability": (schema.STABILITY_FILE, schema.STABILITY_SCHEMA),
    "replication": (schema.REPLICATION_FILE, schema.REPLICATION_SCHEMA),
    "memorized": (schema.MEMORIZED_FILE, schema.MEMORIZED_SCHEMA),
    "fingerprints": (schema.FINGERPRINTS_FILE, schema.FINGERPRINTS_SCHEMA),
    "gallery": (GALLERY_FILE, _GALLERY_SCHEMA),
    "attribution": (schema.ATTRIBUTION_FILE, schema.ATTRIBUTION_SCHEMA),
    "attribution_fid": (ATTRIBUTION_FID_FILE, schema.ATTRIBUTION_SCHEMA),
    "probes": (schema.PROBES_FILE, schema.PROBES_SCHEMA),
    "evaluation": (f"{EVALUATION_DIR}/{EVALUATION_FILE}", None),
    "accuracy": (f"{EVALUATION_DIR}/{ACCURACY_FILE}", None),
    "confusion": (f"{EVALUATION_DIR}/{CONFUSION_FILE}", None),
    "comparison": (f"{EVALUATION_DIR}/{schema.COMPARISON_FILE}", None),
    "open_set": (f"{EVALUATION_DIR}/{schema.OPEN_SET_FILE}", None),
}


@dataclass
class RunData:
    """Everything the report shows: run.json, the tables (``None`` when absent) and why each absent one is."""

    url: str
    run: dict[str, Any]
    tables: dict[str, pd.DataFrame | None]
    probes_summary: dict[str, Any] | None
    absent: dict[str, str] = field(default_factory=dict)  # file name → "not in this run" / "unreadable: …"

    def table(self, name: str) -> pd.DataFrame | None:
        """The table ``name`` (a key of :data:`TABLES`), or ``None`` when the run lacks it."""
        return self.tables.get(name)

    def why_absent(self, name: str) -> str:
        """A sentence saying why table ``name`` is missing, e.g. ``copies.parquet is not in this run.``"""
        file = TABLES[name][0]
        return f"{file} {self.absent.get(file, 'is not in this run')}."

    @property
    def gen_sets(self) -> list[str]:
        """Generated sets in run.json order (or ct_scores order), probe sets included."""
        names = list(self.run.get("gen_sets") or [])
        ct = self.table("ct_scores")
        if ct is not None:
            names += [s for s in pd.unique(ct[schema.GEN_SET]) if s not in names]
        return [str(s) for s in names]

    @property
    def labels(self) -> dict[str, str | None]:
        return dict(self.run.get("labels") or {})


def is_probe(name: str) -> bool:
    """Whether ``name`` is a probe set (``probe_*``)."""
    return str(name).startswith(PROBE_SET_PREFIX)  # probe sets: shown in the probes section only


def conform(df: pd.DataFrame, sch: pa.Schema) -> pd.DataFrame:
    """``df`` with every column of ``sch`` (missing ones added as NaN), schema columns first."""
    for f in sch:
        if f.name not in df.columns:
            df[f.name] = np.nan
    extra = [c for c in df.columns if c not in sch.names]
    return df[[*sch.names, *extra]]


def _read(
    url: str, sch: pa.Schema | None, storage_options: dict[str, Any] | None, columns: tuple[str, ...] | None
) -> pd.DataFrame:
    """A CSV, or a Parquet table (only ``columns`` when given: the others are never downloaded), conformed."""
    with open_url(url, "rb", storage_options) as fh:
        if url.endswith(".csv"):
            return pd.read_csv(io.BytesIO(fh.read()))
        pf = pq.ParquetFile(fh)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        df = pf.read(columns=cols).to_pandas()
    if sch is not None:
        df = conform(df, pa.schema([sch.field(c) for c in columns]) if columns else sch)
    return df


def read_table(
    run_url: str, name: str, storage_options: dict[str, Any] | None = None, absent: dict[str, str] | None = None
) -> pd.DataFrame | None:
    """Table ``name`` of :data:`TABLES` from the run folder, ``None`` (reason noted in ``absent``) when missing."""
    file, sch = TABLES[name]
    url = join(run_url, file)
    columns = NEIGHBOR_COLUMNS if name == "neighbors" else None  # only what the histograms need
    try:
        if not exists(url, storage_options):
            return None
        return _read(url, sch, storage_options, columns)
    except (OSError, ValueError, pa.ArrowException) as exc:  # a damaged optional file must not stop the report
        if isinstance(exc, StorageError) and exc.unreachable:
            raise
        log.warning("report: %s could not be read: %s", url, exc)
        if absent is not None:
            absent[file] = f"could not be read ({type(exc).__name__}: {str(exc)[:160]})"
        return None


def load_run(run_url: str, storage_options: dict[str, Any] | None = None) -> RunData:
    """Read run.json, every table and probes.json of a run folder.

    Raises:
        FileNotFoundError: the folder has neither run.json nor ct_scores.parquet (not a memray run).
    """
    run_url = str(run_url).rstrip("/")
    absent: dict[str, str] = {}
    run_json = join(run_url, schema.RUN_FILE)
    run: dict[str, Any] = {}
    if exists(run_json, storage_options):
        try:
            run = read_json(run_json, storage_options)
        except ValueError as exc:  # damaged JSON: report the tables anyway (a StorageError is a ValueError too)
            if isinstance(exc, StorageError) and exc.unreachable:
                raise
            absent[schema.RUN_FILE] = f"could not be read ({exc})"
    tables = {name: read_table(run_url, name, storage_options, absent) for name in TABLES}
    if not run and tables["ct_scores"] is None:
        raise FileNotFoundError(
            f"{run_url}: not a memray run folder (no {schema.RUN_FILE}, no {schema.CT_SCORES_FILE})"
        )
    if not run:
        absent.setdefault(schema.RUN_FILE, "is not in this run")
    probes_url = join(run_url, schema.PROBES_SUMMARY_FILE)
    summary = read_json(probes_url, storage_options) if exists(probes_url, storage_options) else None
    return RunData(run_url, run, tables, summary, absent)
