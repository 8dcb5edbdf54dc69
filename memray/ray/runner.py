"""The Ray runner of :func:`memray.job.run.run_job`: join or start a Ray cluster, run the audit's stages on it."""

from __future__ import annotations

from dataclasses import dataclass

from memray.job.claims import AuditClaims
from memray.job.config import AuditConfig
from memray.job.preflight import Preflight
from memray.job.result import AuditResult


@dataclass(frozen=True)
class RayRunner:
    """``address``: a cluster to join (``None``: ``RAY_ADDRESS``, a running local Ray, or a new local one);
    ``num_cpus``: CPUs of a new local Ray (``None``: the machine's)."""

    address: str | None = None
    num_cpus: int | None = None

    def start(self) -> None:
        from memray.ray.session import init_ray

        init_ray(self.address, self.num_cpus)

    def run(
        self, cfg: AuditConfig, checked: Preflight, claims: AuditClaims, allow_gallery_mismatch: bool
    ) -> AuditResult:
        from memray.ray.pipeline import run_audit

        return run_audit(cfg, checked=checked, allow_gallery_mismatch=allow_gallery_mismatch, claims=claims)
