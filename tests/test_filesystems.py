"""memray.io.filesystems: every object-store call ends within its deadline, also against a server that trickles.

A proxy on 127.0.0.1 in front of the S3 test endpoint answers one byte every 0.25 s: each socket read gets bytes well
within botocore's read timeout, so without an overall deadline these calls would hang (pytest's timeout would
fail them); with ``op_timeout_s: 1`` each ends in one line naming the URL, the operation and the deadline.
"""

from __future__ import annotations

import logging

import pytest
from net_helpers import trickling_proxy

from memray.config import ConfigError
from memray.io import filesystems, storage
from memray.io.safetensors_io import WeightsError, read_safetensors_header
from memray.io.sources import SourceError, list_units
from memray.io.storage import StorageError

DEADLINE_S = 1
TRICKLE_S = 0.25  # one byte every 0.25 s: far inside the 15 s read timeout, far too slow for any answer to finish


def _put(bucket: str, names: list[str], data: bytes = b"x") -> None:
    for name in names:
        with storage.open_output(f"s3://{bucket}/{name}") as fh:
            fh.write(data)


def _one_line_deadline_error(exc: BaseException, url: str, action: str) -> None:
    msg = str(exc)
    assert isinstance(exc, StorageError) and exc.unreachable, msg
    assert msg.startswith(f"{url}: cannot {action}: "), msg
    assert f"within {DEADLINE_S} s" in msg and "storage_options.op_timeout_s" in msg and "\n" not in msg, msg


@pytest.mark.timeout(90)
def test_trickling_endpoint_ends_every_call_within_the_deadline(s3_endpoint: str, s3_bucket: str) -> None:
    _put(s3_bucket, ["d/a.png", "d/b.png", "w.safetensors"])
    storage.write_json(f"s3://{s3_bucket}/run.json", {"a": 1})
    with trickling_proxy(s3_endpoint, trickle=True, byte_interval_s=TRICKLE_S) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}, "op_timeout_s": DEADLINE_S}
        prefix, obj = f"s3://{s3_bucket}/d", f"s3://{s3_bucket}/run.json"
        calls = [
            (prefix, "list", lambda: list_units(prefix, opts)),
            (obj, "read", lambda: storage.read_json(obj, opts)),
            (obj, "check", lambda: storage.exists(obj, opts)),
            (obj, "write", lambda: storage.write_json(obj, {"b": 2}, opts)),
        ]
        for url, action, call in calls:
            with pytest.raises(StorageError) as info:
                call()
            _one_line_deadline_error(info.value, url, action)
        weights = f"s3://{s3_bucket}/w.safetensors"
        with pytest.raises(WeightsError, match=r"w.safetensors: cannot read: .*within 1 s .*op_timeout_s"):
            read_safetensors_header(weights, opts)
        assert proxy.answered > 0  # answers did begin: the deadline, not a silent server, ended these calls
    assert storage.read_json(obj) == {"a": 1}  # nothing half-written behind the deadline


@pytest.mark.timeout(90)
def test_a_read_that_starts_fast_and_then_trickles_ends_within_the_deadline(s3_endpoint: str, s3_bucket: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    _put(s3_bucket, ["big.bin"], data)
    url = f"s3://{s3_bucket}/big.bin"
    with trickling_proxy(s3_endpoint, trickle=False, byte_interval_s=TRICKLE_S) as proxy:
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}, "op_timeout_s": DEADLINE_S}
        with storage.open_url(url, "rb", opts, block_size=2**18) as fh:  # reads ahead 256 KiB, not the whole MiB
            assert fh.read(10) == data[:10]
            fh.seek(len(data) // 2)
            proxy.trickle = True
            with pytest.raises(StorageError) as info:
                fh.read()
    _one_line_deadline_error(info.value, url, "read")


@pytest.mark.timeout(90)
def test_deadline_leaves_a_working_endpoint_alone_and_logs_long_listings(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(filesystems, "LIST_PAGE_KEYS", 2)  # several pages from a few objects
    monkeypatch.setattr(filesystems, "LIST_PROGRESS_S", 0.0)  # report after every page
    names = ["d/0.png", "d/1.png", "d/2.png", "d/sub/3.png", "d/notes.txt", "d2/4.png"]
    _put(s3_bucket, names)
    data = bytes(range(256)) * 40_000  # ~10 MiB: more than one read-ahead block of 4 MiB below
    _put(s3_bucket, ["big.bin"], data)
    with trickling_proxy(s3_endpoint, trickle=False) as proxy:  # the proxy itself passes a normal endpoint through
        opts = {"client_kwargs": {"endpoint_url": proxy.endpoint}, "op_timeout_s": 30}
        skipped: list[tuple[str, str]] = []
        with caplog.at_level(logging.INFO, logger="memray.io.filesystems"):
            units = list_units(f"s3://{s3_bucket}/d", opts, skipped=skipped)
        assert [u.name for u in units] == ["0.png", "1.png", "2.png", "sub/3.png"]
        assert all(u.size == 1 and u.stamp for u in units)
        assert skipped == [(f"s3://{s3_bucket}/d/notes.txt", "extension .txt not an image/.tar/.parquet/.npz")]
        progress = [r.getMessage() for r in caplog.records if "objects listed so far" in r.getMessage()]
        assert [m.split(": ")[1].split(" ")[0] for m in progress] == ["2", "4"], progress  # 5 keys: pages of 2, 2, 1
        assert all(m.startswith(f"s3://{s3_bucket}/d: ") for m in progress)
        storage.write_json(f"s3://{s3_bucket}/run.json", {"a": 1}, opts)
        assert storage.read_json(f"s3://{s3_bucket}/run.json", opts) == {"a": 1}
        assert storage.exists(f"s3://{s3_bucket}/run.json", opts) and not storage.exists(f"s3://{s3_bucket}/x", opts)
        with storage.open_url(f"s3://{s3_bucket}/big.bin", "rb", opts, block_size=4 * 2**20) as fh:
            assert fh.read(5) == data[:5]
            fh.seek(len(data) - 7)
            assert fh.read() == data[-7:]
            fh.seek(0)
            assert fh.read() == data
        with pytest.raises(FileNotFoundError):
            storage.open_url(f"s3://{s3_bucket}/missing.bin", "rb", opts)
        with pytest.raises(SourceError, match="no such file, folder, bucket or prefix"):
            list_units(f"s3://{s3_bucket}/nothing-here", opts)


def test_the_deadline_grows_with_the_bytes_a_call_moves() -> None:
    unit = filesystems.DEADLINE_BYTES
    assert filesystems.deadline_s(300, 0) == 300 and filesystems.deadline_s(300, unit) == 300
    assert filesystems.deadline_s(300, unit + 1) == 600 and filesystems.deadline_s(2.5, 10 * unit) == 25


@pytest.mark.parametrize("bad", [0, -1, "abc", True, float("nan"), float("inf"), [3]])
def test_a_bad_deadline_is_one_line_naming_the_option(bad: object) -> None:
    expected = f"storage_options.op_timeout_s={bad!r}: must be a finite number > 0"
    for url in ("s3://bucket/key", "/local/path"):
        with pytest.raises(ConfigError) as info:
            storage.filesystem(url, {"op_timeout_s": bad})
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_default_deadline_applies_to_object_stores_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert filesystems.store("s3://b/k").op_timeout_s == filesystems.OP_TIMEOUT_S
    assert filesystems.store("s3://b/k", {"op_timeout_s": 7}).op_timeout_s == 7
    assert filesystems.store("/tmp/x", {"op_timeout_s": 7}).op_timeout_s is None  # local calls are not cut off
    assert "op_timeout_s" not in filesystems.store("s3://b/k", {"op_timeout_s": 7}).fs.storage_options


@pytest.mark.timeout(90)
def test_the_command_line_ends_with_one_line_and_exit_2(
    s3_endpoint: str, s3_bucket: str, tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from archive_bytes import png_bytes

    from memray.cli import main

    _put(s3_bucket, ["a.png"], png_bytes(7))
    url, out = f"s3://{s3_bucket}/a.png", str(tmp_path / "a.png")
    with trickling_proxy(s3_endpoint, trickle=True, byte_interval_s=TRICKLE_S) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        for timeout, expected in [
            (DEADLINE_S, f"{url}: cannot read: the endpoint did not finish within {DEADLINE_S} s"),
            (0, "storage_options.op_timeout_s=0: must be a finite number > 0"),
        ]:
            assert main(["fetch", url, "-o", out, "--storage-option", f"op_timeout_s={timeout}"]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("memray fetch: error: ") and expected in err and "\n" not in err, err
