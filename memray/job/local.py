"""The in-process engine: an audit's stages (:mod:`memray.job.audit`) without Ray, and ``memray embed``'s embedding.

:func:`embed_shards` is the embed stage on one process: every shard not yet done (:func:`memray.job.markers.shard_done`)
is read with the job's shard reader (:func:`memray.io.shards.read_shard`) while the one before it is embedded,
embedded in batches of ``embed.batch_size`` prepared images (:meth:`LayerEmbedder.embed_prepared`), each batch
written as a part file, and the parts made into the shard's files by the same
:func:`memray.job.shard_files.finish_shard` the Ray actors' parts go through, then its marker: the shard folder is
the same, file for file, as the Ray engine's (:mod:`memray.ray.embed_stage`), so either engine resumes the other's
work.

:class:`LocalEngine` is the :class:`memray.job.audit.Engine` (and :class:`memray.job.run.Runner`) of one machine: its
mapper is builtin ``map`` (applied at once), the probe sets are built in process, the hub weights resolved by
loading the model once, and its capacity is never refused.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from memray.embedding.identity import SOURCE_HUB, WeightsChangedError, weights_identity, weights_mismatch
from memray.embedding.pixels import with_pixels
from memray.io import finite, schema, storage
from memray.io.features import FeatureSet, features_to_table, parquet_options
from memray.io.shards import IMAGE, ROW, STATUS_OK, VIEWS, Prepare, ShardPlan, read_shard
from memray.job.markers import shard_done, shard_record, write_shard_marker
from memray.job.shard_files import finish_shard, parts_url
from memray.job.views import pixel_size, view_prepares

if TYPE_CHECKING:
    from memray.embedding.embed import LayerEmbedder
    from memray.embedding.views import ViewPrepare
    from memray.job.claims import AuditClaims
    from memray.job.config import AuditConfig
    from memray.job.preflight import Preflight
    from memray.job.result import AuditResult

log = logging.getLogger(__name__)
NODE_ID = "local"  # the node id of every shard and task of this engine


def embed_shard(
    embedder: LayerEmbedder, plan: ShardPlan, rows: list[dict[str, Any]], out: str, meta: dict[str, Any],
    key: tuple[str, dict | None], storage_options: dict | None, views: tuple[str, ...] = (), pixels: int = 0,
) -> int:  # fmt: skip
    """Embed one shard's rows (:func:`memray.io.shards.read_shard`) and write its files and, last, its marker
    (``key``: the embed key and the weights record). ``views``: the names of the further views the rows carry
    (column ``views``), embedded apart from the identity images into ``layer_<ℓ>@<view>``. Returns the rows read."""
    ok = [r for r in rows if r[schema.STATUS] == STATUS_OK]
    errors = [[int(r[ROW]), str(r[schema.SAMPLE_ID]), str(r[schema.STATUS]), str(r[schema.ERROR])]
              for r in rows if r[schema.STATUS] != STATUS_OK]  # fmt: skip
    parts, bad, bs = [], {}, embedder.cfg.batch_size
    for i in range(0, len(ok), bs):
        batch = ok[i : i + bs]
        ids = np.array([r[schema.SAMPLE_ID] for r in batch], dtype=object)
        images = np.stack([r[IMAGE] for r in batch])
        layers = with_pixels(embedder.embed_prepared(images), images, pixels)
        bad = finite.merge(bad, finite.nonfinite_rows(ids, layers))
        parts.append(f"rows-{int(batch[0][ROW]):09d}-{int(batch[-1][ROW]):09d}.parquet")
        under = None
        if views:  # each row's (V, C, S, S) view images, row-major: row, then view
            view_images = np.concatenate([r[VIEWS] for r in batch])
            feats = with_pixels(embedder.embed_prepared(view_images), view_images, pixels)
            under = {v: {k: x[j :: len(views)] for k, x in feats.items()} for j, v in enumerate(views)}
        table = features_to_table(FeatureSet(ids, layers), views=under)
        with storage.open_output(
            storage.join(parts_url(out, plan.set_name, plan.shard), parts[-1]), storage_options
        ) as fh:
            pq.write_table(table, fh, **parquet_options(table.schema))
    got = finish_shard(out, plan, parts, errors, meta, storage_options)
    write_shard_marker(out, plan, shard_record(plan, len(rows), got, *key, bad, views, pixels), storage_options)
    return len(rows)


def embed_shards(
    make_embedder: Callable[[], LayerEmbedder],
    plans: list[ShardPlan],
    out: str,
    meta: dict[str, Any],
    prepare: Prepare,
    max_pixels: int,
    embed_key: str,
    weights: dict[str, Any] | None = None,
    storage_options: dict | None = None,
    before_writing: Callable[[], Any] | None = None,
    views: dict[str, ViewPrepare] | None = None,
    pixels: int = 0,
) -> dict[str, Any]:
    """Embed every shard of ``plans`` under ``out`` that is not done yet, in this process (the module docstring).

    ``make_embedder``: called once, when some shard is to be embedded; its weights are checked against ``weights``
    (the job's record, whose identity is in ``embed_key``). ``before_writing``: called once before the first write.
    Returns rows read, seconds, the node ids (:data:`NODE_ID`) and ``driver_bytes`` (0: nothing travels).
    ``views``: set -> its further views' preparation (:func:`memray.job.views.view_prepares`; ``None``: none).

    Raises:
        WeightsChangedError: the embedder loaded other weights than ``weights`` (nothing is written).
    """
    names = {k: tuple(v.name for v in vp.views) for k, vp in (views or {}).items()}
    todo = [p for p in plans
            if not shard_done(out, p, embed_key, storage_options, names.get(p.set_name, ()), pixels)]  # fmt: skip

    def read(plan: ShardPlan) -> list[dict[str, Any]]:
        under = (views or {}).get(plan.set_name)
        return read_shard(
            plan, prepare, max_pixels, storage_options, under if under is not None and under.views else None
        )

    log.info("embed: %d of %d shards to do (%d already done)", len(todo), len(plans), len(plans) - len(todo))
    t0, rows = time.perf_counter(), 0
    if todo:
        embedder = make_embedder()
        mismatch = weights_mismatch(embedder.weights_info, weights, "this process")
        if mismatch:
            raise WeightsChangedError(mismatch)
        if before_writing is not None:
            before_writing()
        with ThreadPoolExecutor(max_workers=1) as pool:  # the next shard is decoded while this one is embedded
            future = pool.submit(read, todo[0])
            for k, plan in enumerate(todo):
                shard_rows = future.result()
                if k + 1 < len(todo):
                    future = pool.submit(read, todo[k + 1])
                rows += embed_shard(embedder, plan, shard_rows, out, meta, (embed_key, weights), storage_options,
                                    names.get(plan.set_name, ()), pixels)  # fmt: skip
                log.info("embed: %d/%d shards (%s %s, %d rows)", k + 1, len(todo), plan.set_name, plan.key,
                         len(shard_rows))  # fmt: skip
    dt = time.perf_counter() - t0
    log.info("embed: %d rows, %.1f s, %.1f rows/s", rows, dt, rows / dt if dt > 0 else 0.0)
    return {"rows": rows, "seconds": dt, "nodes": [NODE_ID] if todo else [], "driver_bytes": 0}


def local_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """Builtin ``map``, applied at once (the stages call some mappers only for their tasks' writes)."""
    return list(map(fn, items))


@dataclass(frozen=True)
class LocalEngine:
    """Every stage of an audit in this process. ``prepare``: the image preparation (``None``: the encoder's,
    :func:`memray.embedding.embed.make_prepare`)."""

    prepare: Any | None = None

    def start(self) -> None:
        """Nothing to join or start."""

    def run(
        self, cfg: AuditConfig, checked: Preflight, claims: AuditClaims, allow_gallery_mismatch: bool
    ) -> AuditResult:
        from memray.job.audit import run_stages

        return run_stages(cfg, checked, claims, self, allow_gallery_mismatch)

    def check_capacity(self, cfg: AuditConfig) -> None:
        """Nothing to check: the stages run here one task at a time."""

    def add_probe_sets(self, cfg: AuditConfig, checked: Preflight) -> tuple[AuditConfig, Preflight, dict]:
        from memray.job.preflight import add_sets
        from memray.job.probes import probe_root, with_probe_sets
        from memray.probes.build import build_probes

        storage_options = cfg.storage
        sets = build_probes(list(cfg.train.urls), cfg.probes, probe_root(cfg), storage_options, cfg.train.image_column)
        log.info("probes: %d set(s) of %d image(s) under %s", len(sets), sets[0].n if sets else 0, probe_root(cfg))
        full = with_probe_sets(cfg, sets)
        return full, add_sets(checked, full, [s.set_name for s in sets]), {s.probe: dict(s.params) for s in sets}

    def resolve_weights(self, cfg: AuditConfig, planned: dict[str, Any]) -> dict[str, Any]:
        """``planned``, except hub weights: loaded once here for their record (hub id, revision, state digest)."""
        if planned.get("source") != SOURCE_HUB or weights_identity(planned) is not None:
            return planned
        from memray.embedding.weights import load_model

        return load_model(cfg.embed, cfg.storage)[1]

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
        from memray.embedding.embed import LayerEmbedder, make_prepare

        def make() -> LayerEmbedder:
            return LayerEmbedder(cfg.embed, num_threads=cfg.resources.torch_threads, storage_options=cfg.storage)

        prepare = self.prepare or make_prepare(cfg.embed)
        return embed_shards(make, plans, root, meta, prepare, cfg.max_image_pixels, embed_key, weights, cfg.storage,
                            before_writing, view_prepares(cfg, prepare), pixel_size(cfg))  # fmt: skip

    def mapper(self, cfg: AuditConfig) -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]:
        return local_map

    def describe_nodes(self, node_ids: set[str]) -> list[dict[str, Any]]:
        """This host, when it did any work: name, IP and GPUs (``accelerator_type`` is not known without Ray)."""
        if not node_ids:
            return []
        import torch

        host = socket.gethostname()
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            ip = None
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [{"node_id": NODE_ID, "host": host, "ip": ip, "gpus": gpus, "accelerator_type": None}]
