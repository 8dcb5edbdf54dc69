"""Bring your own embeddings: listing feature Parquet (files, folders, globs, local and S3), Rows over them,
configs with ``embeddings:`` sets, and ``memray score`` on folders and globs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memray.cli import main
from memray.config import ConfigError, to_dict
from memray.embedding.config import EmbedConfig
from memray.io import schema
from memray.io.embedding_inputs import (
    EmbeddingInputError,
    check_embedding_ids,
    embedding_layers,
    list_embedding_files,
    listing_digest,
    load_feature_input,
    rows_for,
)
from memray.io.features import FeatureSet, write_features
from memray.job.config import AuditConfig, audit_config_from_dict, load_audit_config

RNG = np.random.default_rng(3)


def _shards(folder: Path, x: np.ndarray, sizes: list[int], prefix: str = "s", neg: bool = True) -> np.ndarray:
    """memray's layout: shard-NNNNN.parquet (layer 1 = x, and 3 = -x if ``neg``), .errors.parquet and .done.json;
    returns the sample ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"{prefix}{i:04d}.png" for i in range(len(x))], dtype=object)
    at = 0
    for k, size in enumerate(sizes):
        stem = folder / f"shard-{k:05d}"
        if size:
            sl = slice(at, at + size)
            layers = {1: x[sl], 3: -x[sl]} if neg else {1: x[sl]}
            write_features(f"{stem}.parquet", FeatureSet(ids[sl], layers))
        pq.write_table(pa.table({"sample_id": pa.array([], pa.string())}), f"{stem}.errors.parquet")
        Path(f"{stem}.done.json").write_text(json.dumps({"rows_embedded": size}))
        at += size
    return ids


def test_memray_layout_folder_in_shard_order(tmp_path: Path) -> None:
    x = RNG.normal(size=(30, 4)).astype(np.float32)
    sizes = [5, 0, 7] + [1] * 8 + [10]  # 12 shards: shard-00010 and -00011 sort after -00009; one shard empty
    ids = _shards(tmp_path / "embeddings" / "train", x, sizes)
    files = list_embedding_files(str(tmp_path / "embeddings" / "train"))
    assert [Path(f.url).name for f in files] == [f"shard-{k:05d}.parquet" for k, s in enumerate(sizes) if s]
    assert [f.n for f in files] == [s for s in sizes if s] and embedding_layers(files) == {1: 4, 3: 4}
    rows = rows_for(files, 3)
    np.testing.assert_array_equal(rows.read(0, rows.n), -x)
    assert rows.ids(np.array([29, 0, 12])).tolist() == ids[[29, 0, 12]].tolist()
    assert all(f.stamp for f in files)
    before = listing_digest(files)
    write_features(files[0].url, FeatureSet(ids[:5], {1: x[:5] + 1, 3: x[:5]}))  # rewritten: a new stamp
    assert listing_digest(list_embedding_files(str(tmp_path / "embeddings" / "train"))) != before


def test_natural_order_beyond_five_digits(tmp_path: Path) -> None:
    x = RNG.normal(size=(3, 2)).astype(np.float32)
    for k, name in enumerate(["shard-99999", "shard-100000", "shard-9"]):
        write_features(str(tmp_path / f"{name}.parquet"), FeatureSet(np.array([name], dtype=object), {1: x[k : k + 1]}))
    files = list_embedding_files([str(tmp_path)])
    assert [Path(f.url).stem for f in files] == ["shard-9", "shard-99999", "shard-100000"]


def test_unfinished_shard_is_refused(tmp_path: Path) -> None:
    x = RNG.normal(size=(6, 2)).astype(np.float32)
    _shards(tmp_path, x, [3, 3])
    (tmp_path / "shard-00001.done.json").unlink()
    with pytest.raises(EmbeddingInputError, match=r"shard-00001\.parquet: no shard-00001\.done\.json"):
        list_embedding_files(str(tmp_path))
    with pytest.raises(EmbeddingInputError, match=r"shard-00001\.parquet: no shard-00001\.done\.json"):
        list_embedding_files(str(tmp_path / "shard-*.parquet"))


def test_plain_tables_globs_and_list_columns(tmp_path: Path) -> None:
    x = RNG.normal(size=(9, 3)).astype(np.float32)
    a = pa.table({"sample_id": ["a0", "a1", "a2", "a3"], "layer_5": pa.array([r.tolist() for r in x[:4]])})
    pq.write_table(a, tmp_path / "part-a.parquet")  # list<double>, no markers
    write_features(str(tmp_path / "part-b.parquet"), FeatureSet(np.array(list("bcdef"), dtype=object), {5: x[4:]}))
    (tmp_path / "notes.txt").write_text("not features")
    (tmp_path / ".hidden.parquet").write_bytes(b"junk")
    for spec in (str(tmp_path), str(tmp_path / "part-*.parquet"), [str(tmp_path / "part-b.parquet"), str(tmp_path)]):
        files = list_embedding_files(spec)
        assert [Path(f.url).name for f in files] == ["part-a.parquet", "part-b.parquet"]
        assert embedding_layers(files) == {5: 3}
        np.testing.assert_array_equal(rows_for(files, 5).read(2, 7), x[2:7])
    with pytest.raises(EmbeddingInputError, match=r"no feature \.parquet files"):
        list_embedding_files(str(tmp_path / "*.txt"))
    with pytest.raises(EmbeddingInputError, match="no such file"):
        list_embedding_files(str(tmp_path / "missing"))
    with pytest.raises(EmbeddingInputError, match="not a feature Parquet"):
        list_embedding_files(str(tmp_path / "notes.txt"))


def test_layers_must_agree_naming_the_file(tmp_path: Path) -> None:
    ids = np.array(["p", "q"], dtype=object)
    write_features(str(tmp_path / "a.parquet"), FeatureSet(ids, {1: np.zeros((2, 4), np.float32), 2: np.zeros((2, 4))}))
    write_features(str(tmp_path / "b.parquet"), FeatureSet(ids, {1: np.zeros((2, 4), np.float32)}))
    write_features(str(tmp_path / "c.parquet"), FeatureSet(ids, {1: np.zeros((2, 6), np.float32)}))
    with pytest.raises(EmbeddingInputError, match=r"b\.parquet: no column layer_2, which .*a\.parquet has"):
        embedding_layers(list_embedding_files([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]))
    files = list_embedding_files([str(tmp_path / "b.parquet"), str(tmp_path / "c.parquet")])
    with pytest.raises(EmbeddingInputError, match=r"c\.parquet: layer_1 has dimension 6, .*b\.parquet has 4"):
        embedding_layers(files)
    with pytest.raises(EmbeddingInputError, match=r"c\.parquet: layer_1 has dimension 6"):
        rows_for(files, 1)
    with pytest.raises(EmbeddingInputError, match=r"b\.parquet: no column layer_2"):
        rows_for(files, 2)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "d.parquet")
    with pytest.raises(EmbeddingInputError, match=r"d\.parquet: no 'sample_id' column"):
        list_embedding_files(str(tmp_path / "d.parquet"))


def test_s3_glob_and_prefix(tmp_path: Path, s3_bucket: str) -> None:
    import s3fs

    x = RNG.normal(size=(11, 3)).astype(np.float32)
    ids = _shards(tmp_path / "local", x, [4, 0, 7])
    fs = s3fs.S3FileSystem()
    for p in sorted((tmp_path / "local").iterdir()):
        fs.put(str(p), f"{s3_bucket}/feats/{p.name}")
    for spec in (f"s3://{s3_bucket}/feats/*.parquet", f"s3://{s3_bucket}/feats", f"s3://{s3_bucket}/feats/"):
        files = list_embedding_files(spec)
        assert [f.url.rsplit("/", 1)[1] for f in files] == ["shard-00000.parquet", "shard-00002.parquet"]
        assert all(f.stamp for f in files)
        rows = rows_for(files, 1)
        np.testing.assert_array_equal(rows.read(0, 11), x)
        assert rows.ids(np.array([10, 3])).tolist() == ids[[10, 3]].tolist()
    fs_set = load_feature_input(f"s3://{s3_bucket}/feats/shard-*.parquet")
    assert fs_set.ids.tolist() == ids.tolist() and sorted(fs_set.layers) == [1, 3]


BASE = {
    "train": {"name": "train", "embeddings": ["s3://b/emb/train/"]},
    "test": {"name": "test", "embeddings": "s3://b/emb/test/*.parquet"},
    "generated": [{"name": "g1", "embeddings": ["s3://b/g1.parquet"]}],
    "output": "s3://b/out",
}


def test_config_embeddings_sets() -> None:
    cfg = audit_config_from_dict(BASE)
    assert cfg.embed is None and all(s.is_embeddings for s in cfg.sets)
    assert cfg.test.embeddings == ("s3://b/emb/test/*.parquet",) and cfg.test.urls == ()
    assert audit_config_from_dict(to_dict(cfg)) == cfg
    mixed = audit_config_from_dict({**BASE, "generated": [{"name": "g1", "urls": ["s3://b/g1/"]}]})
    assert mixed.embed == EmbedConfig()  # images to embed: the default embedder, as before
    assert isinstance(audit_config_from_dict({**BASE, "embed": {"batch_size": 8}}).embed, EmbedConfig)
    with pytest.raises(ConfigError, match=r"train\.embeddings=.*: must be empty when urls is given"):
        audit_config_from_dict({**BASE, "train": {"name": "train", "urls": ["x/"], "embeddings": ["y/"]}})
    with pytest.raises(ConfigError, match=r"generated\[0\]\.urls=\(\): must be .* or give embeddings"):
        audit_config_from_dict({**BASE, "generated": [{"name": "g1"}]})
    with pytest.raises(ConfigError, match=r"test\.embeddings=\[''\]: must be a list of strings"):
        audit_config_from_dict({**BASE, "test": {"name": "test", "embeddings": [""]}})
    with pytest.raises(ConfigError, match=r"train\.image_column='img': must be null when the set is given as emb"):
        audit_config_from_dict({**BASE, "train": {"name": "train", "embeddings": ["y/"], "image_column": "img"}})


def test_config_file_resolves_relative_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    import yaml

    data = {**BASE, "train": {"name": "train", "embeddings": ["emb/train"]}, "output": "out"}
    data["generated"] = [{"name": "g1", "embeddings": ["emb/g1/*.parquet"]}]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    cfg = load_audit_config(tmp_path / "job.yaml")
    assert isinstance(cfg, AuditConfig)
    assert cfg.train.embeddings == (str(tmp_path / "emb" / "train"),)
    assert cfg.generated[0].embeddings == (str(tmp_path / "emb" / "g1" / "*.parquet"),)


@pytest.mark.timeout(180)
def test_score_command_on_a_folder_and_a_glob_equals_single_files(tmp_path: Path) -> None:
    centres = RNG.normal(scale=8, size=(4, 10))
    data = {k: centres[RNG.integers(0, 4, n)] + RNG.normal(size=(n, 10)) for k, n in (("train", 800), ("test", 300))}
    data["copies"] = data["train"][:200] + 0.01 * RNG.normal(size=(200, 10))  # copies of training samples
    whole = {}
    for name in ("train", "test", "copies"):
        x = data[name].astype(np.float32)
        ids = np.array([f"{name}-{i:04d}.png" for i in range(len(x))], dtype=object)
        whole[name] = tmp_path / f"{name}.parquet"
        write_features(str(whole[name]), FeatureSet(ids, {1: x}))
    _shards(tmp_path / "train_dir", data["train"].astype(np.float32), [300, 0, 250, 250], prefix="train-", neg=False)
    np.testing.assert_array_equal(
        load_feature_input(str(tmp_path / "train_dir")).layers[1], data["train"].astype(np.float32)
    )
    gdir = tmp_path / "gen"
    gdir.mkdir()
    g = data["copies"].astype(np.float32)
    gids = np.array([f"copies-{i:04d}.png" for i in range(len(g))], dtype=object)
    for k, (a, b) in enumerate([(0, 120), (120, 200)]):
        write_features(str(gdir / f"g{k}.parquet"), FeatureSet(gids[a:b], {1: g[a:b]}))
    outs = {}
    for how, train, gen in (("files", whole["train"], whole["copies"]), ("dirs", tmp_path / "train_dir", gdir / "*")):
        outs[how] = tmp_path / f"out-{how}"
        args = ["score", "--train", str(train), "--test", str(whole["test"]), "--gen", f"copier={gen}"]
        assert main([*args, "--mode", "meehan", "--cells", "4", "--out", str(outs[how])]) == 0
    for table in (schema.CT_SCORES_FILE, schema.NEIGHBORS_FILE):
        got, want = (pd.read_parquet(outs[h] / table) for h in ("dirs", "files"))
        pd.testing.assert_frame_equal(got, want)
    scores = pd.read_parquet(outs["dirs"] / schema.CT_SCORES_FILE)
    assert (scores[schema.CT] < -3).all()  # the copies are found through the folder and the glob
    rc = main(["score", "--train", str(whole["train"]), "--test", str(whole["test"]), "--gen", str(gdir / "*"),
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2  # a glob's set must be named


def test_repeated_sample_ids_are_found_within_and_across_files(tmp_path: Path, monkeypatch) -> None:
    x = np.zeros((4, 2), np.float32)
    write_features(str(tmp_path / "a.parquet"), FeatureSet(np.array(["p", "q", "r", "p"], dtype=object), {1: x}))
    write_features(str(tmp_path / "b.parquet"), FeatureSet(np.array(["s", "q", "t", "u"], dtype=object), {1: x}))
    files = list_embedding_files(str(tmp_path))
    with pytest.raises(EmbeddingInputError) as info:
        check_embedding_ids(files, "train")
    text = str(info.value)
    assert text.startswith("set 'train': 2 sample id(s) occur more than once") and "['p', 'q']" in text
    assert f"('p' in {tmp_path / 'a.parquet'})" in text and "\n" not in text
    check_embedding_ids(files[1:], "train")  # b alone repeats nothing

    monkeypatch.setattr(pd.util, "hash_array", lambda ids: np.zeros(len(ids), np.uint64))  # every hash collides
    check_embedding_ids(files[1:], "train")  # ids are compared as strings before anything is refused
    with pytest.raises(EmbeddingInputError, match=r"2 sample id\(s\) occur more than once .*, e\.g\. \['p', 'q'\]"):
        check_embedding_ids(files, "train")
