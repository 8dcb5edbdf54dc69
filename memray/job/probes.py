"""The probe sets inside an audit: add them as generated sets, keep them out of fingerprints, summarise them.

``probes:`` in an audit config (or ``memray probe``) builds transformed copies of a seeded sample of the training
set (:mod:`memray.probes`) under ``<output>/probes/``; each is then a generated set named ``probe_<probe>``, scored
like any other, and :func:`finish_probes` writes ``probes.parquet`` and ``probes.json`` (each probe's detected
layers and the layer recommendation) from the run's C_T table.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd

from memray.config import to_dict
from memray.io import storage
from memray.io.config import DatasetSpec
from memray.job.config import PROBES_DIR, AuditConfig
from memray.probes.build import ProbeSet
from memray.probes.config import PROBE_SET_PREFIX
from memray.probes.summary import probe_table, recommend, write_probe_outputs

log = logging.getLogger(__name__)


def probe_root(cfg: AuditConfig) -> str:
    """Where the probe sets' tar files are written: ``<output>/probes``."""
    return storage.join(cfg.output, PROBES_DIR)


def is_probe_set(name: str) -> bool:
    """Whether a generated set is a probe set (``probe_<probe>``)."""
    return name.startswith(PROBE_SET_PREFIX)


def with_probe_sets(cfg: AuditConfig, sets: list[ProbeSet]) -> AuditConfig:
    """``cfg`` with the probe sets appended to its generated sets (replacing earlier probe sets)."""
    kept = tuple(g for g in cfg.generated if not is_probe_set(g.name))
    added = tuple(DatasetSpec(name=s.set_name, urls=(s.url,)) for s in sets)
    return dataclasses.replace(cfg, generated=kept + added)


def probe_names(cfg: AuditConfig) -> dict[str, str]:
    """Generated-set name → probe name, for the probe sets of ``cfg``."""
    return {g.name: g.name.removeprefix(PROBE_SET_PREFIX) for g in cfg.generated if is_probe_set(g.name)}


def finish_probes(
    cfg: AuditConfig, ct_scores: pd.DataFrame, params: dict[str, dict[str, Any]], job: dict[str, Any]
) -> dict[str, Any] | None:
    """Write ``probes.parquet`` + ``probes.json``; returns the summary (``None`` when the run has no probe set)."""
    sets = probe_names(cfg)
    if not sets:
        return None
    storage_options = cfg.storage
    table = probe_table(ct_scores, sets)
    summary = recommend(table, ct_scores, sets, cfg.ct.alpha, params)
    record = to_dict(cfg.probes) if cfg.probes is not None else None
    write_probe_outputs(table, summary, cfg.output, storage_options, {"job": job, "probes": record})
    log.info("probes: %s", summary["recommendation"]["text"])
    return summary
