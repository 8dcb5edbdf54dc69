"""Connecting to Ray: the cluster a job was submitted to, or a local Ray started on this machine."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


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
    kwargs: dict = {"include_dashboard": False}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(**kwargs)
    log.info("started a local Ray: %s", ray.cluster_resources())
