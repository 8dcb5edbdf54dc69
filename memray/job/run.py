"""One entry point for every audit (``memray audit``, ``memray probe``, :func:`memray.audit`, ``jobs/*.py``).

:func:`run_job` does, in this order and once: every check that needs no cluster (:func:`memray.job.preflight.preflight`:
inputs listed, encoder and weights, sizes, output, gallery, reference), the claims on the output folder and on a
reference being built (:func:`memray.job.claims.audit_claims`: a second writer is refused here, before anything
starts), then the runner: ``runner.start()`` (join or start the cluster) and ``runner.run(...)`` (the audit's stages:
plan → embed → collect → score → finish). The runner is the only part that knows where the work runs
(:class:`memray.ray.runner.RayRunner`); this module imports no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from memray.job.claims import AuditClaims, audit_claims
from memray.job.config import AuditConfig
from memray.job.preflight import Preflight, preflight
from memray.job.result import AuditResult


class Runner(Protocol):
    """Where an audit's work runs."""

    def start(self) -> None:
        """Join or start the cluster (called once the checks passed and the claims are held)."""
        ...

    def run(
        self, cfg: AuditConfig, checked: Preflight, claims: AuditClaims, allow_gallery_mismatch: bool
    ) -> AuditResult:
        """The audit's stages, on the started cluster."""
        ...


def run_job(
    cfg: AuditConfig,
    runner: Runner,
    allow_gallery_mismatch: bool = False,
    on_started: Callable[[], None] | None = None,
) -> AuditResult:
    """Check ``cfg``, claim its output (and a reference it builds), start ``runner`` and run the audit on it.

    ``on_started``: called once the runner has started, before any stage (the CLI writes ``--write-config`` there).
    Nothing is written to the output folder before every check passed.
    """
    checked = preflight(cfg, allow_gallery_mismatch)
    with audit_claims(cfg, checked) as claims:
        runner.start()
        if on_started is not None:
            on_started()
        return runner.run(cfg, checked, claims, allow_gallery_mismatch)
