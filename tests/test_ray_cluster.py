"""The audit job on a 2-node Ray cluster (ray.cluster_utils.Cluster): actors placed on both nodes, same result.

What the design guarantees is asserted, not how the scheduler happened to share the work: each node offers one
``embed_slot`` and each embedding actor needs one, so the pool's actors are *placed* on both nodes (read from the
GCS actor table), while which actor embeds how many batches depends on the machine's load (a busy machine can let
one actor take every batch while the other is still starting).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray_helpers import audit_config, make_inputs

from memray.io import schema
from memray.ray.pipeline import run_audit


@pytest.mark.timeout(420)
def test_two_node_cluster_places_actors_on_both_nodes_and_matches_local(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    local = run_audit(audit_config(inputs, str(tmp_path / "local")))
    ray.shutdown()  # leave the local Ray; the next test that asks for ray_local starts a fresh one

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"embed_slot": 1},
            "object_store_memory": 256 * 1024**2,
            "include_dashboard": False,
        },
    )
    try:  # one "embed_slot" per node: the two embedding actors must land on different nodes
        cluster.add_node(num_cpus=1, resources={"embed_slot": 1}, object_store_memory=256 * 1024**2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(node_ids) == 2
        cfg = audit_config(
            inputs,
            str(tmp_path / "cluster"),
            resources__actors=2,
            resources__actor_num_cpus=0.5,
            resources__actor_resources={"embed_slot": 1},
            resources__embed_batch_size=8,
        )
        result = run_audit(cfg)
        assert _embed_actor_nodes() == node_ids  # one actor placed on each node (one embed_slot each)
        assert set(result.stats["embed"]["nodes"]) <= node_ids and result.stats["embed"]["nodes"]
        assert set(result.stats["score"]["nodes"]) <= node_ids and result.stats["score"]["nodes"]
        for name in (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE):
            assert (tmp_path / "cluster" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
        assert local.ct_scores.equals(result.ct_scores)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _embed_actor_nodes() -> set[str]:
    """Node ids of every embedding actor this job created (alive or finished), from the GCS actor table."""
    actors = ray._private.state.actors().values()  # the table `ray list actors` shows, without a dashboard
    return {a["Address"]["NodeID"] for a in actors if "EmbedActor" in a.get("ActorClassName", "")}
