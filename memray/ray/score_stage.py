"""The Ray mapper of the scoring stage: each block step and search item of :mod:`memray.stats` as a Ray task.

The loop itself is :func:`memray.job.score.run_scoring` (the core's :func:`memray.stats.layers.score_layers`); this
module only says where its items run: ``mapper(fn, items)`` has builtin ``map`` semantics, so the statistic is the
same code, bit for bit, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import ray

from memray.ray.errors import settle


@ray.remote
def _run_item(fn: Callable[[Any], Any], item: object) -> tuple[str, Any]:
    return ray.get_runtime_context().get_node_id(), fn(item)


class RayMapper:
    """``mapper(fn, items)`` with builtin ``map`` semantics, each item a Ray task; records the nodes used."""

    def __init__(self, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        self.num_gpus = num_gpus  # GPUs per task (0: resources.score_device=auto runs on the CPU)
        self.remote = _run_item.options(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD")
        self.nodes: set[str] = set()

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        fn_ref = ray.put(fn)
        refs = [self.remote.remote(fn_ref, item) for item in items]
        try:
            results = ray.get(refs)
        except Exception:
            settle(refs)  # the other items' failures are not printed as unhandled errors
            raise
        self.nodes.update(node for node, _ in results)
        return [r for _, r in results]
