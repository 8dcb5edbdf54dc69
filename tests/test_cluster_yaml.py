"""cluster.yaml: a valid Ray launcher file, pinned to the project's Ray version, every pip install constrained,
no secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SECRET_KEYS = re.compile(r"(secret|password|passwd|token|access_key|private_key|credential)", re.IGNORECASE)
SECRET_VALUES = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _walk(node: object, path: str = "") -> list[tuple[str, str, object]]:
    """(path, key, leaf value) for every leaf of a parsed YAML tree."""
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            nested = _walk(v, f"{path}.{k}") if isinstance(v, dict | list) else []
            out += [(f"{path}.{k}", str(k), None if nested else v), *nested]
        return out
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _walk(v, f"{path}[{i}]")] if node else []
    return [(path, "", node)]


def _commands(cluster: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    return [c for k in (*keys, "head_start_ray_commands", "worker_start_ray_commands") for c in cluster.get(k) or []]


def test_valid_ray_launcher_config(cluster: dict) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(cluster)  # Ray's own JSON schema and cross-field checks
    assert cluster["cluster_name"] == "memray" and cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p")), f"head should be a CPU instance, got {head}"
    gpu = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["node_config"]["InstanceType"].startswith(("g5.", "g6."))
    assert gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] == 8
    assert cluster["idle_timeout_minutes"] > 0


def test_image_pinned_to_the_constrained_ray_version(cluster: dict) -> None:
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    ray_pin = re.search(r"^ray==(\S+)$", constraints, re.MULTILINE).group(1)
    image = cluster["docker"]["image"]
    assert "2.60.0" in image and image == f"rayproject/ray:{ray_pin}-py311-gpu"
    assert "latest" not in image and "nightly" not in image


def test_every_pip_install_uses_the_constraints_file(cluster: dict) -> None:
    installs = [c for c in _commands(cluster) if re.search(r"\bpip3? install\b", c)]
    assert installs, "expected memray to be installed by setup_commands"
    for cmd in installs:
        assert re.search(r"(-c|--constraint)[ =]requirements/constraints\.txt", cmd), cmd
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert all(f"cd {mount}" in c for c in installs)  # installed from the synced checkout


def test_no_secrets(cluster: dict) -> None:
    leaves = _walk(cluster)
    assert len(leaves) > 20  # the walk reaches the whole tree
    for path, key, value in leaves:
        assert not SECRET_KEYS.search(key), f"{path}: secret-like setting"
        assert not (isinstance(value, str) and SECRET_VALUES.search(value)), f"{path}: looks like a credential"
    assert "ssh_private_key" not in cluster["auth"]
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[=:]", text)
