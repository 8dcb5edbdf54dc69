"""The embedding stage on a real local Ray: the actors write the shard files, the driver only gets small records."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from ray.util.annotations import RayDeprecationWarning
from ray_helpers import audit_config, make_inputs, sample_images, write_npz

import memray
from memray.embedding.embed import LayerEmbedder, make_prepare
from memray.embedding.views import extra_views
from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.features import FeatureSet, table_to_features, write_features
from memray.io.shards import STATUS_OK, ShardPlan, plan_shards, read_shard
from memray.job.shard_files import finish_shard, parts_url, shard_url
from memray.ray import embed_stage
from memray.ray.embed_stage import run_embedding

MARKER_KEYS = {"rows_read", "rows_embedded", "rows_reported", "embed_key", "listing_digest", "listing", "nonfinite",
               "pixels"}  # fmt: skip


def _layer_encodings(path: Path) -> dict[str, tuple[set[str], str]]:
    """Per layer column of a Parquet file: the encodings and the compression of its first row group."""
    md = pq.ParquetFile(path).metadata
    cols = (md.row_group(0).column(i) for i in range(md.num_columns))
    return {c.path_in_schema: (set(c.encodings), c.compression) for c in cols if c.path_in_schema.startswith("layer_")}


def _assert_feature_encoding(path: Path) -> None:
    enc = _layer_encodings(path)
    assert enc, path
    for col, (encodings, compression) in enc.items():  # no dictionary pages for floats; zstd on split bytes
        assert "BYTE_STREAM_SPLIT" in encodings and not encodings & {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}, col
        assert compression == "ZSTD", col


@pytest.mark.timeout(300)
def test_actors_write_complete_shards_and_the_driver_gets_no_features(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    train_dir = Path(inputs["train"])
    (train_dir / "img_00010x.png").write_bytes(b"not an image")  # an error row inside the first shard
    bad_dir = tmp_path / "in" / "bad"  # a set whose every image fails: one shard, no feature rows
    bad_dir.mkdir()
    for i in range(3):
        (bad_dir / f"broken_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    # shards of 40 rows in actor batches of 16 on 2 actors: every shard is split over several batches
    cfg = audit_config(inputs, str(tmp_path / "out"), resources__actors=2, resources__shard_rows=40,
                       resources__embed_batch_size=16)  # fmt: skip
    plans = plan_shards(cfg.train, 40) + plan_shards(DatasetSpec(name="bad", urls=(str(bad_dir),)), 40)
    assert [len(p.units) for p in plans] == [40, 40, 40, 40, 40, 40, 1, 3]
    out = str(tmp_path / "out")
    stale = FeatureSet(np.array(["stale.png"], dtype=object), {1: np.ones((1, 64), np.float32)})
    write_features(shard_url(out, plans[-1], ".parquet"), stale)  # left by an earlier run: must not survive
    write_features(f"{parts_url(out, 'train', 0)}/rows-000000000-000000039.parquet", stale)  # a killed run's part
    meta = {"job": "embed-stage-test"}
    prepare = make_prepare(cfg.embed)

    stats = run_embedding(cfg, plans, out, meta, prepare, embed_key="k1")

    assert stats["rows"] == 241 + 3 and len(stats["nodes"]) == 1
    embedder = LayerEmbedder(cfg.embed, num_threads=1)  # the in-process path on the same pure functions
    feature_bytes = 0
    for plan in plans:
        marker = json.loads(Path(shard_url(out, plan, ".done.json")).read_text())
        assert set(marker) == MARKER_KEYS and marker["embed_key"] == "k1"
        assert marker["nonfinite"] == {}  # every embedding finite
        assert marker["listing_digest"] == plan.listing_digest() and marker["listing"] == plan.listing()
        rows = read_shard(plan, prepare, 10**8)
        ok = [r for r in rows if r[schema.STATUS] == STATUS_OK]
        bad = [r for r in rows if r[schema.STATUS] != STATUS_OK]
        counts = (marker["rows_read"], marker["rows_embedded"], marker["rows_reported"])
        assert counts == (len(rows), len(ok), len(bad)) and len(rows) == len(ok) + len(bad)
        errors = pq.read_table(shard_url(out, plan, ".errors.parquet"))
        assert errors.schema.equals(schema.ERRORS_SCHEMA)
        assert errors.column(schema.SAMPLE_ID).to_pylist() == [r[schema.SAMPLE_ID] for r in bad]
        assert errors.column(schema.STATUS).to_pylist() == [r[schema.STATUS] for r in bad]
        assert set(errors.column(schema.SET).to_pylist()) <= {plan.set_name}
        path = Path(shard_url(out, plan, ".parquet"))
        if not ok:
            assert not path.exists()  # the stale file of the all-failed shard is gone
            continue
        table = pq.read_table(path)
        assert json.loads(table.schema.metadata[schema.META_KEY]) == meta
        got = table_to_features(table, str(path))
        assert got.ids.tolist() == [r[schema.SAMPLE_ID] for r in ok]  # every row once, in shard order
        want = embedder.embed_prepared(np.stack([r["image"] for r in ok]))
        for layer, x in want.items():
            np.testing.assert_allclose(got.layers[layer], x, rtol=1e-6, atol=1e-6)
        feature_bytes += sum(x.nbytes for x in got.layers.values())
        _assert_feature_encoding(path)
    assert [e[schema.SAMPLE_ID] for e in pq.read_table(shard_url(out, plans[0], ".errors.parquet")).to_pylist()] == [
        "img_00010x.png"
    ]
    assert not list((tmp_path / "out").rglob("*.parts"))  # parts are deleted once their shard is written
    assert 0 < stats["driver_bytes"] * 20 < feature_bytes  # records only: the features never reach the driver

    markers = {p: Path(shard_url(out, p, ".done.json")).stat().st_mtime_ns for p in plans}
    again = run_embedding(cfg, plans, out, meta, prepare, embed_key="k1")
    assert again["rows"] == 0 and again["driver_bytes"] == 0
    assert all(Path(shard_url(out, p, ".done.json")).stat().st_mtime_ns == t for p, t in markers.items())


def test_finish_shard_refuses_duplicate_ids_and_writes_nothing(tmp_path: Path) -> None:
    out = str(tmp_path)
    plan = ShardPlan("train", 3, ())
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    for name, ids, rows in (("a", ["p", "q"], x[:2]), ("b", ["r", "p"], x[2:])):
        fs = FeatureSet(np.array(ids, dtype=object), {1: rows})
        write_features(f"{parts_url(out, 'train', 3)}/{name}.parquet", fs)
    with pytest.raises(ValueError, match="duplicate sample ids"):
        finish_shard(out, plan, ["a.parquet", "b.parquet"], [], {}, None)
    assert not Path(shard_url(out, plan, ".parquet")).exists()
    assert not Path(shard_url(out, plan, ".done.json")).exists()

    got = finish_shard(out, plan, ["a.parquet"], [[2, "r", "corrupt", "bad bytes"]], {"m": 1}, None)
    assert got == {"rows_embedded": 2, "rows_reported": 1}
    fs = table_to_features(pq.read_table(shard_url(out, plan, ".parquet")))
    assert fs.ids.tolist() == ["p", "q"] and np.array_equal(fs.layers[1], x[:2])
    assert pq.read_table(shard_url(out, plan, ".errors.parquet")).to_pylist() == [
        {schema.SET: "train", schema.SAMPLE_ID: "r", schema.STATUS: "corrupt", schema.ERROR: "bad bytes"}
    ]
    assert not Path(parts_url(out, "train", 3)).exists()


def test_feature_files_store_floats_without_dictionary_in_zstd(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    fs = FeatureSet(np.array([f"img_{i}" for i in range(500)], dtype=object),
                    {ell: rng.standard_normal((500, 32)).astype(np.float32) for ell in (1, 2)})  # fmt: skip
    write_features(str(tmp_path / "f.parquet"), fs)
    _assert_feature_encoding(tmp_path / "f.parquet")
    back = table_to_features(pq.read_table(tmp_path / "f.parquet"))
    assert back.ids.tolist() == fs.ids.tolist() and all(np.array_equal(back.layers[k], fs.layers[k]) for k in (1, 2))


@pytest.mark.timeout(300)
def test_query_sets_are_embedded_under_every_view_in_the_same_pass(ray_local, tmp_path: Path) -> None:
    """Test-set shards gain one column per layer and view (each view embedded as its own image), the training set
    none; identity columns are the bits of a run without views; a change of views redoes only the query shards."""
    inputs = make_inputs(tmp_path / "in")
    out, plain_out = str(tmp_path / "out"), str(tmp_path / "plain")
    cfg = audit_config(inputs, out, resources__shard_rows=64, resources__embed_batch_size=16,
                       evidence__views=["identity", "hflip", "shift:1"])  # fmt: skip
    plans = plan_shards(cfg.train, 64)[:1] + plan_shards(cfg.test, 64)[:1]
    prepare = make_prepare(cfg.embed)
    run_embedding(cfg, plans, out, {}, prepare, embed_key="k")
    plain = audit_config(inputs, plain_out, resources__shard_rows=64, resources__embed_batch_size=16,
                         evidence__views=["identity"])  # fmt: skip
    run_embedding(plain, plans, plain_out, {}, prepare, embed_key="k")
    embedder = LayerEmbedder(cfg.embed, num_threads=1)
    names = ["hflip", "dx+1", "dx-1", "dy+1", "dy-1"]
    train_cols = pq.read_schema(shard_url(out, plans[0], ".parquet")).names
    assert not any("@" in c for c in train_cols)
    assert "views" not in json.loads(Path(shard_url(out, plans[0], ".done.json")).read_text())
    marker = json.loads(Path(shard_url(out, plans[1], ".done.json")).read_text())
    assert marker["views"] == names
    table = pq.read_table(shard_url(out, plans[1], ".parquet"))
    base = pq.read_table(shard_url(plain_out, plans[1], ".parquet"))
    for layer in embedder.resolved_layers:  # identity: bit for bit the run without views
        assert table.column(schema.layer_column(layer)).equals(base.column(schema.layer_column(layer)))
    views = {v.name: v for v in extra_views(cfg.evidence.views)}
    rgb = _decoded(plans[1])
    for name in names:
        want = embedder.embed_prepared(np.stack([prepare(views[name](img)) for img in rgb]))
        for layer, x in want.items():
            got = np.stack(table.column(schema.view_column(layer, name)).to_numpy(zero_copy_only=False))
            np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
    mtimes = [Path(shard_url(out, p, ".done.json")).stat().st_mtime_ns for p in plans]
    fewer = audit_config(inputs, out, resources__shard_rows=64, evidence__views=["identity", "hflip"])
    again = run_embedding(fewer, plans, out, {}, prepare, embed_key="k")
    assert again["rows"] == len(rgb)  # only the test shard is redone
    assert Path(shard_url(out, plans[0], ".done.json")).stat().st_mtime_ns == mtimes[0]
    assert json.loads(Path(shard_url(out, plans[1], ".done.json")).read_text())["views"] == ["hflip"]


def _decoded(plan: ShardPlan) -> list[np.ndarray]:
    """The shard's images as decoded RGB, in shard order (every input here decodes)."""
    from memray.io.images import decode_array, decode_image
    from memray.io.sources import read_unit

    payloads = [payload for unit in plan.units for _, payload in read_unit(unit, None)]
    return [decode_array(p) if isinstance(p, np.ndarray) else decode_image(p) for p in payloads]


class _Warnings:
    """Every ``warnings.warn`` call while installed, seen before any filter: a ``catch_warnings`` that ignores a
    warning around the call hides nothing here. Each: (category, message, the file the warning names)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[type[Warning], str, str]] = []
        warn = warnings.warn

        def spy(message: Any, category: type[Warning] | None = None, stacklevel: int = 1, *args: Any, **kw: Any):
            cat = type(message) if isinstance(message, Warning) else category or UserWarning
            try:
                where = sys._getframe(stacklevel).f_code.co_filename  # stacklevel 1: the line calling warn
            except ValueError:
                where = "?"
            self.calls.append((cat, str(message), where))
            return warn(message, category, stacklevel + 1, *args, **kw)

        monkeypatch.setattr(warnings, "warn", spy)

    def shown_deprecations(self) -> list[str]:
        """Ray's own deprecation category (Ray shows each once per module), any FutureWarning, and any deprecation
        naming memray's lines (Ray names the caller's line).

        Plain DeprecationWarnings at Ray's own lines stay out: ``DataContext()`` sets its own deprecated fields on
        every use of Ray Data, and Python's default filters hide them.
        """
        own = str(Path(memray.__file__).parent)
        return [
            f"{cat.__name__}: {message} ({where})"
            for cat, message, where in self.calls
            if issubclass(cat, (RayDeprecationWarning, FutureWarning))
            or (issubclass(cat, (DeprecationWarning, PendingDeprecationWarning)) and where.startswith(own))
        ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("local", [True, False], ids=["own-ray", "cluster"])
def test_a_run_warns_of_nothing_deprecated_and_keeps_the_restart_policy(
    ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    monkeypatch.setattr(embed_stage, "started_local", lambda: local)  # a Ray this process started, or a cluster's
    restarts: list[int | None] = []
    options = ray.actor.ActorClass.options

    def spy(self: Any, **kwargs: Any) -> Any:  # the embedding actors are created in this process
        meta = getattr(self, "__ray_metadata__", None)
        if meta is not None and "MapBatches(EmbedActor)" in meta.class_name:
            restarts.append(kwargs.get("max_restarts"))
        return options(self, **kwargs)

    monkeypatch.setattr(ray.actor.ActorClass, "options", spy)
    npz = write_npz(tmp_path / "in" / "few.npz", sample_images("test", 20))
    cfg = audit_config({k: npz for k in ("train", "test", "copy", "real")}, str(tmp_path / "out"))
    plans = plan_shards(DatasetSpec(name="few", urls=(npz,)), 16)
    warned = _Warnings(monkeypatch)
    stats = run_embedding(cfg, plans, str(tmp_path / "out"), {"job": "t"}, make_prepare(cfg.embed))
    assert stats["rows"] == 20
    assert warned.shown_deprecations() == []
    # a Ray of our own fails on a crashed actor (a rerun resumes); a cluster's actors are restarted in the run
    assert restarts and set(restarts) == {0 if local else -1}
