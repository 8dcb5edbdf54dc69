"""Checks an audit config can run, before Ray starts and before anything is written.

:func:`preflight` lists every input (so a missing path fails in a second, not after Ray's start-up), checks the
encoder and its weights without loading them (:func:`memray.embedding.embed.check_encoder`), then streams a weights
file once through SHA-256 (:func:`memray.job.resume.planned_weights`: the weights' identity, which keys the
embeddings and which every embedding worker checks against the bytes it loads), the sample ids of sets given as
embeddings (unique), the fingerprint subset size against the set sizes known from the listing, the output URL and the
configs of an output folder being resumed (:func:`memray.job.resume.check_output_folder`), and a saved gallery's
configs and weights against this run's. The cluster's capacity is checked once Ray is connected
(:func:`memray.ray.session.check_capacity`), still before anything is written.
Every failure is a ``ValueError`` whose one-line message names the field or file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from dataclasses import dataclass, field
from typing import Any

from memray.embedding.identity import weights_identity
from memray.io import schema, storage
from memray.io.shards import ShardPlan, plan_shards
from memray.io.sources import KIND_FILE, KIND_NPZ, KIND_PARQUET, NPZ_KEYS, Unit
from memray.job.config import AuditConfig, refuse_relative_under_ray_job

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """The config cannot run as given; the message says what to change."""


@dataclass(frozen=True)
class Preflight:
    """What the checks found: every set's shard plan, the skipped files, the encoder record."""

    plans: dict[str, list[ShardPlan]]
    skipped: dict[str, list[tuple[str, str]]]
    encoder: dict[str, Any] = field(default_factory=dict)
    known_rows: dict[str, int | None] = field(default_factory=dict)
    files: dict[str, list[Any]] = field(default_factory=dict)
    """Sets given as precomputed embeddings: their :class:`memray.io.embedding_inputs.EmbeddingFile` listing."""
    layers: dict[int, int] = field(default_factory=dict)
    """``{layer: dim}`` every embeddings set has (empty when no set is given as embeddings)."""
    weights: dict[str, Any] = field(default_factory=dict)
    """The weights the job embeds with (:func:`memray.job.resume.planned_weights`; empty when nothing is embedded):
    ``source`` and, for a file, ``url``, ``sha256``, ``bytes``; hub weights are resolved when the job starts
    (``hf_hub_id``, ``revision``, ``state_sha256``). Its identity (:func:`memray.embedding.identity.weights_identity`)
    keys the embeddings."""

    def listing(self, name: str) -> list[str]:
        """The listing digests of a set's inputs: one per shard (images) or per feature file (embeddings)."""
        if name in self.files:
            return [f.listing_digest() for f in self.files[name]]
        return [p.listing_digest() for p in self.plans[name]]


def unit_rows(unit: Unit, storage_options: dict[str, Any] | None) -> int | None:
    """Samples in a unit when cheap to know (a file: 1; Parquet: footer; .npz: array header), else ``None``."""
    if unit.kind == KIND_FILE:
        return 1
    try:
        if unit.kind == KIND_PARQUET:
            import pyarrow.parquet as pq

            with storage.open_url(unit.url, "rb", storage_options) as fh:
                return int(pq.ParquetFile(fh).metadata.num_rows)
        if unit.kind == KIND_NPZ:
            import numpy as np

            with storage.open_url(unit.url, "rb", storage_options) as fh, zipfile.ZipFile(fh) as zf:
                names = {n.removesuffix(".npy"): n for n in zf.namelist()}
                key = unit.column or next((k for k in NPZ_KEYS if k in names), None)
                if key is None or key not in names:
                    return None
                with zf.open(names[key]) as arr:
                    fmt = np.lib.format
                    major = fmt.read_magic(arr)[0]
                    read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                    shape = read(arr)[0]
                return int(shape[0]) if shape else None
    except Exception as exc:  # unreadable here: the reader reports it as an error row later
        log.debug("%s: cannot count rows ahead (%s)", unit.url, exc)
    return None


def set_rows(plans: list[ShardPlan], storage_options: dict[str, Any] | None) -> int | None:
    """Samples of a set if every unit's count is cheap to know, else ``None``."""
    total = 0
    for plan in plans:
        for unit in plan.units:
            n = unit_rows(unit, storage_options)
            if n is None:
                return None
            total += n
    return total


def check_not_empty(known: dict[str, int | None], plans: dict[str, list[ShardPlan]], files: dict[str, list]) -> None:
    """Refuse a set whose inputs are known to hold no sample (0-row embeddings files, empty containers)."""
    for name, n in known.items():
        if n == 0:
            urls = [f.url for f in files[name]] if name in files else [u.url for p in plans[name] for u in p.units]
            shown = ", ".join(urls[:3]) + (f", … ({len(urls)} files)" if len(urls) > 3 else "")
            kind = "embedding rows" if name in files else "images"
            raise PreflightError(f"set {name!r}: its inputs hold 0 {kind} ({shown}); give at least one sample")


def check_subset_size(cfg: AuditConfig, known: dict[str, int | None]) -> None:
    """Disjoint fingerprint subsets need at least ``subset_size`` samples per generated set."""
    fp = cfg.fingerprint
    if fp is None or fp.subsets != "disjoint":
        return
    small = {g.name: known[g.name] for g in cfg.generated if known.get(g.name) is not None}
    small = {k: v for k, v in small.items() if v < fp.subset_size * (fp.n_subsets or 1)}
    if small:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(small.items()))
        raise PreflightError(
            f"fingerprint.subset_size={fp.subset_size}"
            + (f" × n_subsets={fp.n_subsets}" if fp.n_subsets else "")
            + f" is more than the images of generated set(s) {shown}; lower fingerprint.subset_size or add images"
        )


def gallery_record(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The memray metadata of a saved gallery (``{}`` when it has none, e.g. curves from another tool)."""
    import pyarrow.parquet as pq

    if not str(url).endswith(".parquet"):
        return {}
    try:
        with storage.open_url(url, "rb", storage_options) as fh:
            meta = pq.read_schema(fh).metadata or {}
    except FileNotFoundError as exc:
        raise PreflightError(f"{url}: no such curve file") from exc
    raw = meta.get(schema.META_KEY)
    return json.loads(raw) if raw else {}


def gallery_method(url: str) -> str:
    """The fingerprint method a saved gallery was built with: ``curve_fd`` when its curves carry an FD-to-test
    profile, else ``curve`` (published curves, text files, galleries of earlier versions)."""
    from memray.fingerprint.curves import read_gallery

    return read_gallery(url).method


GALLERY_FIELDS = ("embed", "preprocessing", "ct", "fingerprint.subset_size", "fingerprint.subsets")
_CT_IGNORED = ("seed", "search_rows", "query_batch", "candidates")


def gallery_comparable(
    cfg: AuditConfig, preprocessing: dict[str, Any], weights: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parts of this run's config that a gallery's curves must share to be comparable.

    ``weights``: the job's weights record; its identity is stored as ``embed.weights_digest`` (file SHA-256 or hub
    state-dict digest), so curves made with another checkpoint at the same path are not comparable.
    """
    from memray.config import to_dict

    ct = {k: v for k, v in to_dict(cfg.ct).items() if k not in _CT_IGNORED}
    fp = cfg.fingerprint
    embed = None
    if cfg.embed is not None:
        # the weights' location may differ between machines; their content, the model, init and tokens may not
        embed = {k: v for k, v in to_dict(cfg.embed).items() if k not in ("batch_size", "weights")}
        if weights_identity(weights):
            embed["weights_digest"] = weights_identity(weights)
    return {
        "embed": embed,
        "preprocessing": preprocessing,
        "ct": ct,
        "fingerprint": {"subset_size": fp.subset_size if fp else None, "subsets": fp.subsets if fp else None},
    }


def check_gallery(
    cfg: AuditConfig,
    preprocessing: dict[str, Any],
    allow_mismatch: bool,
    storage_options: dict | None,
    weights: dict[str, Any] | None = None,
) -> None:
    """Refuse a gallery whose curves were made with another encoder (weights digest included), preprocessing or
    C_T/subset config, or with another ``fingerprint.method`` than an explicit one. Hub weights not yet resolved
    (``{"source": "hub"}``) are compared once the job resolved them."""
    from memray.fingerprint.fd_profile import check_gallery_method
    from memray.job.resume import differing_fields, weights_pending

    if cfg.fingerprint is None or not cfg.fingerprint.gallery:
        return
    url = cfg.fingerprint.gallery
    rec = gallery_record(url, storage_options)
    check_gallery_method(cfg.fingerprint.method, gallery_method(url), url)
    if not rec.get("job"):
        log.warning("%s: the gallery does not record its encoder and C_T config; it cannot be checked", url)
        return
    ours = json.loads(json.dumps(gallery_comparable(cfg, preprocessing, weights), default=str))  # as stored
    theirs = {k: rec["job"].get(k) for k in ours}
    if weights_pending(weights) and isinstance(theirs.get("embed"), dict):
        theirs["embed"] = {k: v for k, v in theirs["embed"].items() if k != "weights_digest"}
    diff = differing_fields(theirs, ours)
    if diff and not allow_mismatch:
        raise PreflightError(
            f"fingerprint.gallery={url} was made with other settings ({'; '.join(diff)}): its curves are not "
            "comparable with this run's; use a gallery made with this config, or pass --allow-gallery-mismatch"
        )
    if diff:
        log.warning("%s: gallery made with other settings (%s); used anyway (--allow-gallery-mismatch)", url, diff)


def check_curve_files(gallery_url: str, queries_url: str, allow_mismatch: bool = False) -> None:
    """Refuse to attribute curves made with other settings than the gallery's (when both files record them)."""
    from memray.job.resume import differing_fields

    theirs, ours = gallery_record(gallery_url).get("job"), gallery_record(queries_url).get("job")
    if not theirs or not ours:
        log.warning("%s / %s: a file does not record its encoder and C_T config; not checked", gallery_url, queries_url)
        return
    diff = differing_fields(theirs, ours)
    if diff and not allow_mismatch:
        raise PreflightError(
            f"{queries_url} and the gallery {gallery_url} were made with other settings ({'; '.join(diff)}): the "
            "curves are not comparable; use curves made with one config, or pass --allow-mismatch"
        )
    if diff:
        log.warning("curves made with other settings than the gallery (%s); used anyway (--allow-mismatch)", diff)


def preflight(cfg: AuditConfig, allow_gallery_mismatch: bool = False) -> Preflight:
    """Every check that needs no Ray and writes nothing; returns the plans the job will run."""
    from memray.io.embedding_inputs import check_embedding_ids, list_embedding_files
    from memray.job.reference import check_reference
    from memray.job.resume import check_output_folder, planned_weights

    storage_options = cfg.storage
    refuse_relative_under_ray_job("output", cfg.output)  # configs built in Python, not read by load_audit_config
    refuse_relative_under_ray_job("reference", cfg.reference)
    check_output_folder(cfg, storage_options)  # an output folder of another embed config is refused before Ray starts
    plans: dict[str, list[ShardPlan]] = {}
    skipped: dict[str, list[tuple[str, str]]] = {}
    files: dict[str, list[Any]] = {}
    for spec in cfg.sets:
        skipped[spec.name] = []
        if spec.is_embeddings:
            files[spec.name] = list_embedding_files(list(spec.embeddings), storage_options)
            if not files[spec.name]:
                raise PreflightError(f"set {spec.name!r}: no feature Parquet under {', '.join(spec.embeddings)}")
            check_embedding_ids(files[spec.name], spec.name, storage_options)
            continue
        plans[spec.name] = plan_shards(spec, cfg.resources.shard_rows, storage_options, skipped=skipped[spec.name])
        root = plans[spec.name][0].units[0].root.rstrip("/") + "/"  # skipped files get ids like the others'
        skipped[spec.name] = [(u.removeprefix(root), why) for u, why in skipped[spec.name]]
    layers = check_embedding_layers(files)
    encoder, weights = {}, {}
    if cfg.embed is not None and plans:  # images to embed (torch is imported only then)
        from memray.embedding.embed import check_encoder

        encoder = check_encoder(cfg.embed, storage_options)
        weights = planned_weights(cfg, storage_options)
    if encoder and layers and {int(k): int(v) for k, v in encoder.get("dims", {}).items()} != layers:
        raise PreflightError(
            f"the embeddings sets have layers {layers} ({{layer: dim}}) but embed.model {cfg.embed.model!r} with "
            f"embed.layers={cfg.embed.layers!r} makes {encoder.get('dims')}: every set must come from one encoder"
        )
    known = {name: set_rows(p, storage_options) for name, p in plans.items()}
    known.update({name: sum(f.n for f in fl) for name, fl in files.items()})
    check_not_empty(known, plans, files)
    check_subset_size(cfg, known)
    check_gallery(cfg, preprocessing_record(cfg), allow_gallery_mismatch, storage_options, weights)
    checked = Preflight(plans, skipped, encoder, known, files, layers, weights)
    check_reference(cfg, checked)  # a reference made from other sets or another encoder is refused here
    shown = [
        f"{n} {len(p)} shard(s)" + (f", {len(skipped[n])} skipped" if skipped[n] else "") for n, p in plans.items()
    ]
    shown += [f"{n} {len(fl)} embedding file(s)" for n, fl in files.items()]
    log.info("preflight ok: %s", ", ".join(shown))
    return checked


def add_sets(checked: Preflight, cfg: AuditConfig, names: list[str]) -> Preflight:
    """``checked`` plus the shard plans of the sets ``names`` of ``cfg``: sets the job writes itself (the probe
    sets), planned without listing the other inputs again."""
    storage_options = cfg.storage
    plans, skipped, known = dict(checked.plans), dict(checked.skipped), dict(checked.known_rows)
    for spec in cfg.sets:
        if spec.name in names:
            skipped[spec.name] = []
            plans[spec.name] = plan_shards(spec, cfg.resources.shard_rows, storage_options, skipped=skipped[spec.name])
            known[spec.name] = set_rows(plans[spec.name], storage_options)
    return dataclasses.replace(checked, plans=plans, skipped=skipped, known_rows=known)


def check_embedding_layers(files: dict[str, list[Any]]) -> dict[int, int]:
    """The ``{layer: dim}`` shared by every set given as embeddings; refuses sets that disagree, naming them."""
    from memray.io.embedding_inputs import embedding_layers

    found = {name: embedding_layers(fl) for name, fl in files.items()}
    if not found:
        return {}
    first_name, first = next(iter(found.items()))
    for name, layers in found.items():
        if layers != first:
            raise PreflightError(
                f"set {name!r} has layers {layers} ({{layer: dim}}) but set {first_name!r} has {first}: every set "
                "must hold the same layers from the same encoder"
            )
    return first


def preprocessing_record(cfg: AuditConfig) -> dict[str, Any] | None:
    """The preprocessing record of the run's encoder (``None`` when every set is given as embeddings)."""
    if cfg.embed is None:
        return None
    from memray.embedding.embed import describe_preprocessing

    return describe_preprocessing(cfg.embed)
