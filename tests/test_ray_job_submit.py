"""The README's cluster path for real: ``ray start --head`` (dashboard + job server), then ``ray job submit`` of
``jobs/audit.py`` with ``--working-dir``; the results land at the config's absolute output path.

The head gets its own ``--temp-dir`` and a free port for every port ``ray start`` takes, so it never meets another
Ray on a shared machine, and it is stopped through its own processes (never ``ray stop``, which stops every Ray on
the machine). The teardown fails the test if any process of that head is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from ray_helpers import audit_config, make_inputs

from memray.config import digest, to_dict
from memray.io import schema
from memray.job.config import load_audit_config, result_dict

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = Path(sys.executable).with_name("ray")  # the venv's `ray`, beside the interpreter running the tests
HEAD_START_TIMEOUT_S = 90.0
HEAD_STOP_TIMEOUT_S = 45.0  # `ray start --block` drains for up to 30 s on SIGTERM, then stops its processes
JOB_TIMEOUT_S = 420.0
WORKER_PORTS = 200  # a contiguous range for the head's worker processes (driver, job supervisor, actors, tasks)
# Never uploaded with the working dir. Ray honours .gitignore as well; this keeps the 6 GB venv out even without it.
UPLOAD_EXCLUDES = [".venv", ".git", "runs", "*.egg-info", ".pytest_cache", ".ruff_cache", "__pycache__"]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in socks]


def _free_port_range(n: int, low: int = 20000, high: int = 32000) -> int:
    """First port of ``n`` consecutive free ports below Linux's ephemeral range (so no outgoing socket takes one)."""
    for _attempt in range(100):
        first = random.randrange(low, high - n)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + n):
                    stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind(("0.0.0.0", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {n} consecutive free ports in [{low}, {high})")


def _get_json(url: str, token: str | None = None) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class RayHead:
    """A running ``ray start --head --block`` process and what it takes to reach and stop it."""

    proc: subprocess.Popen
    temp_dir: str
    dashboard_url: str
    env: dict[str, str]
    log: Path
    token: str | None = None

    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: the ``ray start`` process's descendants, its process group, and anything
        whose command line names the head's unique temp dir (a job's driver runs in a session of its own)."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(self.proc.pid)
            found[leader.pid] = leader
            found.update((c.pid, c) for c in leader.children(recursive=True))
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) == self.proc.pid or any(self.temp_dir in a for a in p.info["cmdline"] or []):
                    found[p.pid] = p
        alive = []
        for p in found.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        return alive

    def stop(self) -> list[str]:
        """SIGTERM ``ray start --block`` (it stops its own processes), SIGKILL whatever outlives it; returns the
        command lines of processes still alive afterwards (none expected)."""
        procs = self.processes()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=HEAD_STOP_TIMEOUT_S)
        _gone, alive = psutil.wait_procs(procs, timeout=5)
        for p in {*alive, *self.processes()}:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        psutil.wait_procs(procs, timeout=10)
        left = []
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                left.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
        return left

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _start_head(log: Path, token: str | None = None) -> RayHead:
    """Start a 2-CPU head with the dashboard on free ports; return once its job server answers.

    With ``token``: token authentication on (``RAY_AUTH_MODE=token``, the token in ``RAY_AUTH_TOKEN``), and a home
    folder of its own beside ``log``, so that no ``~/.ray/auth_token`` of this machine takes part."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
        RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # nothing to drain on a test head: stop at once, not after 30 s
    )
    if token:
        (log.parent / "home").mkdir(exist_ok=True)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(log.parent / "home"))
    temp_dir = f"/tmp/mrj-{uuid.uuid4().hex[:8]}"  # short: Ray's unix socket paths live under it (108-byte limit)
    gcs, dash, node_mgr, obj_mgr, client, agent_grpc, agent_http, metrics, runtime_env = _free_ports(9)
    first_worker = _free_port_range(WORKER_PORTS)
    cmd = [
        str(RAY_CLI), "start", "--head", "--block", "--disable-usage-stats",
        "--temp-dir", temp_dir, "--num-cpus", "2", "--object-store-memory", "400000000",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--port", str(gcs), "--dashboard-port", str(dash),
        "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
        "--ray-client-server-port", str(client), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--dashboard-agent-listen-port", str(agent_http), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env),
        "--min-worker-port", str(first_worker), "--max-worker-port", str(first_worker + WORKER_PORTS - 1),
    ]  # fmt: skip
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    head = RayHead(proc, temp_dir, f"http://127.0.0.1:{dash}", env, log, token)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if isinstance(_get_json(f"{head.dashboard_url}/api/jobs/", token), list):  # the job server's list of jobs
                return head
        time.sleep(0.5)
    left = head.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)
    raise RuntimeError(f"Ray head did not come up (exit code {proc.poll()}, left {left}); log:\n{head.log_tail()}")


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[RayHead]:
    """A private Ray head with dashboard and job server; stopped afterwards, and no process of it may remain."""
    yield from _head(tmp_path, None)


@pytest.fixture
def ray_token_head(tmp_path: Path) -> Iterator[RayHead]:
    """As :func:`ray_head`, with token authentication on."""
    yield from _head(tmp_path, uuid.uuid4().hex + uuid.uuid4().hex)


def _head(tmp_path: Path, token: str | None) -> Iterator[RayHead]:
    pytest.importorskip(
        "ray.dashboard.optional_deps",
        reason="ray[default] is not installed (pip install -e '.[cluster]'): no dashboard or job server",
    )
    log = tmp_path / "ray_head.log"
    for attempt in range(3):  # a free port can be taken between probing and binding: retry on new ones
        try:
            head = _start_head(log, token)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield head
    finally:
        left = head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not left, f"processes of the test's Ray head still running after stop: {left}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_job_submit_audit_writes_to_absolute_output(ray_head: RayHead, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = audit_config(make_inputs(tmp_path / "in"), str(out))  # absolute input and output paths
    config_path = tmp_path / "audit.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_audit_config(config_path) == cfg  # the YAML is exactly the tiny audit of ray_helpers

    submission_id = f"memray-test-{uuid.uuid4().hex[:8]}"
    submit = [
        str(RAY_CLI), "job", "submit", "--address", ray_head.dashboard_url, "--submission-id", submission_id,
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES}),
        "--", "python", "jobs/audit.py", "--config", str(config_path),
    ]  # fmt: skip
    started = time.monotonic()
    res = subprocess.run(submit, env=ray_head.env, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    took = time.monotonic() - started
    job = _get_json(f"{ray_head.dashboard_url}/api/jobs/{submission_id}")
    assert isinstance(job, dict)
    assert job["status"] == "SUCCEEDED", (
        f"job {job['status']}: {job.get('message')}\n--- ray job submit (rc {res.returncode}, {took:.0f} s):\n"
        f"{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # The work ran on this head (the driver joined it through RAY_ADDRESS): the job's embedding actor pool is listed
    # by the head's state API, on the driver's node.
    actors = _get_json(f"{ray_head.dashboard_url}/api/v0/actors?limit=1000")["data"]["result"]["result"]
    pool = [a for a in actors if a["job_id"] == job["job_id"] and a["class_name"].startswith("MapWorker(")]
    assert pool and {a["node_id"] for a in pool} == {job["driver_node_id"]}, actors

    scores = pd.read_parquet(out / schema.CT_SCORES_FILE)  # at the absolute path, not in the working-dir copy
    assert set(scores[schema.GEN_SET]) == {"copy", "real"}
    layers = sorted(scores.loc[scores[schema.GEN_SET] == "copy", schema.LAYER])
    assert layers and layers == sorted(scores.loc[scores[schema.GEN_SET] == "real", schema.LAYER])
    assert len(scores) == 2 * len(layers) and np.isfinite(scores[schema.CT]).all()
    run = json.loads((out / schema.RUN_FILE).read_text())
    assert run["job_digest"] == digest(result_dict(cfg))  # written by the job for exactly the submitted config


@pytest.mark.timeout(300)
def test_ray_job_submit_to_a_head_with_token_authentication(ray_token_head: RayHead, tmp_path: Path) -> None:
    """As the README says: the submitting shell needs ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN``);
    the job's driver then joins the head (not a Ray of its own) through :func:`memray.ray.session.init_ray`."""
    probe = "from memray.ray.session import init_ray, started_local; init_ray(); import ray; " \
            "print('joined', ray.cluster_resources()['CPU'], 'own' if started_local() else 'head')"  # fmt: skip
    submit = [str(RAY_CLI), "job", "submit", "--address", ray_token_head.dashboard_url,
              "--runtime-env-json", json.dumps({"env_vars": {"PYTHONPATH": str(REPO)}}),
              "--", "python", "-c", probe]  # fmt: skip
    (tmp_path / "client").mkdir()
    client = {k: v for k, v in ray_token_head.env.items() if not k.startswith("RAY_AUTH")}
    client["HOME"] = str(tmp_path / "client")  # no token file either

    def run(**auth: str) -> subprocess.CompletedProcess:
        env = {**client, **auth}
        return subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)

    for auth in ({}, {"RAY_AUTH_TOKEN": ray_token_head.token}):  # no token; the token but not the mode
        res = run(**auth)
        assert res.returncode != 0 and "Missing authentication token" in res.stderr, (auth, res.stderr[-2000:])
    res = run(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_token_head.token)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "joined 2.0 head" in res.stdout, res.stdout[-2000:]
