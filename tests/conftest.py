"""Shared fixtures: a real S3 endpoint (moto's server in a subprocess), fresh buckets, local Ray, the gpu marker.

Environment set at import, before any test module imports Ray, timm or boto: no model-hub traffic, no Ray token
authentication or usage stats, no tokenizer thread warnings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
logging.getLogger("werkzeug").setLevel(logging.ERROR)
# The data builders' generators (scripts/synthetic.py) are tested here too; they are not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would make boto/s3fs look elsewhere (a named profile, a real session) while the fake endpoint runs.
S3_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "MEMRAY_S3_ENDPOINT")
S3_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python -m moto.server`` on a free port; return the process and endpoint once it answers HTTP."""
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probing and binding: retry on a new one
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    return proc, endpoint
            except urllib.error.HTTPError:  # any HTTP answer means the server is up
                return proc, endpoint
            except OSError:
                time.sleep(0.1)
        _stop(proc)
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto S3 server did not start (python -m moto.server); its log:\n{last_error}")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a real S3 endpoint (moto server mode, own process) with test credentials set in the environment.

    Sets ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``/``AWS_ENDPOINT_URL`` for the session
    and restores the previous values afterwards; the server process is stopped even when tests fail.
    """
    with tempfile.TemporaryDirectory(prefix="memray-moto-") as tmp:
        proc, endpoint = _start_moto(Path(tmp) / "moto.log")
        saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL", *S3_ENV_CLEARED)}
        try:
            for k in S3_ENV_CLEARED:
                os.environ.pop(k, None)
            os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _stop(proc)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """Name of a fresh, empty bucket on the session's S3 endpoint (unique per test)."""
    import boto3

    name = f"memray-test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):  # best effort: the server's memory goes away with the session anyway
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def ray_local(s3_endpoint: str) -> Iterator[object]:
    """A local Ray (2 CPUs, 512 MiB object store, no dashboard), started on first use; yields the ``ray`` module.

    It depends on the session's S3 endpoint so that the endpoint's variables are in the environment before Ray
    starts: Ray's workers keep the environment they started with, and a Ray started before the first S3 test
    would read ``s3://`` inputs without credentials.

    Function-scoped so that a test which needs another Ray (``ray.cluster_utils.Cluster``) can shut this one down:
    the next test that asks for it starts a fresh one. Ray is shut down at interpreter exit. Tests using this carry
    ``@pytest.mark.timeout(...)``: a starved actor pool hangs without an error.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=512 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is visible (torch is imported only if such tests exist)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
