"""Build the probe sets on the cluster: one Ray task samples the training set and writes the probe tar files.

The driver only receives the small :class:`memray.probes.build.ProbeSet` records; the images are read and written
by the task (``<output>/probes/<probe>.tar``). The extended config is then checked like any config (its probe sets
are listed and planned) and scored by the normal audit path.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from memray.job.config import AuditConfig
from memray.job.preflight import Preflight, add_sets
from memray.job.probes import probe_root, with_probe_sets
from memray.probes.build import ProbeSet, build_probes
from memray.probes.config import ProbesConfig

log = logging.getLogger(__name__)


@ray.remote
def _build(
    train_urls: list[str], pcfg: ProbesConfig, root: str, storage_options: dict | None, column: str | None
) -> list[ProbeSet]:
    return build_probes(train_urls, pcfg, root, storage_options, column)


def add_probe_sets(cfg: AuditConfig, checked: Preflight) -> tuple[AuditConfig, Preflight, dict[str, dict[str, Any]]]:
    """Build ``cfg.probes``' sets (a Ray task), then the config with them as generated sets and ``checked`` with
    their shard plans.

    Returns ``(config, preflight, {probe: params})``.
    """
    storage_options = cfg.storage
    task = _build.options(num_cpus=min(1.0, cfg.resources.actor_num_cpus or 1.0))
    sets = ray.get(
        task.remote(list(cfg.train.urls), cfg.probes, probe_root(cfg), storage_options, cfg.train.image_column)
    )
    log.info("probes: %d set(s) of %d image(s) under %s", len(sets), sets[0].n if sets else 0, probe_root(cfg))
    full = with_probe_sets(cfg, sets)
    return full, add_sets(checked, full, [s.set_name for s in sets]), {s.probe: dict(s.params) for s in sets}
