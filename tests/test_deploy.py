"""deploy/kuberay/rayjob.yaml and the Dockerfile: a RayJob that runs this checkout's job command on the image built
from this Dockerfile, pinned to the constrained Ray version, results in object storage, no secrets."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"
SECRET_NAMES = re.compile(r"(secret|password|passwd|token|access_key|private_key|credential)", re.IGNORECASE)


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def ray_pin() -> str:
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    return re.search(r"^ray==(\S+)$", constraints, re.MULTILINE).group(1)


def image_dir(dockerfile: str) -> str:
    """Where the Dockerfile puts the checkout (its WORKDIR)."""
    return re.search(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE).group(1)


def groups(job: dict) -> list[dict]:
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def containers(job: dict) -> list[dict]:
    return [c for g in groups(job) for c in g["template"]["spec"]["containers"]]


def entrypoint(job: dict, dockerfile: str) -> list[str]:
    """The entrypoint as argv, the image's checkout folder mapped to this checkout."""
    return [a.replace(image_dir(dockerfile), str(REPO)) for a in shlex.split(job["spec"]["entrypoint"])]


def test_a_rayjob_that_deletes_its_cluster(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert "working_dir" not in (yaml.safe_load(spec["runtimeEnvYAML"]) or {})  # the code is in the image


def test_entrypoint_runs_the_checkout_s_audit_job(job: dict, dockerfile: str) -> None:
    argv = entrypoint(job, dockerfile)
    assert argv[0] == "python" and Path(argv[1]) == REPO / "jobs" / "audit.py", argv
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, argv[1], "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr
    from memray.cli import build_parser
    from memray.commands import parse_key_values
    from memray.job.config import load_audit_config

    args = build_parser().parse_args(["audit", *argv[2:]])  # every flag of the entrypoint is one the job takes
    cfg = load_audit_config(args.config, {**parse_key_values(args.set, "--set"), "output": args.output})
    assert cfg.output.startswith("s3://"), cfg.output  # the cluster and its disks are deleted after the job
    gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert cfg.resources.actors * cfg.resources.actor_num_gpus <= gpu["minReplicas"]  # every actor finds a GPU
    worker_cpus = float(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cfg.resources.actor_num_cpus + cfg.resources.read_num_cpus <= worker_cpus


def test_ray_and_image_pinned_to_the_constraints(job: dict, dockerfile: str) -> None:
    from memray import version

    pin = ray_pin()
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pin
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pin)}$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311\$\{VARIANT\}$", dockerfile, re.MULTILINE)
    built = re.search(r"docker build --build-arg VARIANT=-gpu -t (\S+) \.", dockerfile).group(1)
    assert built.endswith(f":{version()}-ray{pin}-py311-gpu"), built
    assert {c["image"] for c in containers(job)} == {built}  # head and workers run the image the Dockerfile builds
    assert built.split(":")[0] in (REPO / "cluster.yaml").read_text()  # the launcher file names it too


def test_dockerfile_installs_with_the_constraints(dockerfile: str) -> None:
    installs = [line for line in dockerfile.splitlines() if re.search(r"\bpip3? install\b", line)]
    assert installs and all("-c requirements/constraints.txt" in line for line in installs), installs
    assert not re.search(r"\bvenv\b|virtualenv", "\n".join(installs))  # the image's own Python
    for path in ("memray/", "jobs/", "requirements/", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}", dockerfile, re.MULTILINE), path
        assert (REPO / path).exists()


def test_gpu_workers_request_one_gpu_each(job: dict) -> None:
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(workers) == 1
    (gpu,) = workers
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    (head,) = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in str(head["resources"])  # a CPU head


def test_credentials_only_from_secrets(job: dict) -> None:
    envs = [e for c in containers(job) for e in c.get("env", [])]
    names = {e["name"] for e in envs}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    for e in envs:
        if SECRET_NAMES.search(e["name"]) or e["name"].startswith("AWS_ACCESS"):
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    text = MANIFEST.read_text()
    assert not re.search(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[=:]\s*\S", text)
    assert "AWS_SECRET_ACCESS_KEY" not in (job["spec"].get("runtimeEnvYAML") or "")
