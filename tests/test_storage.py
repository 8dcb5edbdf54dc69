"""memray.io.storage: default S3 timeouts/retries, one StorageError per failure against real endpoints, the umask."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from full_disk import fill_disk, needs_dev_full

from memray.io import storage
from memray.io.sources import list_units
from memray.io.storage import StorageError

# Small limits so an endpoint that refuses or never answers fails in seconds (the defaults take ~1-2 minutes).
FAST = {
    "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 2, "mode": "standard"}},
    "retries": 1,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, list[float]]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields (endpoint, accept times)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    stop, accepted, conns = threading.Event(), [], []

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                conns.append(conn)
                accepted.append(time.monotonic())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        for c in conns:
            c.close()
        listener.close()


def test_default_s3_options_are_bounded_and_deep_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("MEMRAY_S3_ENDPOINT", raising=False)
    opts = storage.default_storage_options("s3://b/k")
    assert opts["config_kwargs"]["connect_timeout"] == storage.S3_CONNECT_TIMEOUT_S
    assert opts["config_kwargs"]["read_timeout"] == storage.S3_READ_TIMEOUT_S
    assert opts["config_kwargs"]["retries"] == {"max_attempts": storage.S3_MAX_ATTEMPTS, "mode": "standard"}
    assert opts["retries"] == storage.S3FS_RETRIES and opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9"}
    assert storage.default_storage_options("/local/path") == {} and storage.default_storage_options("gs://b") == {}
    user = {"config_kwargs": {"read_timeout": 7, "retries": {"max_attempts": 9}}, "client_kwargs": {"region_name": "x"}}
    fs, path = storage.filesystem("s3://b/k", {**user, "retries": 4})
    assert path == "b/k" and fs.retries == 4
    assert fs.config_kwargs == {
        "connect_timeout": storage.S3_CONNECT_TIMEOUT_S,
        "read_timeout": 7,
        "retries": {"max_attempts": 9, "mode": "standard"},
    }
    assert fs.client_kwargs == {"endpoint_url": "http://127.0.0.1:9", "region_name": "x"}
    fs, _ = storage.filesystem("s3://b/k", {"config_kwargs": {"read_timeout": 5}})
    assert fs.retries == storage.S3FS_RETRIES and fs.config_kwargs["retries"]["max_attempts"] == storage.S3_MAX_ATTEMPTS


@pytest.mark.timeout(120)
def test_refused_endpoint_gives_one_storage_error_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    opts = {**FAST, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_free_port()}"}}
    url = "s3://bucket-x/dir/run.json"
    calls = {
        "open_url": lambda: storage.open_url(url, "rb", opts),
        "exists": lambda: storage.exists(url, opts),
        "read_json": lambda: storage.read_json(url, opts),
        "write_json": lambda: storage.write_json(url, {"a": 1}, opts),
        "list_units": lambda: list_units("s3://bucket-x/dir", opts),
    }
    for name, call in calls.items():
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        assert time.monotonic() - t0 < 20, name
        msg = str(info.value)
        assert "s3://bucket-x/dir" in msg and "cannot connect" in msg and "AWS_ENDPOINT_URL" in msg, (name, msg)
        assert info.value.unreachable and "\n" not in msg


@pytest.mark.timeout(120)
def test_silent_endpoint_times_out_within_the_configured_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with silent_server() as (endpoint, accepted):
        opts = {**FAST, "client_kwargs": {"endpoint_url": endpoint}}
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            storage.read_json("s3://bucket-x/run.json", opts)
        elapsed = time.monotonic() - t0
        # read_timeout 1 s x 2 attempts per request (a HEAD, then its fallback), plus backoff: seconds, not minutes
        assert 1.0 <= elapsed < 15, elapsed
        assert accepted, "the request never reached the server"
        msg = str(info.value)
        assert "s3://bucket-x/run.json" in msg and "timeout" in msg and "config_kwargs.read_timeout" in msg
        with pytest.raises(StorageError, match="timeout"):
            list_units(f"s3://bucket-x/{'d'}", opts)


@pytest.fixture
def fresh_s3fs() -> Iterator[None]:
    """Forget cached S3 filesystems before and after: a cached client keeps the credentials it was made with."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.timeout(120)
def test_no_credentials_against_a_real_endpoint(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_s3fs: None
) -> None:
    storage.write_json(f"s3://{s3_bucket}/d/a.json", {"x": 1})  # with the fixture's credentials
    with storage.open_output(f"s3://{s3_bucket}/d/img.png") as fh:
        fh.write(b"not decoded here")
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # the client made above holds the fixture's credentials
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    for call in (
        lambda: list_units(f"s3://{s3_bucket}/d", opts),
        lambda: storage.read_json(f"s3://{s3_bucket}/d/a.json", opts),
        lambda: storage.exists(f"s3://{s3_bucket}/d/a.json", opts),
        lambda: storage.write_json(f"s3://{s3_bucket}/d/b.json", {}, opts),
    ):
        with pytest.raises(StorageError) as info:
            call()
        msg = str(info.value)
        assert s3_bucket in msg and "no usable credentials" in msg and "AWS_ACCESS_KEY_ID" in msg, msg
    # botocore refuses to send a request it cannot sign (no request reaches the server); moto itself answers some
    # unsigned requests: an anonymous listing works, an anonymous HEAD of the object is refused with 403
    skipped: list[tuple[str, str]] = []
    assert [u.name for u in list_units(f"s3://{s3_bucket}/d", {**opts, "anon": True}, skipped=skipped)] == ["img.png"]
    assert skipped == [(f"s3://{s3_bucket}/d/a.json", "extension .json not an image/.tar/.parquet/.npz")]
    with pytest.raises(StorageError, match="access denied"):
        storage.read_json(f"s3://{s3_bucket}/d/a.json", {**opts, "anon": True})


def test_missing_object_stays_file_not_found(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_json(f"s3://{s3_bucket}/nope.json")
    with pytest.raises(FileNotFoundError):
        storage.open_url(str(tmp_path / "nope.json"))
    assert not storage.exists(f"s3://{s3_bucket}/nope.json") and not storage.exists(str(tmp_path / "nope"))


def test_local_write_failure_is_one_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"file/out\.json: cannot write"):
        storage.write_json(str(tmp_path / "file" / "out.json"), {})  # parent is a file


@needs_dev_full
def test_a_full_disk_is_one_storage_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_disk(monkeypatch, tmp_path / "full")
    url = str(tmp_path / "full" / "t.parquet")
    with pytest.raises(StorageError) as err, storage.open_output(url) as fh:
        fh.write(b"x" * 100)  # buffered: the disk refuses the bytes when they are flushed
    msg = str(err.value)
    assert msg.startswith(f"{url}: cannot write: no space left on device (OSError: [Errno 28] No space left on device)")
    assert "\n" not in msg and err.value.url == url and not err.value.unreachable
    assert not os.path.exists(url)


def test_storage_error_survives_pickling() -> None:
    err = StorageError("s3://b/k: cannot read: x", "s3://b/k", True)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.url, back.unreachable) == (str(err), "s3://b/k", True) and isinstance(back, ValueError)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        storage.write_json(str(tmp_path / "a.json"), {"a": 1})
        with storage.open_output(str(tmp_path / "sub" / "b.bin")) as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "sub" / "b.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, oct(path.stat().st_mode)
    assert storage.read_json(str(tmp_path / "a.json")) == {"a": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]  # no temporary files left


def test_remove_deletes_a_file_or_a_folder_and_ignores_what_is_missing(tmp_path) -> None:
    from memray.io import storage as st

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "x.bin").write_bytes(b"x")
    (tmp_path / "f.bin").write_bytes(b"f")
    st.remove(str(tmp_path / "f.bin"))
    st.remove(str(tmp_path / "missing"))  # nothing there: nothing to do
    assert not (tmp_path / "f.bin").exists() and (tmp_path / "d" / "e" / "x.bin").exists()
    st.remove(str(tmp_path / "d"), recursive=True)
    assert not (tmp_path / "d").exists()
