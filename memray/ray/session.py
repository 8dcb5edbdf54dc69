"""Connecting to Ray: the cluster a job was submitted to, or a local Ray started on this machine.

Also the checks that need the connected cluster (enough CPUs/GPUs for the actor pool, before Ray Data starts)
and the description of its nodes (host names, accelerators) recorded in ``run.json``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from memray.job.config import ResourcesConfig

log = logging.getLogger(__name__)
_STARTED_LOCAL = {"value": False}


class CapacityError(ValueError):
    """The cluster cannot run the configured actor pool; the message says which resources to change."""


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``), else start a local Ray.

    A local Ray gets ``num_cpus`` (default: all) and, if given, a capped object store. Ray's own usage stats
    are off unless the user turned them on.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, single-machine Ray: no token file to manage
    # address="local": always a new private Ray, never one that another `ray start` on this machine left running
    kwargs: dict = {"address": "local", "include_dashboard": False}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(**kwargs)
    _STARTED_LOCAL["value"] = True
    log.info("started a local Ray: %s", ray.cluster_resources())


def started_local() -> bool:
    """Whether this process started the Ray it is connected to (no autoscaler, nobody else's cluster)."""
    return _STARTED_LOCAL["value"]


def check_capacity(res: ResourcesConfig, total: dict[str, float] | None = None) -> None:
    """Refuse an actor pool the cluster cannot place, or one that leaves no CPU for the read tasks.

    On 2 CPUs an actor pool that reserves every CPU starves the read tasks and hangs without a word. Skipped
    when ``resources.autoscaling`` says the cluster adds nodes on demand.
    """
    if getattr(res, "autoscaling", False):
        return
    total = dict(ray.cluster_resources()) if total is None else total
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    actor_cpus = res.actors * res.actor_num_cpus
    hint = "; or set resources.autoscaling=true if the cluster's autoscaler adds nodes"
    if actor_cpus + res.read_num_cpus > cpus + 1e-9:
        raise CapacityError(
            f"resources.actors={res.actors} × actor_num_cpus={res.actor_num_cpus} = {actor_cpus:g} CPUs plus "
            f"read_num_cpus={res.read_num_cpus:g} for the readers exceeds the cluster's {cpus:g} CPUs, so the job "
            f"would wait forever: lower resources.actors or resources.actor_num_cpus (e.g. actor_num_cpus="
            f"{max(0.25, (cpus - res.read_num_cpus) / res.actors):.2g}){hint}"
        )
    if res.actors * res.actor_num_gpus > gpus + 1e-9:
        raise CapacityError(
            f"resources.actors={res.actors} × actor_num_gpus={res.actor_num_gpus} GPUs exceeds the cluster's "
            f"{gpus:g} GPUs: lower resources.actors or set resources.actor_num_gpus=0 to embed on CPUs{hint}"
        )
    if res.index_task_num_cpus > cpus + 1e-9:
        raise CapacityError(
            f"resources.index_task_num_cpus={res.index_task_num_cpus} exceeds the cluster's {cpus:g} CPUs{hint}"
        )
    for name, amount in res.actor_resources:
        if float(total.get(name, 0.0)) + 1e-9 < amount * res.actors:
            raise CapacityError(
                f"resources.actor_resources: {res.actors} actor(s) × {name}={amount:g} but the cluster offers "
                f"{total.get(name, 0):g} in all (no node offers {name}={amount:g} if 0): start nodes with "
                f"--resources or change the entry{hint}"
            )


def describe_nodes(node_ids: set[str] | list[str]) -> list[dict[str, Any]]:
    """Host name, IP and accelerator of each Ray node id (the ones that did work), for ``run.json``."""
    info = {n["NodeID"]: n for n in ray.nodes()}
    out = []
    for node_id in sorted(node_ids):
        n = info.get(node_id, {})
        res = n.get("Resources", {}) or {}
        accel = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
        out.append(
            {
                "node_id": node_id,
                "host": n.get("NodeManagerHostname"),
                "ip": n.get("NodeManagerAddress"),
                "gpus": int(res.get("GPU", 0)),
                "accelerator_type": accel[0] if accel else None,
            }
        )
    return out
