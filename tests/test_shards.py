"""memray.io.shards: listing stamps and digests for resume, unreadable units as rows, skipped files named, streaming
reads, row-range bookkeeping."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_bytes import png_bytes, tar_bytes

from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.shards import (
    ROW_STATUSES,
    ROWS_UNKNOWN,
    STATUS_OK,
    STATUS_SKIPPED,
    STATUS_UNREADABLE,
    RowRanges,
    ShardPlan,
    contiguous_runs,
    iter_shard,
    plan_shards,
    read_shard,
)


def _png(value: int, size: int = 6) -> bytes:
    return png_bytes(value, size)


def _tar(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members)


def prepare(rgb: np.ndarray) -> np.ndarray:
    """A stand-in for the encoder's preprocessing: (3, 4, 4) filled with the image's mean value."""
    return np.full((3, 4, 4), int(rgb.mean()), np.uint8)


def _spec(root: Path) -> DatasetSpec:
    return DatasetSpec(name="train", urls=(str(root),))


def test_units_carry_size_and_mtime_and_digest_tracks_each_shard(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(_png(10 * i))
    (tmp_path / "s.tar").write_bytes(_tar({"k.png": _png(1)}))
    plans = plan_shards(_spec(tmp_path), shard_rows=2)
    assert [[u.name for u in p.units] for p in plans] == [["0.png", "1.png"], ["2.png", "3.png"], ["4.png"], ["s.tar"]]
    for unit in (u for p in plans for u in p.units):
        st = os.stat(unit.url)
        assert (unit.size, unit.stamp) == (st.st_size, str(st.st_mtime_ns))
    assert plans[0].listing() == [[u.name, "file", u.size, u.stamp] for u in plans[0].units]
    digests = [p.listing_digest() for p in plans]
    assert all(len(d) == 12 and int(d, 16) >= 0 for d in digests) and len(set(digests)) == 4
    assert [p.listing_digest() for p in plan_shards(_spec(tmp_path), shard_rows=2)] == digests  # unchanged folder

    st = os.stat(tmp_path / "2.png")
    os.utime(tmp_path / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: same bytes, 1 ns later
    touched = [p.listing_digest() for p in plan_shards(_spec(tmp_path), shard_rows=2)]
    assert [a == b for a, b in zip(touched, digests, strict=True)] == [True, False, True, True]

    st = os.stat(tmp_path / "s.tar")
    (tmp_path / "s.tar").write_bytes(_tar({"k.png": _png(2)}))  # rewritten: same size, other bytes, same mtime
    os.utime(tmp_path / "s.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    rewritten = [p.listing_digest() for p in plan_shards(_spec(tmp_path), shard_rows=2)]
    assert [a == b for a, b in zip(rewritten, touched, strict=True)] == [True, True, True, False]

    other = ShardPlan("test", plans[0].shard, plans[0].units)  # the set name is part of the digest
    assert other.listing_digest() != plans[0].listing_digest()


def test_plan_json_round_trip_keeps_stamps_and_old_json_loads(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(3))
    (plan,) = plan_shards(_spec(tmp_path), shard_rows=10)
    assert ShardPlan.from_json(plan.to_json()) == plan
    old = json.loads(plan.to_json())
    for unit in old["units"]:
        del unit["size"], unit["stamp"]
    back = ShardPlan.from_json(json.dumps(old))
    assert back.units[0].url == plan.units[0].url and (back.units[0].size, back.units[0].stamp) == (None, "")


def test_s3_listing_stamps_are_etags(s3_bucket: str, s3_endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for i in range(4):
        client.put_object(Bucket=s3_bucket, Key=f"d/{i}.png", Body=_png(i))
    spec = DatasetSpec(name="train", urls=(f"s3://{s3_bucket}/d",))
    plans = plan_shards(spec, shard_rows=2)
    for unit in (u for p in plans for u in p.units):
        head = client.head_object(Bucket=s3_bucket, Key=f"d/{unit.name}")
        assert (unit.size, unit.stamp) == (head["ContentLength"], head["ETag"].strip('"'))
    digests = [p.listing_digest() for p in plans]
    assert [p.listing_digest() for p in plan_shards(spec, shard_rows=2)] == digests
    client.put_object(Bucket=s3_bucket, Key="d/3.png", Body=_png(99))  # rewritten: same size, new ETag
    changed = [p.listing_digest() for p in plan_shards(spec, shard_rows=2)]
    assert [a == b for a, b in zip(changed, digests, strict=True)] == [True, False]


def _parquet_failing_after_first_batch(path: Path) -> int:
    """A Parquet file whose second row group's page header is destroyed; returns the rows readable before it."""
    rows = [_png(i % 200) for i in range(300)]
    pq.write_table(pa.table({"image": rows}), path, row_group_size=256)
    data = bytearray(path.read_bytes())
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    data[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return 256


def test_unreadable_units_become_rows_and_reading_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(5))
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")  # dangling
    (tmp_path / "c.png").write_bytes(_png(7))
    npz = io.BytesIO()
    np.savez(npz, images=np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "flip.npz").write_bytes(npz.getvalue()[:100] + bytes(255 - b for b in npz.getvalue()[100:200]))
    (tmp_path / "junk.npz").write_bytes(b"pickles, maybe" * 10)
    whole = _tar({"k1.png": _png(1), "k2.png": _png(2), "k3.png": _png(3) * 20})
    (tmp_path / "cut.tar").write_bytes(whole[: 512 * 6])  # k1, k2 whole; k3 cut inside its data
    (tmp_path / "header.tar").write_bytes(_tar({"k1.png": _png(1), "k2.png": _png(2)})[:1100])  # cut in a header
    n_pq = _parquet_failing_after_first_batch(tmp_path / "t.parquet")

    plans = plan_shards(_spec(tmp_path), shard_rows=2)
    assert "b.png" in [u.name for p in plans for u in p.units]  # listed, not dropped
    rows = [r for p in plans for r in read_shard(p, prepare, 10**8)]
    by_id = {r[schema.SAMPLE_ID]: r for r in rows}
    assert len(by_id) == len(rows)
    bad = {k: r[schema.STATUS] for k, r in by_id.items() if r[schema.STATUS] != STATUS_OK}
    assert bad == {
        n: STATUS_UNREADABLE for n in ("b.png", "cut.tar", "header.tar", "flip.npz", "junk.npz", "t.parquet")
    }
    for name in bad:
        assert str(tmp_path / name) in by_id[name][schema.ERROR], by_id[name][schema.ERROR]
    assert "FileNotFoundError" in by_id["b.png"][schema.ERROR] and "pickle" not in by_id["junk.npz"][schema.ERROR]
    ok = sorted(k for k, r in by_id.items() if r[schema.STATUS] == STATUS_OK)
    expected_ok = ["a.png", "c.png", "cut.tar/k1", "cut.tar/k2", "header.tar/k1"] + [
        f"t.parquet/{i}" for i in range(n_pq)
    ]
    assert ok == sorted(expected_ok)  # samples yielded before an archive failed stay
    assert len(rows) == len(ok) + len(bad)  # rows read = rows embedded + rows reported
    for plan in plans:
        mine = [r for r in rows if r["shard"] == plan.shard]
        assert [r["row"] for r in mine] == list(range(len(mine))) and {r["shard_rows"] for r in mine} == {len(mine)}
    assert all(r["image"].shape == (3, 4, 4) for r in rows) and all(r[schema.STATUS] in ROW_STATUSES for r in rows)


def test_every_listed_file_is_a_unit_or_skipped(tmp_path: Path) -> None:
    files = {
        "a.png": _png(1),
        "b.JFIF": b"x",
        "README": b"x",
        "notes.txt": b"x",
        ".DS_Store": b"x",
        ".hidden/c.png": _png(2),
        "sub/.d.png": _png(3),
        "sub/e.jpeg": _png(4),
        "sub/f.tar.gz": b"x",
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "sub" / "dangling.png").symlink_to(tmp_path / "nowhere")
    (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)
    skipped: list[tuple[str, str]] = []
    plans = plan_shards(_spec(tmp_path), shard_rows=10, skipped=skipped)
    units = {u.url for p in plans for u in p.units}
    on_disk = {os.path.join(d, f) for d, dirs, fs in os.walk(tmp_path) for f in fs + [x for x in dirs if x == "linked"]}
    assert units | {u for u, _ in skipped} == on_disk and not units & {u for u, _ in skipped}
    reasons = {os.path.relpath(u, tmp_path): why for u, why in skipped}
    assert reasons == {
        "b.JFIF": "extension .jfif not an image/.tar/.parquet/.npz",
        "README": "no extension (not an image/.tar/.parquet/.npz)",
        "notes.txt": "extension .txt not an image/.tar/.parquet/.npz",
        ".DS_Store": "hidden",
        ".hidden/c.png": "hidden",
        "sub/.d.png": "hidden",
        "sub/f.tar.gz": "extension .gz not an image/.tar/.parquet/.npz",
        "linked": "symlink to a folder (not followed)",
    }
    assert [s for s, _ in skipped] == sorted(s for s, _ in skipped)
    assert STATUS_SKIPPED == "skipped" and STATUS_SKIPPED in ROW_STATUSES


_LIST_SKIPPED = """
import json, sys
from memray.io.config import DatasetSpec
from memray.io.shards import plan_shards
skipped = []
plans = plan_shards(DatasetSpec(name="train", urls=(sys.argv[1],)), shard_rows=10, skipped=skipped)
print(json.dumps({"units": [u.name for p in plans for u in p.units], "skipped": skipped}))
"""


@pytest.mark.timeout(120)
def test_unreadable_subfolder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.png").write_bytes(_png(2))
    cmd = [sys.executable, "-c", _LIST_SKIPPED, str(tmp_path)]
    if os.geteuid() == 0:  # root reads any folder: run the listing without the capabilities that allow it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot make a folder unreadable")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    (tmp_path / "locked").chmod(0)
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    finally:
        (tmp_path / "locked").chmod(0o755)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["units"] == ["a.png"]
    assert [(u, why.split(" (")[0]) for u, why in got["skipped"]] == [
        (str(tmp_path / "locked"), "folder cannot be listed")
    ]


def test_iter_shard_streams_rows_and_the_last_row_carries_the_count(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(_png(10 * i) if i != 3 else b"not a png")
    (plan,) = plan_shards(_spec(tmp_path), shard_rows=10)
    calls: list[int] = []

    def counting(rgb: np.ndarray) -> np.ndarray:
        calls.append(int(rgb.mean()))
        return prepare(rgb)

    rows = iter_shard(plan, counting, 10**8)
    first = next(rows)  # the generator holds one row back (to mark the last), never the whole shard
    assert first[schema.SAMPLE_ID] == "0.png" and first["shard_rows"] == ROWS_UNKNOWN and len(calls) == 2
    rest = list(rows)
    assert [r["row"] for r in [first, *rest]] == list(range(6))
    assert [r["shard_rows"] for r in [first, *rest]] == [ROWS_UNKNOWN] * 5 + [6]
    assert rest[2][schema.STATUS] != STATUS_OK and rest[2]["image"].shape == (3, 4, 4) and not rest[2]["image"].any()
    assert [r["image"][0, 0, 0] for r in [first, *rest]] == [0, 10, 20, 0, 40, 50]
    listed = read_shard(plan, prepare, 10**8)  # the list form: same rows, the count on every row
    assert [r[schema.SAMPLE_ID] for r in listed] == [r[schema.SAMPLE_ID] for r in [first, *rest]]
    assert {r["shard_rows"] for r in listed} == {6}
    empty = ShardPlan("train", 0, ())
    assert list(iter_shard(empty, prepare, 10**8)) == [] and read_shard(empty, prepare, 10**8) == []


def test_contiguous_runs_split_by_shard_and_row_gaps() -> None:
    batch = {
        schema.SET: np.array(["b", "a", "a", "a", "a", "b"], dtype=object),
        "shard": np.array([0, 1, 1, 1, 0, 0]),
        "row": np.array([5, 8, 7, 10, 63, 6]),
    }
    runs = contiguous_runs(batch)
    got = [(str(batch[schema.SET][r[0]]), int(batch["shard"][r[0]]), batch["row"][r].tolist()) for r in runs]
    assert got == [("a", 0, [63]), ("a", 1, [7, 8]), ("a", 1, [10]), ("b", 0, [5, 6])]
    assert sorted(int(i) for r in runs for i in r) == list(range(6))


def _rec(first: int, last: int, total: int = ROWS_UNKNOWN) -> dict:
    return {"first": first, "last": last, "shard_rows": total, "name": f"{first}-{last}"}


def test_row_ranges_cover_the_shard_once_in_row_order() -> None:
    r = RowRanges()
    for rec in (_rec(8, 15), _rec(0, 7), _rec(8, 15)):  # out of order, one repeated (a retried batch)
        r.add(rec)
        assert r.cover() is None  # the shard's last row has not arrived: its count is unknown
    r.add(_rec(16, 19, total=20))
    assert [x["name"] for x in r.cover()] == ["0-7", "8-15", "16-19"]

    r = RowRanges()  # another split of the same rows (a batch retried with other boundaries) and a dead end
    for rec in (_rec(0, 3), _rec(0, 5), _rec(4, 9), _rec(10, 11, total=12)):
        r.add(rec)
    assert [x["name"] for x in r.cover()] == ["0-3", "4-9", "10-11"]

    r = RowRanges()  # enough rows counted, but a gap: not complete
    for rec in (_rec(0, 5), _rec(0, 3), _rec(8, 9, total=10)):
        r.add(rec)
    assert r.rows >= 10 and r.cover() is None
    r.add(_rec(6, 7))
    assert [x["name"] for x in r.cover()] == ["0-5", "6-7", "8-9"]
