"""Ray Data stage: read + decode + prepare on CPU tasks → per-layer embeddings in an actor pool → shard files.

The workers write the embeddings; the driver only sees small records. A read task streams one shard's rows
(:func:`memray.io.shards.iter_shard`; the last row carries the shard's row count). An actor batch embeds its rows and
writes, per shard and contiguous row range it holds, the features of the range's ``ok`` rows to a part file
``embeddings/<set>/shard-NNNNN.parts/rows-<first>-<last>.parquet``; it returns one record per range (row range,
counts, part name, the range's error rows and NaN/inf rows). Once a shard's ranges tile ``[0, shard_rows)``, the
driver starts a task (:func:`finish_shard`) that streams the parts in row order into the shard's feature Parquet
(``embeddings/<set>/shard-NNNNN.parquet``), writes its error rows (``…errors.parquet``) and deletes the parts;
the driver then writes, last, the small JSON completion marker (``…done.json``) holding the shard's counts, the
embed key, the weights record (file SHA-256, or hub id, revision and state-dict digest), the shard's input
listing (names, sizes, mtimes/ETags) and its rows with NaN/inf features (refused before scoring:
:mod:`memray.io.finite`).

Every actor checks the weights it loaded against the job's weights record (:func:`resolve_weights`, from the
preflight for a file): a file replaced while the job runs, or a node whose hub cache holds another revision, fails
the job in one line instead of mixing two encoders in one output.

Parts are concatenated, not kept: readers keep one file per shard, and a large shard stays one object on object
storage instead of one per actor batch, for one more read and write of the features, spread over the workers. A
retried batch rewrites the same part name (writes are atomic) and only ranges named by this run's records are
read, so neither retries nor a killed run's leftovers duplicate rows; a shard's feature file appears whole or not
at all, and its marker only after it. A rerun skips a shard only when its marker exists, both keys still match
and its feature file is readable with the recorded row count; any other shard is embedded again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from memray.config import from_dict, to_dict
from memray.embedding.config import EmbedConfig
from memray.embedding.identity import SOURCE_HUB, WeightsChangedError, weights_identity, weights_mismatch
from memray.embedding.pixels import with_pixels
from memray.embedding.views import ViewPrepare
from memray.io import finite, schema, storage
from memray.io.features import FeatureSet, features_to_table, parquet_options
from memray.io.shards import (
    IMAGE,
    ROW,
    SHARD,
    SHARD_ROWS,
    STATUS_OK,
    VIEWS,
    Prepare,
    RowRanges,
    ShardPlan,
    contiguous_runs,
    iter_shard,
)
from memray.job.config import AuditConfig
from memray.job.markers import shard_done, shard_record, write_shard_marker
from memray.job.shard_files import finish_shard, parts_url
from memray.job.views import extra_view_names, pixel_size, set_views, view_prepares
from memray.ray.errors import one_line, raise_own_errors, user_errors
from memray.ray.session import started_local

log = logging.getLogger(__name__)
NODE = "node_id"
FIRST, LAST, N_OK, PART, ERRORS = "first", "last", "n_ok", "part", "errors"  # columns of the actors' records
WEIGHTS_ERROR = "weights_error"  # "" unless the actor loaded other weights than the job's (then nothing is embedded)
NONFINITE = "nonfinite"  # and JSON {layer: [rows with NaN/inf, [first sample ids]]} of the range's features
FORWARD_S, INIT_S, FIRST_AT = "forward_s", "init_s", "first_at"  # on a batch's first record: its forward seconds;
# on the actor's first record: its constructor's seconds and when (Unix time) its first forward pass began


class EmbedActor:
    """Loads the encoder once per actor, checks it has the job's weights (``expected_weights``), embeds a batch of
    prepared images and writes its part files.

    Returns one record per (shard, contiguous row range) of the batch: ``set, shard, first, last, n_ok, shard_rows,
    part, errors, nonfinite, node_id, weights_error``; ``shard_rows`` is the shard's row count on the range holding
    its last row, else :data:`~memray.io.shards.ROWS_UNKNOWN`; ``part`` is ``""`` when no row of the range embedded;
    ``errors`` is JSON ``[[row, sample_id, status, error], …]``. An actor whose weights are not the job's embeds and
    writes nothing and says why in ``weights_error`` (a record, not an exception: Ray hands an actor's exception to
    the driver as a traceback, not as the error), which the driver raises as :class:`WeightsChangedError`: one line.
    ``nonfinite`` is JSON ``{layer: [count, [sample ids]]}`` of the rows whose features hold a NaN/inf (refused
    before scoring, :mod:`memray.io.finite`). The batch's first record also carries ``forward_s``, the seconds of
    its forward passes, and the actor's first record ``init_s``, the seconds its constructor took (loading torch,
    timm and the weights), and ``first_at``, the Unix time its first forward pass began; every other record has 0
    there (``run.json``: ``stats.embed``).
    """

    def __init__(
        self,
        embed_cfg: dict[str, Any],
        num_threads: int | None,
        out: str,
        storage_options: dict | None = None,
        expected_weights: dict[str, Any] | None = None,
        view_names: tuple[str, ...] = (),
        pixels: int = 0,
    ) -> None:
        t0 = time.perf_counter()
        from memray.embedding.embed import LayerEmbedder

        cfg = from_dict(EmbedConfig, embed_cfg, "embed")
        self.embedder = LayerEmbedder(cfg, num_threads=num_threads, storage_options=storage_options)
        self.node = ray.get_runtime_context().get_node_id()
        who = f"the embedding actor on node {self.node}"
        self.weights_error = weights_mismatch(self.embedder.weights_info, expected_weights, who)
        self.out, self.storage_options, self.view_names = out, storage_options, tuple(view_names)
        self.pixels = int(pixels)  # the side of pixel space added to every row's features (0: none)
        self.init_s = time.perf_counter() - t0  # reported once, with ``first_at``, on the first batch's first record
        self.started = False  # whether a batch was embedded

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with user_errors():
            t0, first_at, first = time.perf_counter(), time.time(), not self.started
            self.started = True
            ok = (batch[schema.STATUS] == STATUS_OK) & (not self.weights_error)
            feats = self.embedder.embed_prepared(batch[IMAGE][ok]) if ok.any() else {}
            feats = with_pixels(feats, batch[IMAGE][ok], self.pixels)
            at = np.cumsum(ok) - 1  # position of each ok row of the batch in ``feats``
            under, vat = self._embed_views(batch, ok)
            forward = time.perf_counter() - t0
            records = []
            for idx in contiguous_runs(batch):
                rows = idx[ok[idx]]
                with_views = len(rows) > 0 and bool((vat[rows] >= 0).all())  # a query set's range
                views = {v: {k: x[vat[rows]] for k, x in f.items()} for v, f in under.items()} if with_views else {}
                records.append(self._write(batch, idx, ok[idx], {k: v[at[rows]] for k, v in feats.items()}, views))
        times = {k: np.zeros(len(records)) for k in (FORWARD_S, INIT_S, FIRST_AT)}
        times[FORWARD_S][0] = forward
        if first:
            times[INIT_S][0], times[FIRST_AT][0] = self.init_s, first_at
        return (
            {k: np.array([r[k] for r in records]) for k in records[0]}
            | times
            | {WEIGHTS_ERROR: np.array([self.weights_error] * len(records))}
        )

    def _embed_views(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> tuple[dict[str, dict], np.ndarray]:
        """The ok rows' images under the further views (rows of query sets), embedded apart from the identity
        images (so those are embedded exactly as without views): ``({view: {ℓ: (n, D)}}, position of each batch
        row in them, -1 for rows without views)``."""
        vat = np.full(len(ok), -1, np.int64)
        if VIEWS not in batch or not self.view_names or not ok.any():
            return {}, vat
        stacks = batch[VIEWS]
        sel = ok & np.array([len(v) > 0 for v in stacks], dtype=bool)
        if not sel.any():
            return {}, vat
        nv = len(self.view_names)
        images = np.concatenate([np.asarray(stacks[i], dtype=np.uint8) for i in np.flatnonzero(sel)])
        if len(images) != nv * int(sel.sum()):
            raise RuntimeError(f"view images: {len(images)} for {int(sel.sum())} rows × {nv} views")
        feats = with_pixels(self.embedder.embed_prepared(images), images, self.pixels)
        vat[sel] = np.arange(int(sel.sum()))
        return {v: {k: x[j::nv] for k, x in feats.items()} for j, v in enumerate(self.view_names)}, vat

    def _write(
        self, batch: dict[str, np.ndarray], idx: np.ndarray, ok: np.ndarray, layers: dict, views: dict | None = None
    ) -> dict[str, Any]:
        set_name, shard = str(batch[schema.SET][idx[0]]), int(batch[SHARD][idx[0]])
        first, last, part, bad = int(batch[ROW][idx[0]]), int(batch[ROW][idx[-1]]), "", {}
        if ok.any():
            bad = finite.nonfinite_rows(batch[schema.SAMPLE_ID][idx[ok]], layers)
            part = f"rows-{first:09d}-{last:09d}.parquet"
            table = features_to_table(FeatureSet(batch[schema.SAMPLE_ID][idx[ok]], layers), views=views or None)
            with storage.open_output(
                storage.join(parts_url(self.out, set_name, shard), part), self.storage_options
            ) as fh:
                pq.write_table(table, fh, **parquet_options(table.schema))
        cols = (ROW, schema.SAMPLE_ID, schema.STATUS, schema.ERROR)
        errors = [[int(batch[ROW][i]), *(str(batch[c][i]) for c in cols[1:])] for i in idx[~ok]]
        return {schema.SET: set_name, SHARD: shard, FIRST: first, LAST: last, N_OK: int(ok.sum()),
                SHARD_ROWS: int(batch[SHARD_ROWS][idx].max()), PART: part, ERRORS: json.dumps(errors),
                NONFINITE: json.dumps(finite.to_json(bad)), NODE: self.node}  # fmt: skip


@ray.remote
def _finish_task(*args: Any) -> dict[str, int]:
    return finish_shard(*args)


def _read_fn(
    prepare: Prepare,
    max_pixels: int,
    storage_options: dict[str, Any] | None,
    views: dict[str, ViewPrepare] | None = None,
) -> Callable[[dict[str, Any]], Iterator[dict[str, Any]]]:
    def read(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with user_errors():
            plan = ShardPlan.from_json(item["plan"])
            under = None if views is None else views.get(plan.set_name, ViewPrepare(prepare, ()))
            yield from iter_shard(plan, prepare, max_pixels, storage_options, under)

    return read


def _load_record(embed_cfg: dict[str, Any], storage_options: dict | None) -> dict[str, Any]:
    from memray.embedding.weights import load_model

    return load_model(from_dict(EmbedConfig, embed_cfg, "embed"), storage_options)[1]


def resolve_weights(cfg: AuditConfig, planned: dict[str, Any]) -> dict[str, Any]:
    """The weights record the actors must load: ``planned`` (the preflight's), except hub weights, which preflight
    cannot see: one task placed like an embedding actor loads the model and returns its record (hub id, revision,
    state-dict digest), against which every actor then checks its own."""
    if planned.get("source") != SOURCE_HUB or weights_identity(planned) is not None:
        return planned
    res, storage_options = cfg.resources, cfg.storage
    task = ray.remote(_load_record).options(
        num_cpus=res.actor_num_cpus, num_gpus=res.actor_num_gpus, resources=dict(res.actor_resources) or None
    )
    record = ray.get(task.remote(to_dict(cfg.embed), storage_options))
    log.info("hub weights %s (revision %s): state_sha256 %s", record.get("hf_hub_id"), record.get("revision"),
             record.get("state_sha256"))  # fmt: skip
    return record


class _Progress:
    """One log line per finished shard: shards and rows done, rows/s, and the ETA of the remaining shards."""

    def __init__(self, todo: list[ShardPlan]) -> None:
        self.total, self.done, self.rows, self.t0 = len(todo), 0, 0, time.perf_counter()

    def shard(self, plan: ShardPlan, rows: int) -> None:
        self.done, self.rows = self.done + 1, self.rows + rows
        dt = time.perf_counter() - self.t0
        eta = dt / self.done * (self.total - self.done)
        log.info(
            "embed: %d/%d shards (%s %s, %d rows); %d rows in %.0f s, %.1f rows/s, ETA %.0f s",
            self.done, self.total, plan.set_name, plan.key, rows, self.rows, dt, self.rows / dt if dt else 0.0, eta,
        )  # fmt: skip


class _Assembly:
    """The driver's side: actor records in; a :func:`finish_shard` task per covered shard; markers as they finish."""

    def __init__(
        self,
        todo: list[ShardPlan],
        out: str,
        meta: dict,
        storage_options: dict | None,
        key: tuple,
        cpus: float,
        views: dict[str, tuple[str, ...]] | None = None,
        pixels: int = 0,
    ) -> None:
        self.plans = {(p.set_name, p.shard): p for p in todo}
        self.out, self.meta, self.storage_options, self.key = (
            out,
            meta,
            storage_options,
            key,
        )  # key: (embed key, weights record)
        self.views = views or {}  # set -> the further views its shards hold
        self.pixels = pixels  # the side of pixel space in every shard (0: none)
        self.meta_ref, self.task = ray.put(meta), _finish_task.options(num_cpus=cpus)
        self.ranges: dict[tuple[str, int], RowRanges] = defaultdict(RowRanges)
        # task → (shard, rows read, rows embedded, NaN/inf rows the actors found)
        self.pending: dict[Any, tuple[tuple[str, int], int, int, dict]] = {}
        self.started: set[tuple[str, int]] = set()
        self.nodes: set[str] = set()
        self.rows = self.driver_bytes = 0
        self.progress = _Progress(todo)
        self.forward_s = self.actor_start_s = 0.0
        self.started_at, self.first_at = time.time(), math.inf  # the stage's start; the earliest first forward pass

    def add(self, records: pa.Table) -> None:
        """Take one batch of actor records; start the tasks of the shards they complete."""
        self.driver_bytes += records.nbytes
        firsts = [t for t in records.column(FIRST_AT).to_pylist() if t > 0]
        self.first_at = min([self.first_at, *firsts])
        self.forward_s += sum(records.column(FORWARD_S).to_pylist())
        self.actor_start_s = max([self.actor_start_s, *records.column(INIT_S).to_pylist()])
        failed = [e for e in records.column(WEIGHTS_ERROR).to_pylist() if e]
        if failed:  # nothing of that actor was written; the shards other actors finished keep their markers
            raise WeightsChangedError(failed[0])
        for rec in records.to_pylist():
            key = (rec[schema.SET], rec[SHARD])
            self.nodes.add(rec[NODE])
            if key in self.started:  # a retried batch of a shard already handed on
                continue
            self.ranges[key].add(rec)
            cover = self.ranges[key].cover()
            if cover is not None:
                total = self.ranges.pop(key).total or 0
                self.started.add(key)
                parts = [r[PART] for r in cover if r[PART]]
                errors = [e for r in cover for e in json.loads(r[ERRORS])]
                ref = self.task.remote(self.out, self.plans[key], parts, errors, self.meta_ref, self.storage_options)
                bad: dict = {}
                for r in cover:
                    bad = finite.merge(bad, finite.from_json(json.loads(r[NONFINITE])))
                self.pending[ref] = (key, total, sum(r[N_OK] for r in cover), bad)
        self.collect(wait=False)

    def times(self) -> dict[str, float]:
        """Where the stage's seconds went (:func:`run_embedding`); 0 where no actor reported."""
        first = self.first_at - self.started_at if math.isfinite(self.first_at) else 0.0
        return {"forward_seconds": self.forward_s, "actor_start_seconds": self.actor_start_s,
                "first_forward_seconds": max(first, 0.0)}  # fmt: skip

    def collect(self, wait: bool) -> None:
        """Write the markers of finished shard tasks (all of them, waiting, with ``wait``)."""
        if not self.pending:
            return
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)
        for ref in ready:
            key, total, n_ok, bad = self.pending.pop(ref)
            got = ray.get(ref)
            if got["rows_embedded"] != n_ok or total != got["rows_embedded"] + got["rows_reported"]:
                raise RuntimeError(f"set {key[0]} {self.plans[key].key}: wrote {got}, expected {n_ok} of {total}")
            self._mark(self.plans[key], total, got, bad)

    def close(self) -> None:
        """Once the stream ended: mark shards that had no row at all; refuse shards with rows missing."""
        for key, plan in self.plans.items():
            if key not in self.started and key not in self.ranges:  # a shard with no image at all
                self._mark(plan, 0, finish_shard(self.out, plan, [], [], self.meta, self.storage_options))
        short = [f"set {k[0]} {self.plans[k].key}: got {r.rows} rows" for k, r in self.ranges.items()]
        if short:
            raise RuntimeError(f"{'; '.join(short)}, expected more; rerun to resume")

    def _mark(self, plan: ShardPlan, rows_read: int, got: dict[str, int], bad: dict | None = None) -> None:
        record = shard_record(plan, rows_read, got, *self.key, bad, self.views.get(plan.set_name, ()), self.pixels)
        write_shard_marker(self.out, plan, record, self.storage_options)
        self.rows += rows_read
        self.progress.shard(plan, rows_read)


def _dataset(cfg: AuditConfig, todo: list[ShardPlan], out: str, prepare: Prepare, weights: dict | None) -> Any:
    """The Ray Data pipeline of ``todo``: a read task per shard (flat-mapped rows), then the embedding actor pool."""
    res, storage_options = cfg.resources, cfg.storage
    ds = ray.data.from_items([{"plan": p.to_json()} for p in todo], override_num_blocks=len(todo))
    raise_own_errors(ds)
    views = view_prepares(cfg, prepare)  # query sets: their images under each further view, same read
    ds = ds.flat_map(_read_fn(prepare, cfg.max_image_pixels, storage_options, views), num_cpus=res.read_num_cpus)
    # Ray 2.60 deprecates map_batches' **ray_remote_args and names no parameter for max_restarts (ActorPoolStrategy
    # and DataContext have none either). map_batches_internal, the developer API that map_batches calls after checking
    # batch_size (set here, at least 1), takes it without the warning.
    return ds.map_batches_internal(
        EmbedActor,
        fn_constructor_kwargs={
            "embed_cfg": to_dict(cfg.embed),
            "num_threads": res.torch_threads,
            "out": out,
            "storage_options": storage_options,
            "expected_weights": weights,
            "view_names": extra_view_names(cfg),
            "pixels": pixel_size(cfg),
        },
        compute=ray.data.ActorPoolStrategy(size=res.actors),
        num_cpus=res.actor_num_cpus,
        num_gpus=res.actor_num_gpus,
        resources=dict(res.actor_resources) or None,
        batch_size=res.embed_batch_size,
        batch_format="numpy",
        # A Ray we started ourselves is this machine: a crashed actor is resumed by a rerun. On a cluster,
        # lost nodes are replaced in the run (Ray then logs that restarts need the actor's arguments).
        max_restarts=0 if started_local() else -1,
    )


def run_embedding(
    cfg: AuditConfig,
    plans: list[ShardPlan],
    out: str,
    meta: dict[str, Any],
    prepare: Prepare,
    embed_key: str = "",
    before_writing: Callable[[], Any] | None = None,
    weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed every shard of ``plans`` not already done (:func:`memray.job.markers.shard_done`); ``weights``: the
    job's weights record (:func:`resolve_weights`), which every actor checks and every marker records (its identity
    is in ``embed_key``).

    ``before_writing``: called once before the first write, when some shard is to be done (claims a reference that
    was only to be read). Returns rows read, seconds, the node ids of the actors, ``driver_bytes``: the Arrow
    bytes of the records the driver received (no features travel through it), and where the seconds went:
    ``first_forward_seconds`` (from the stage's start until the first actor began its first forward pass: the
    pool's start-up and the first reads; wall clocks of the driver's and the actor's nodes),
    ``actor_start_seconds`` (the slowest actor constructor) and ``forward_seconds`` (the actors' forward passes,
    summed over the batches; over the stage's seconds, the pool's busy share).
    """
    storage_options = cfg.storage
    names = set_views(cfg)
    pixels = pixel_size(cfg)
    todo = [p for p in plans if not shard_done(out, p, embed_key, storage_options, names.get(p.set_name, ()), pixels)]
    log.info("embed: %d of %d shards to do (%d already done)", len(todo), len(plans), len(plans) - len(todo))
    if todo and before_writing is not None:
        before_writing()
    t0 = time.perf_counter()
    asm = _Assembly(todo, out, meta, storage_options, (embed_key, weights), cfg.resources.read_num_cpus, names, pixels)
    if todo:
        ds = _dataset(cfg, todo, out, prepare, weights)
        try:
            for records in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                asm.add(records)
            asm.collect(wait=True)
        except BaseException:
            while asm.pending:  # keep the shards that were already assembled: their markers make a rerun resume
                try:
                    asm.collect(wait=True)
                except Exception as exc:  # each failed shard task is taken off ``pending``
                    log.warning("embed: a shard could not be finished after the failure: %s", one_line(exc))
            raise
        asm.close()
    dt = time.perf_counter() - t0
    log.info("embed: %d rows, %.1f s, %.1f rows/s", asm.rows, dt, asm.rows / dt if dt > 0 else 0.0)
    return {"rows": asm.rows, "seconds": dt, "nodes": sorted(asm.nodes), "driver_bytes": asm.driver_bytes} | asm.times()
