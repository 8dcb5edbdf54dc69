"""The Ray runner: join or start a Ray cluster, then run the audit's stages (:mod:`memray.job.audit`) on it.

It is the only place that says where an audit's work runs: embedding in a Ray Data actor pool
(:mod:`memray.ray.embed_stage`), every block step and search item as a Ray task (:class:`RayMapper`), the probe sets
and the hub weights' resolution as one task each, the cluster's capacity and nodes from Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memray.io.shards import ShardPlan
from memray.job.claims import AuditClaims
from memray.job.config import AuditConfig
from memray.job.preflight import Preflight
from memray.job.result import AuditResult
from memray.stats import Mapper


@dataclass(frozen=True)
class RayRunner:
    """``address``: a cluster to join (``None``: ``RAY_ADDRESS``, a running local Ray, or a new local one);
    ``num_cpus``: CPUs of a new local Ray (``None``: the machine's); ``prepare``: the image preparation of the
    embedding stage (``None``: the encoder's, :func:`memray.embedding.embed.make_prepare`)."""

    address: str | None = None
    num_cpus: int | None = None
    prepare: Any | None = None

    def start(self) -> None:
        from memray.ray.session import init_ray

        init_ray(self.address, self.num_cpus)

    def run(
        self, cfg: AuditConfig, checked: Preflight, claims: AuditClaims, allow_gallery_mismatch: bool
    ) -> AuditResult:
        from memray.job.audit import run_stages

        return run_stages(cfg, checked, claims, self, allow_gallery_mismatch)

    def check_capacity(self, cfg: AuditConfig) -> None:
        from memray.ray.session import check_capacity

        check_capacity(cfg.resources)

    def add_probe_sets(self, cfg: AuditConfig, checked: Preflight) -> tuple[AuditConfig, Preflight, dict]:
        from memray.ray.probe_stage import add_probe_sets

        return add_probe_sets(cfg, checked)

    def resolve_weights(self, cfg: AuditConfig, planned: dict[str, Any]) -> dict[str, Any]:
        from memray.ray.embed_stage import resolve_weights

        return resolve_weights(cfg, planned)

    def embed(
        self,
        cfg: AuditConfig,
        plans: list[ShardPlan],
        root: str,
        meta: dict[str, Any],
        embed_key: str,
        before_writing: Callable[[], Any] | None,
        weights: dict[str, Any] | None,
    ) -> dict[str, Any]:
        from memray.embedding.embed import make_prepare
        from memray.ray.embed_stage import run_embedding

        prepare = self.prepare or make_prepare(cfg.embed)
        return run_embedding(cfg, plans, root, meta, prepare, embed_key, before_writing, weights)

    def mapper(self, cfg: AuditConfig) -> Mapper:
        from memray.ray.score_stage import RayMapper

        res = cfg.resources
        return RayMapper(res.index_task_num_cpus, 1.0 if res.faiss_gpu or res.score_device == "cuda" else 0.0)

    def describe_nodes(self, node_ids: set[str]) -> list[dict[str, Any]]:
        from memray.ray.session import describe_nodes

        return describe_nodes(node_ids)
