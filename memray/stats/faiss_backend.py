"""FAISS as memray uses it: imported with the CPU's BLAS kernels, scoped thread/BLAS settings, GPU indexes.

Everything FAISS-specific that is not the search logic lives here, so :mod:`memray.stats.index` (its only user:
k-means runs in numpy, :mod:`memray.stats.kmeans`) gets one configured ``faiss`` module. ``faiss-cpu`` and
``faiss-gpu`` provide the same module; with ``faiss-gpu`` on a process that was given a GPU, flat indexes move to
it (:func:`to_gpu`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# OpenBLAS kernel families and the CPU flags they need, best first (see _import_faiss)
BLAS_CORES = (
    ("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("Haswell", frozenset({"avx2", "fma"})),
)
# FAISS flat search uses BLAS when (queries × dim) reaches this (faiss 1.15 default 128000 = 2000 queries of 64-d;
# its own per-pair kernels are 3-5x slower than BLAS for the 100-2000 queries per cell seen here)
FAISS_BLAS_THRESHOLD = 0
# OpenMP threads of memray's FAISS calls. More threads fight numpy's BLAS workers, which keep spinning for a while
# after each numpy product: on 2 cores scoring 18 sets took 1.5-1.8 s with 2 FAISS threads, 0.4-0.5 s with 1
# (and fitting a layer 1.45 s vs 1.2-1.3 s), numpy's BLAS using both cores either way.
FAISS_THREADS = 1


def blas_core_for(flags: frozenset[str]) -> str | None:
    """OpenBLAS core type (``OPENBLAS_CORETYPE``) for a CPU with these ``/proc/cpuinfo`` flags, or None."""
    return next((core for core, need in BLAS_CORES if need <= flags), None)


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((frozenset(ln.split(":", 1)[1].split()) for ln in fh if ln.startswith("flags")), frozenset())
    except OSError:  # not Linux
        return frozenset()


def _import_faiss():
    """Import faiss with its bundled OpenBLAS on the CPU's vector kernels.

    faiss-cpu wheels bundle OpenBLAS 0.3.15, whose CPU detection predates recent server CPUs (e.g. Sapphire
    Rapids) and falls back to generic SSE3 kernels: FAISS searches and k-means run 3-5x slower. Unless the user
    set ``OPENBLAS_CORETYPE`` or faiss is already loaded, the core type matching the CPU flags is set for the
    import only (numpy's BLAS is loaded before; child processes do not inherit it). Speed only: results do not
    depend on FAISS' float32 rounding (exact float64 re-rank).
    """
    core = None if "faiss" in sys.modules or "OPENBLAS_CORETYPE" in os.environ else blas_core_for(_cpu_flags())
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    finally:
        if core is not None:
            del os.environ["OPENBLAS_CORETYPE"]
    return faiss


faiss = _import_faiss()


_SCOPE_LOCK = threading.Lock()
_SCOPE: list[Any] = []  # [depth, saved threshold] while any thread is inside a scope


@contextmanager
def faiss_scope(blas: bool = True) -> Iterator[None]:
    """Within the block FAISS runs on ``FAISS_THREADS`` threads and, if ``blas``, flat searches of any size use BLAS.

    The OpenMP thread count is the calling thread's own; the BLAS threshold is process-wide, so scopes that overlap in
    several threads share it (the first entered sets it, the last to leave restores it; the first scope's ``blas``
    holds for all). Only the speed of a search depends on them, never its results.
    """
    threads = faiss.omp_get_max_threads()
    with _SCOPE_LOCK:
        if not _SCOPE:
            _SCOPE[:] = [0, faiss.cvar.distance_compute_blas_threshold]
            if blas:
                faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
        _SCOPE[0] += 1
    faiss.omp_set_num_threads(FAISS_THREADS)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
        with _SCOPE_LOCK:
            _SCOPE[0] -= 1
            if _SCOPE[0] == 0:
                faiss.cvar.distance_compute_blas_threshold = _SCOPE[1]
                _SCOPE.clear()


def gpu_available() -> bool:
    """True when this faiss build has GPU support and the process sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: list[Any] = []


def to_gpu(index: faiss.Index) -> faiss.Index:
    """``index`` on the process's first visible GPU when there is one (Ray sets ``CUDA_VISIBLE_DEVICES``), else as is.

    Flat GPU indexes compute the same float32 scores up to rounding; memray's float64 re-rank makes the reported
    neighbours and distances independent of that rounding.
    """
    if not gpu_available():
        return index
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
        log.info("FAISS searches run on the GPU (%d visible)", faiss.get_num_gpus())
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)
