"""The in-process engine (:mod:`memray.job.local`): its shard files are the Ray engine's, file for file, and
``memray embed`` goes through it (same features as an audit's shards; an interrupted run resumes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_helpers import audit_config, make_inputs, sample_images, write_pngs

import memray.commands.embed as embed_command
import memray.job.local as local
from memray.cli import main
from memray.io import schema
from memray.io.shards import plan_shards
from memray.job.local import LocalEngine
from memray.job.shard_files import shard_url

MODEL = ["--model", "test_vit", "--random-init", "--model-kwarg", "img_size=32", "--batch-size", "32"]


def _images(folder: Path, n: int, broken: int = 1) -> Path:
    write_pngs(folder, sample_images("train", n))
    for i in range(broken):
        (folder / f"img_{i:05d}x.png").write_bytes(b"not an image")  # an error row, inside the first shard
    return folder


def _read(path: Path) -> tuple[list[str], dict[str, np.ndarray], dict]:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[schema.META_KEY])
    cols = {n: np.stack(table.column(n).to_numpy(zero_copy_only=False)) for n in table.column_names if n != "sample_id"}
    return table.column("sample_id").to_pylist(), cols, meta


def test_interrupted_embed_resumes_without_embedding_a_finished_shard_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "gen", 10)
    monkeypatch.setattr(embed_command, "SHARD_ROWS", 4)  # 11 rows: shards 0, 1 and 2
    whole = tmp_path / "whole.parquet"
    assert main(["embed", "--images", str(images), "--out", str(whole), *MODEL]) == 0

    real, calls = local.embed_shard, []

    def interrupted(embedder, plan, *args):  # the run is stopped while the second shard is embedded
        calls.append(plan.shard)
        if plan.shard == 1:
            raise KeyboardInterrupt
        return real(embedder, plan, *args)

    out = tmp_path / "out" / "feats.parquet"
    monkeypatch.setattr(local, "embed_shard", interrupted)
    assert main(["embed", "--images", str(images), "--out", str(out), *MODEL]) == 130
    staging = tmp_path / "out" / "feats.shards"
    assert calls == [0, 1] and (staging / "embeddings" / "gen" / "shard-00000.done.json").exists()
    assert not out.exists()

    def counted(embedder, plan, *args):
        calls.append(plan.shard)
        return real(embedder, plan, *args)

    calls.clear()
    monkeypatch.setattr(local, "embed_shard", counted)
    capsys.readouterr()
    assert main(["embed", "--images", str(images), "--out", str(out), *MODEL]) == 0
    assert calls == [1, 2]  # shard 0 was kept
    assert "rows read = rows embedded + rows reported: 11 = 10 + 1" in capsys.readouterr().out
    assert not staging.exists()
    ids, cols, meta = _read(out)
    want_ids, want_cols, want_meta = _read(whole)
    assert ids == want_ids and ids == [f"img_{i:05d}.png" for i in range(10)]
    assert cols.keys() == want_cols.keys() and all(np.array_equal(cols[k], want_cols[k]) for k in cols)
    assert {k: v for k, v in meta.items() if k != "errors_file"} == {
        k: v for k, v in want_meta.items() if k != "errors_file"
    }
    assert meta["counts"] == {"rows_read": 11, "rows_embedded": 10, "rows_reported": 1}
    errors = pq.read_table(tmp_path / "out" / "feats.errors.parquet").to_pylist()
    assert errors == pq.read_table(tmp_path / "whole.errors.parquet").to_pylist()
    assert [(e["set"], e["sample_id"], e["status"]) for e in errors] == [("gen", "img_00000x.png", "not_image")]


@pytest.mark.timeout(300)
def test_local_engine_writes_the_ray_engines_shards_and_memray_embed_its_features(ray_local, tmp_path: Path) -> None:
    from memray.ray.runner import RayRunner

    images = _images(tmp_path / "in" / "train", 20)
    inputs = {"train": str(images), "test": str(images), "copy": str(images), "real": str(images)}
    cfg = audit_config(inputs, str(tmp_path / "ray"), resources__shard_rows=8, resources__embed_batch_size=32)
    plans = plan_shards(cfg.train, 8)
    assert [len(p.units) for p in plans] == [8, 8, 5]
    meta, outs = {"job": "engines"}, {"ray": str(tmp_path / "ray"), "local": str(tmp_path / "local")}
    for name, engine in (("ray", RayRunner()), ("local", LocalEngine())):
        stats = engine.embed(cfg, plans, outs[name], meta, "k1", None, None)
        assert stats["rows"] == 21
    assert sorted(p.relative_to(outs["ray"]) for p in Path(outs["ray"]).rglob("*")) == sorted(
        p.relative_to(outs["local"]) for p in Path(outs["local"]).rglob("*")
    )  # the same files: three shards' features, errors and markers, no parts left
    for plan in plans:
        for suffix in (".done.json", ".errors.parquet"):
            ray_file, local_file = (Path(shard_url(outs[k], plan, suffix)) for k in ("ray", "local"))
            read = json.loads if suffix.endswith("json") else None
            if read is not None:
                assert read(ray_file.read_text()) == read(local_file.read_text())
            else:
                assert pq.read_table(ray_file).equals(pq.read_table(local_file))
        ray_ids, ray_cols, ray_meta = _read(Path(shard_url(outs["ray"], plan, ".parquet")))
        got_ids, got_cols, got_meta = _read(Path(shard_url(outs["local"], plan, ".parquet")))
        assert got_ids == ray_ids and got_meta == ray_meta == meta
        assert all(np.array_equal(got_cols[k], ray_cols[k]) for k in ray_cols)

    out = tmp_path / "embed" / "train.parquet"  # memray embed: the audit's shard features, concatenated
    assert main(["embed", "--images", str(images), "--out", str(out), *MODEL]) == 0
    ids, cols, _ = _read(out)
    shards = [_read(Path(shard_url(outs["ray"], plan, ".parquet"))) for plan in plans]
    assert ids == [i for s in shards for i in s[0]]
    assert cols.keys() == shards[0][1].keys() - {"pixels"}  # the audit also keeps pixel space; memray embed does not
    assert all(np.array_equal(cols[k], np.concatenate([s[1][k] for s in shards])) for k in cols)


def test_a_whole_audit_runs_in_process_and_resumes(tmp_path: Path) -> None:
    import pandas as pd

    from memray.job.run import run_job

    cfg = audit_config(make_inputs(tmp_path / "in"), str(tmp_path / "out"))
    first = run_job(cfg, LocalEngine())
    assert first.stats["embed"]["rows"] == 240 + 120 + 90 + 90
    assert [n["node_id"] for n in first.stats["nodes"]] == [local.NODE_ID]
    assert set(first.ct_scores["gen_set"]) == {"copy", "real"} and len(first.ct_scores) == 2 * len(
        [layer for layer in first.stats["layers"] if layer != schema.PIXEL_LAYER]
    )
    again = run_job(cfg, LocalEngine())
    assert again.stats["embed"]["rows"] == 0 and again.stats["resumed"]  # every shard and layer kept
    pd.testing.assert_frame_equal(again.ct_scores, first.ct_scores)
