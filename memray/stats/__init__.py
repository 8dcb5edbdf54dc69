"""Distributed-by-construction statistics over global row blocks of the training set (pure numpy/FAISS, no Ray).

Each step is a pure function of its inputs in storage (:mod:`memray.stats.workspace`) run through a ``mapper``
(builtin ``map`` in process, Ray tasks in a job); partial results merge in block order, so results depend only on
the data, ``block_rows`` and the config.

The statistic itself lives here too: the per-layer space (:mod:`~memray.stats.space`), exact search
(:mod:`~memray.stats.index`), C_T (:mod:`~memray.stats.ct`), scoring (:mod:`~memray.stats.score`) and its result tables
(:mod:`~memray.stats.results`).
"""

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from threadpoolctl import threadpool_limits

Mapper = Callable[[Callable, Iterable], Iterable]
"""``mapper(fn, items)`` with builtin ``map`` semantics: where a stage's work items run (``map``, or Ray tasks)."""

PACK_WORK = 1 << 22
"""Work (e.g. training rows × queries) below which consecutive small items share a task: a Ray task costs
milliseconds to schedule whatever it does, so tiny items are run several to a task (results are the same)."""


def _apply_all(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(item) for item in chunk]


def packed_map(
    mapper: Mapper, fn: Callable[[Any], Any], items: Sequence[Any], work: Sequence[float], least: float = PACK_WORK
) -> list[Any]:
    """``list(mapper(fn, items))``, with consecutive items run together until their ``work`` sums to ``least``:
    the same results in the same order, fewer tasks when items are small (large items stay one per task)."""
    chunks: list[list[Any]] = []
    held = least
    for item, w in zip(items, work, strict=True):
        if held >= least:
            chunks.append([])
            held = 0.0
        chunks[-1].append(item)
        held += float(w)
    if len(chunks) == len(items):
        return list(mapper(fn, items))
    return [r for got in mapper(partial(_apply_all, fn), chunks) for r in got]


def local_threads(mapper: Mapper, width: int | None = None) -> Mapper:
    """``mapper`` itself, or for one that runs items in this process (builtin ``map``, or a wrapper of it with a
    true ``in_process``, :class:`memray.stats.device.DeviceMapper`) a mapper that runs up to ``width`` items at once
    in threads (default: the CPUs this process may use), results in item order, with numpy's BLAS on one thread
    meanwhile (the threads are the parallelism; BLAS workers spinning beside them cost a third of the time): for
    steps whose items spend their time in FAISS and numpy calls that release the GIL and use no device backend (the
    top-k rounds)."""
    if mapper is not map and not getattr(mapper, "in_process", False):
        return mapper
    if width is None:
        width = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if width <= 1:
        return map

    def threaded(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(width, thread_name_prefix="memray") as pool:
            return list(pool.map(fn, items))

    return threaded


def inner_threads(mapper: Mapper) -> Mapper:
    """The mapper for the pieces of one of ``mapper``'s items: threads (:func:`local_threads`) when ``mapper`` runs
    items in this process one at a time, builtin ``map`` when it sends them to tasks (a task's pieces run in it)."""
    threads = local_threads(mapper)
    return map if threads is mapper else threads


def run_in_flight(fn: Callable[[Any], Any], items: Sequence[Any], width: int) -> None:
    """``fn(item)`` for every item, up to ``width`` at once in driver threads (each waits on its own tasks, so the
    workers stay busy between one item's small rounds); ``width`` 1: in order, in this thread.

    The first failure in item order is raised once the running items have ended (items not yet started are
    cancelled); on an interrupt the running items are left to the runtime's shutdown."""
    if width <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="memray-item")
    futures = [pool.submit(fn, item) for item in items]
    try:
        for fut in futures:
            fut.result()
    except Exception:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


class ScoreInputError(ValueError):
    """Feature sets that cannot be scored; the message names the file and what to do."""
