"""``run_audit``: the audit on the connected Ray cluster (the stages of :mod:`memray.job.audit` on a
:class:`~memray.ray.runner.RayRunner`).

Runs the same on a laptop (``ray.init()`` starts a local Ray) and on a cluster (``ray job submit``). Output
layout under ``cfg.output``::

    run.json                     config, digest, weights (file SHA-256 or hub state digest), versions, counts, nodes
    ct_scores.parquet  ct_cells.parquet  verdicts.parquet  neighbors.parquet  copies.parquet  errors.parquet
    ct_stability.parquet  [fingerprints.parquet  attribution.parquet  attribution_fid.parquet  gallery.parquet]
    report.html                  the evidence page (memray report RUN_DIR rebuilds it)
    embeddings/<set>/shard-NNNNN.{parquet,errors.parquet,done.json}
    layers/layer_<ℓ>/{ct_scores,ct_cells,ct_stability}.parquet + parts/{neighbors,copies}/ + done.json
"""

from __future__ import annotations

from typing import Any

import ray

from memray.job.audit import run_stages
from memray.job.claims import AuditClaims, audit_claims
from memray.job.config import AuditConfig
from memray.job.result import AuditResult
from memray.job.resume import CONFIG_FILE, ResumeMismatchError
from memray.job.run import run_job
from memray.ray.runner import RayRunner

__all__ = ["CONFIG_FILE", "AuditResult", "ResumeMismatchError", "run_audit"]


def run_audit(
    cfg: AuditConfig,
    prepare: Any | None = None,
    checked: Any | None = None,
    allow_gallery_mismatch: bool = False,
    claims: AuditClaims | None = None,
) -> AuditResult:
    """Run (or resume) the whole audit on the connected Ray cluster; ``ray.init`` must have been called.

    Without ``checked`` (the preflight's result) it goes through :func:`~memray.job.run.run_job` (checks, then
    claims); with it, the stages run under ``claims`` (taken here when not given). ``prepare``: the embedding
    stage's image preparation (default: the encoder's).
    """
    if not ray.is_initialized():
        raise RuntimeError("call ray.init() first (jobs/audit.py does this for you)")
    runner = RayRunner(prepare=prepare)
    if checked is None:
        return run_job(cfg, runner, allow_gallery_mismatch)
    if claims is not None:
        return run_stages(cfg, checked, claims, runner, allow_gallery_mismatch)
    with audit_claims(cfg, checked) as held:
        return run_stages(cfg, checked, held, runner, allow_gallery_mismatch)
