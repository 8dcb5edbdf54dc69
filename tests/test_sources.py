"""memray.io.sources: every input format locally, the same tree on a real S3 endpoint, and reading inside Ray tasks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_bytes import png_bytes, tar_bytes

from memray.io.sources import (
    SourceError,
    Unit,
    UnitReadError,
    assign_global_ids,
    check_unique_ids,
    iter_samples,
    list_units,
    read_unit,
)

pytest_plugins = ["pytester"]


def _png(value: int, size: int = 4) -> bytes:
    return png_bytes(value, size, channels=1)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


NPZ_IMAGES = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)


def dataset_files() -> dict[str, bytes]:
    """A mixed dataset, relative path → bytes (hidden and non-image files must be skipped)."""
    return {
        "img/a.png": _png(10),
        "img/sub/B.JPG": _png(20),  # extension matching is case-insensitive (the bytes need not match it)
        "img/empty.png": b"",  # must still be yielded
        "img/.ipynb_checkpoints/a.png": _png(11),
        "img/notes.txt": b"not an image",
        "shards/s0.tar": _tar_bytes({"0001.jpg": _png(30), "0001.cls": b"3", "0002.png": _png(31), "d/0003.jpeg": b""}),
        "table.parquet": _parquet_bytes(pa.table({"image": [_png(40), _png(41)], "label": [1, 2]})),
        "arrays.npz": _npz_bytes(images=NPZ_IMAGES),
    }


EXPECTED_IDS = [
    "arrays.npz/0",
    "arrays.npz/1",
    "arrays.npz/2",
    "img/a.png",
    "img/empty.png",
    "img/sub/B.JPG",
    "shards/s0.tar/0001",
    "shards/s0.tar/0002",
    "shards/s0.tar/d/0003",
    "table.parquet/0",
    "table.parquet/1",
]


def _expected_payloads(files: dict[str, bytes]) -> dict[str, bytes | np.ndarray]:
    tar = {"0001": _png(30), "0002": _png(31), "d/0003": b""}
    out: dict[str, bytes | np.ndarray] = {f"arrays.npz/{i}": NPZ_IMAGES[i] for i in range(3)}
    out |= {k: files[k] for k in ("img/a.png", "img/empty.png", "img/sub/B.JPG")}
    out |= {f"shards/s0.tar/{k}": v for k, v in tar.items()}
    return out | {"table.parquet/0": _png(40), "table.parquet/1": _png(41)}


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _assert_payloads_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == np.uint8
            np.testing.assert_array_equal(got[key], value)
        else:
            assert got[key] == value, key


def test_local_mixed_folder_ids_order_and_bytes(tmp_path: Path) -> None:
    files = dataset_files()
    _write_tree(tmp_path, files)
    units = list_units(str(tmp_path))
    assert [u.kind for u in units] == ["npz", "file", "file", "file", "tar", "parquet"]
    assert [u.url for u in units] == sorted(u.url for u in units)
    assert all(u.root == str(tmp_path) for u in units)
    samples = list(iter_samples(str(tmp_path)))
    assert sorted(sid for sid, _ in samples) == EXPECTED_IDS
    _assert_payloads_equal(dict(samples), _expected_payloads(files))
    assert list_units(str(tmp_path) + "/") == units  # trailing slash does not change ids


def test_listing_reports_skipped_files_and_stamps(tmp_path: Path) -> None:
    _write_tree(tmp_path, dataset_files())
    skipped: list[tuple[str, str]] = []
    units = list_units(str(tmp_path), skipped=skipped)
    assert skipped == [
        (str(tmp_path / "img/.ipynb_checkpoints/a.png"), "hidden"),
        (str(tmp_path / "img/notes.txt"), "extension .txt not an image/.tar/.parquet/.npz"),
    ]
    for unit in units:
        assert (unit.size, unit.stamp) == (Path(unit.url).stat().st_size, str(Path(unit.url).stat().st_mtime_ns))
    again: list[tuple[str, str]] = []
    (unit,) = list_units([str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "a.png")], skipped=again)
    assert again == [] and unit.size == len(_png(10))


def test_unreadable_units_raise_naming_them_after_what_they_yielded(tmp_path: Path) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (unit,) = list_units(str(tmp_path))  # listed although dangling
    assert (unit.name, unit.size, unit.stamp) == ("gone.png", None, "")
    with pytest.raises(UnitReadError, match=r"gone\.png.*FileNotFoundError"):
        list(read_unit(unit))
    npz = _npz_bytes(images=NPZ_IMAGES)
    (tmp_path / "flip.npz").write_bytes(npz[:100] + bytes(255 - b for b in npz[100:200]) + npz[200:])
    with pytest.raises(UnitReadError, match=r"flip\.npz.*BadZipFile"):
        list(read_unit(Unit("npz", str(tmp_path / "flip.npz"), root=str(tmp_path))))
    (tmp_path / "junk.npz").write_bytes(b"\x80\x04K\x01." * 10)  # numpy would offer to unpickle this
    with pytest.raises(UnitReadError, match=r"junk\.npz: unreadable \.npz: not a zip archive") as info:
        list(read_unit(Unit("npz", str(tmp_path / "junk.npz"), root=str(tmp_path))))
    assert "pickle" not in str(info.value)
    whole = _tar_bytes({"k1.png": b"1" * 600, "k2.png": b"2" * 600})  # 512 header + 1024 data each, then 2 zero blocks
    for cut, where in ((1636, "inside a header"), (1536, "where a header should start"), (3072, "header should")):
        (tmp_path / "s.tar").write_bytes(whole[:cut])
        got: list[str] = []
        with pytest.raises(UnitReadError, match=r"s\.tar: unreadable tar shard.*truncated|unexpected end") as info:
            for sid, _ in read_unit(Unit("tar", str(tmp_path / "s.tar"), root=str(tmp_path))):
                got.append(sid)
        assert where in str(info.value) and got == (["s.tar/k1"] if cut < 3072 else ["s.tar/k1", "s.tar/k2"])
    (tmp_path / "s.tar").write_bytes(whole[:3072] + bytes(512))  # one end-of-archive block is enough
    assert [sid for sid, _ in read_unit(Unit("tar", str(tmp_path / "s.tar"), root=str(tmp_path)))] == [
        "s.tar/k1",
        "s.tar/k2",
    ]


def test_single_file_and_several_roots(tmp_path: Path) -> None:
    _write_tree(tmp_path, dataset_files())
    (unit,) = list_units(str(tmp_path / "img" / "a.png"))
    assert list(read_unit(unit)) == [("a.png", _png(10))]
    units = list_units([str(tmp_path / "img"), str(tmp_path / "shards"), str(tmp_path / "img" / "a.png")])
    ids = [sid for u in units for sid, _ in read_unit(u)]
    assert sorted(ids) == sorted(i for i in EXPECTED_IDS if i.startswith(("img/", "shards/")))  # root = common folder
    assert len(units) == 4  # a.png listed twice → once


def test_missing_and_empty_paths_raise_naming_them(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope"):
        list_units(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(SourceError, match="empty"):
        list_units(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match=r"readme\.md"):
        list_units(str(tmp_path / "empty" / "readme.md"))
    with pytest.raises(SourceError):
        list_units([])


def test_tar_several_images_per_key_and_corrupt_shard(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar_bytes({"k1.jpg": b"J1", "k1.seg.png": b"P1", "k2.jpg": b"J2", "k2.seg.png": b"P2"}))
    with pytest.raises(SourceError, match="several image members"):
        list(read_unit(list_units(str(shard))[0]))
    assert list(read_unit(list_units(str(shard), image_column="jpg")[0])) == [("s.tar/k1", b"J1"), ("s.tar/k2", b"J2")]
    assert list(read_unit(list_units(str(shard), image_column="seg.png")[0])) == [
        ("s.tar/k1", b"P1"),
        ("s.tar/k2", b"P2"),
    ]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_tar_bytes({"0001.jpg": b"x" * 5000})[:700])  # truncated inside the member data
    with pytest.raises(SourceError, match=r"bad\.tar"):
        list(read_unit(Unit("tar", str(bad), root=str(tmp_path))))
    bad.write_bytes(b"\x01" * 2048)
    with pytest.raises(SourceError, match=r"bad\.tar"):
        list(read_unit(Unit("tar", str(bad), root=str(tmp_path))))


def test_parquet_columns_struct_ids_and_nulls(tmp_path: Path) -> None:
    hf = pa.table(
        {
            "key": ["x", "y", "z"],
            "picture": pa.array(
                [{"bytes": b"A", "path": "a.png"}, {"bytes": None, "path": "b.png"}, {"bytes": b"C", "path": None}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "png": pa.array([b"1", b"2", b"3"], pa.large_binary()),
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet", row_group_size=2)
    unit = list_units(str(tmp_path / "hf.parquet"))[0]
    assert list(read_unit(unit)) == [("hf.parquet/0", b"1"), ("hf.parquet/1", b"2"), ("hf.parquet/2", b"3")]
    unit = list_units(str(tmp_path / "hf.parquet"), image_column="picture", id_column="key")[0]
    assert list(read_unit(unit)) == [("hf.parquet/x", b"A"), ("hf.parquet/y", b""), ("hf.parquet/z", b"C")]
    with pytest.raises(SourceError, match="no image column"):
        list(read_unit(list_units(str(tmp_path / "hf.parquet"), image_column="nope")[0]))
    with pytest.raises(SourceError, match="expected binary"):
        list(read_unit(list_units(str(tmp_path / "hf.parquet"), image_column="key")[0]))
    pq.write_table(pa.table({"bytes": [b"1", b"2"], "id": ["a", "a"]}), tmp_path / "dup.parquet")
    with pytest.raises(SourceError, match="more than once"):
        list(read_unit(list_units(str(tmp_path / "dup.parquet"), id_column="id")[0]))
    many = pa.table({"img": [bytes([i % 256]) for i in range(600)]})  # crosses read batches
    pq.write_table(many, tmp_path / "many.parquet", row_group_size=100)
    got = list(read_unit(list_units(str(tmp_path / "many.parquet"))[0]))
    assert got == [(f"many.parquet/{i}", bytes([i % 256])) for i in range(600)]


@pytest.mark.parametrize("key", ["images", "x", "arr_0"])
def test_npz_keys_shapes_and_dtype(tmp_path: Path, key: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    (tmp_path / "a.npz").write_bytes(_npz_bytes(**{key: rgb, "labels": np.arange(4)}))
    got = list(read_unit(list_units(str(tmp_path / "a.npz"))[0]))
    assert [sid for sid, _ in got] == [f"a.npz/{i}" for i in range(4)]
    np.testing.assert_array_equal(np.stack([x for _, x in got]), rgb)
    (tmp_path / "f.npz").write_bytes(_npz_bytes(**{key: rgb.astype(np.float32)}))
    with pytest.raises(SourceError, match=r"f\.npz.*float32"):
        list(read_unit(list_units(str(tmp_path / "f.npz"))[0]))
    (tmp_path / "k.npz").write_bytes(_npz_bytes(pixels=rgb))
    with pytest.raises(SourceError, match="pixels"):
        list(read_unit(list_units(str(tmp_path / "k.npz"))[0]))
    assert len(list(read_unit(list_units(str(tmp_path / "k.npz"), image_column="pixels")[0]))) == 4


def test_assign_global_ids_and_uniqueness() -> None:
    ids = sorted(["b/2", "a/1", "c"])
    got = assign_global_ids(ids, offset=1000)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [1000, 1001, 1002])
    np.testing.assert_array_equal(assign_global_ids(ids), assign_global_ids(list(ids)))  # pure function of input
    assert assign_global_ids([]).shape == (0,)
    with pytest.raises(SourceError, match="'a/1'"):
        assign_global_ids(["a/1", "a/1", "b"])
    with pytest.raises(SourceError, match="not sorted"):
        assign_global_ids(["b", "a"])
    with pytest.raises(SourceError, match="x"):
        check_unique_ids(["x", "y", "x"], "train set")


@pytest.mark.timeout(120)
def test_gpu_marker_skips_exactly_when_cuda_is_missing(pytester: pytest.Pytester) -> None:
    import torch

    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    pytester.makepyfile(
        "import pytest\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\ndef test_anywhere():\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)


def test_s3_fixture_put_list_get(s3_bucket: str, s3_endpoint: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.pipe(f"{s3_bucket}/dir/hello.bin", b"\x00hello")
    assert fs.ls(f"{s3_bucket}/dir") == [f"{s3_bucket}/dir/hello.bin"]
    assert fs.cat(f"{s3_bucket}/dir/hello.bin") == b"\x00hello"


def test_s3_same_ids_and_bytes_as_local(s3_bucket: str, tmp_path: Path) -> None:
    import s3fs

    files = dataset_files()
    fs = s3fs.S3FileSystem()  # endpoint from AWS_ENDPOINT_URL, set by the fixture
    for rel, data in files.items():
        fs.pipe(f"{s3_bucket}/data/{rel}", data)
    url = f"s3://{s3_bucket}/data"
    units = list_units(url)
    assert all(u.url.startswith(f"{url}/") for u in units)
    assert [u.kind for u in units] == ["npz", "file", "file", "file", "tar", "parquet"]
    samples = list(iter_samples(url))
    assert [sid for sid, _ in samples] == [sid for u in units for sid, _ in read_unit(u)]  # stable order
    _assert_payloads_equal(dict(samples), _expected_payloads(files))
    _write_tree(tmp_path, files)
    assert [sid for sid, _ in samples] == [sid for sid, _ in iter_samples(str(tmp_path))]
    with pytest.raises(SourceError, match="no-such-bucket-memray"):
        list_units("s3://no-such-bucket-memray/x")
    fs.pipe(f"{s3_bucket}/data/img/new.png", _png(99))  # a second listing sees new objects
    assert len(list_units(url)) == len(units) + 1
    skipped: list[tuple[str, str]] = []
    list_units(url, skipped=skipped)
    assert [(u.removeprefix(url + "/"), why) for u, why in skipped] == [
        ("img/.ipynb_checkpoints/a.png", "hidden"),
        ("img/notes.txt", "extension .txt not an image/.tar/.parquet/.npz"),
    ]
    for unit in units:
        info = fs.info(unit.url)
        assert (unit.size, unit.stamp) == (info["size"], info["ETag"].strip('"'))


@pytest.mark.timeout(180)
def test_read_units_in_ray_tasks_match_in_process(ray_local, tmp_path: Path) -> None:
    _write_tree(tmp_path, dataset_files())
    units = list_units(str(tmp_path))

    @ray_local.remote
    def read(unit: Unit) -> list:
        return list(read_unit(unit))

    remote = [s for part in ray_local.get([read.remote(u) for u in units]) for s in part]
    local = [s for u in units for s in read_unit(u)]
    assert [sid for sid, _ in remote] == [sid for sid, _ in local]
    _assert_payloads_equal(dict(remote), dict(local))
