"""Tests of memray.stats.faiss_backend: FAISS imported on the CPU's BLAS kernels, scoped settings, GPU placement."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from memray.stats.faiss_backend import (
    FAISS_BLAS_THRESHOLD,
    FAISS_THREADS,
    blas_core_for,
    faiss,
    faiss_scope,
    gpu_available,
    to_gpu,
)


def test_faiss_settings_are_scoped():
    before = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    with faiss_scope():
        assert faiss.cvar.distance_compute_blas_threshold == FAISS_BLAS_THRESHOLD
        assert faiss.omp_get_max_threads() == FAISS_THREADS
    assert (faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()) == before
    with faiss_scope(blas=False):
        assert faiss.cvar.distance_compute_blas_threshold == before[0]
        assert faiss.omp_get_max_threads() == FAISS_THREADS
    assert (faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()) == before


def test_faiss_scopes_overlapping_in_threads_restore_the_settings_once():
    """Thread a enters, b enters, a leaves (b still searching: the scoped settings stay), b leaves (restored).
    The BLAS threshold is process-wide, OpenMP's thread count each thread's own."""
    import threading

    before = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with faiss_scope():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with faiss_scope():
            b_in.set()
            a_out.wait(10)
            seen.append((faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()))

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == [(FAISS_BLAS_THRESHOLD, FAISS_THREADS)]
    assert (faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()) == before


def test_blas_core_for_cpu_flags():
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert blas_core_for(frozenset(avx512 | {"avx2", "fma", "sse2"})) == "SkylakeX"
    assert blas_core_for(frozenset({"avx512f", "avx2", "fma"})) == "Haswell"  # AVX-512 subset too small
    assert blas_core_for(frozenset({"avx", "sse4_2"})) is None


@pytest.mark.timeout(60)
def test_faiss_import_sets_blas_core_for_faiss_only():
    code = (
        "import os, json, memray.stats.faiss_backend as ix\n"
        "from threadpoolctl import threadpool_info\n"
        "cores = {p['filepath']: p.get('architecture') for p in threadpool_info() if p['internal_api'] == 'openblas'}\n"
        "print(json.dumps([ix.blas_core_for(ix._cpu_flags()), 'OPENBLAS_CORETYPE' in os.environ, cores]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    core, leaked, cores = json.loads(out.strip().splitlines()[-1])
    assert not leaked  # set for faiss' import only
    faiss_blas_libs = [arch for path, arch in cores.items() if "faiss" in path]
    if core is not None and faiss_blas_libs:
        assert faiss_blas_libs == [core]


def test_to_gpu_is_identity_without_a_gpu():
    index = faiss.IndexFlatL2(4)
    if not gpu_available():
        assert to_gpu(index) is index


@pytest.mark.gpu
def test_gpu_flat_index_finds_the_same_neighbours_as_cpu():
    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((5000, 64), dtype=np.float32), rng.standard_normal((300, 64), dtype=np.float32)
    cpu = faiss.IndexFlatL2(64)
    cpu.add(base)
    gpu = to_gpu(faiss.IndexFlatL2(64))
    gpu.add(base)
    assert np.array_equal(cpu.search(queries, 1)[1], gpu.search(queries, 1)[1])
