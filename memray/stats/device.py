"""Where the scoring's per-block arithmetic runs: numpy on the CPU (the default) or torch on a GPU, float64 either way.

The block steps of the fit and of the query projection (:mod:`memray.stats.pca` moments,
:mod:`memray.stats.kmeans` Lloyd partials, :class:`memray.stats.space.LayerSpace` projection and assignment) ask
:func:`current` for a :class:`TorchBackend`; ``None`` (no backend set) is the numpy path, bit for bit what it
always was. A backend is set for the items of a mapper by :class:`DeviceMapper`, which resolves the configured
``resources.score_device`` inside each task (:func:`resolve`: ``cpu``; ``cuda``; ``auto`` = CUDA when the task's
torch sees a device) and records the devices used. Partials still merge on the CPU in block order.

Agreement with the numpy path (tests/test_stats_device.py): every array float64, moments, projections and Lloyd sums
within a relative 1e-12 (only the order of float64 additions differs: cuBLAS vs OpenBLAS), per-row squared distances
of the objective bit for bit (the same left-to-right sums), cells exactly the same for the same centroids: the BLAS
expansion decides rows whose two nearest centroids are farther apart than its error bound, the rest are recomputed
on the CPU with the numpy path's own formula. The moments' and projection's GEMMs run on fixed-shape chunks of
:data:`TORCH_ROWS` rows (the last one padded with zero rows), so a row's bits do not depend on how many rows follow
it; the default fit and query blocks are multiples of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any, Literal, get_args

import numpy as np

from memray.config import ConfigError

ScoreDevice = Literal["cpu", "auto", "cuda"]
SCORE_DEVICES: tuple[str, ...] = get_args(ScoreDevice)
NUMPY = "cpu"  # the recorded name of the numpy path
TORCH_ROWS = 16384  # rows per fixed-shape GEMM chunk of the moments and the projection (memory, not results)
TORCH_CELLS_ROWS = 1 << 24  # at most this many (row, restart, cell) distances at once in the assignment
EPS64 = float(np.finfo(np.float64).eps)

_CURRENT: ContextVar[TorchBackend | None] = ContextVar("memray_score_backend", default=None)


def current() -> TorchBackend | None:
    """The backend the block arithmetic of this context runs on (``None``: numpy)."""
    return _CURRENT.get()


@contextmanager
def use(backend: TorchBackend | None) -> Iterator[None]:
    """Run the block arithmetic of the ``with`` block on ``backend`` (``None``: numpy)."""
    token = _CURRENT.set(backend)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def cuda_available() -> bool:
    """Whether this process's torch sees a CUDA device (``CUDA_VISIBLE_DEVICES=""``: none, without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve(choice: str) -> TorchBackend | None:
    """The backend of a ``resources.score_device`` value, resolved in the process that computes.

    Raises:
        ConfigError: ``cuda`` where torch sees no CUDA device, or an unknown value.
    """
    if choice not in SCORE_DEVICES:
        raise ConfigError(f"resources.score_device={choice!r}: must be one of {', '.join(SCORE_DEVICES)}")
    if choice == "cpu":
        return None
    if cuda_available():
        return TorchBackend("cuda")
    if choice == "cuda":
        raise ConfigError(
            "resources.score_device=cuda: this task sees no CUDA device (torch.cuda.is_available() is False); "
            "use auto or cpu, or give the scoring tasks a GPU"
        )
    return None


def device_name(backend: TorchBackend | None) -> str:
    """What ``run.json`` records for a backend: ``cpu`` (numpy), ``cuda`` or ``torch-cpu`` (torch on the CPU)."""
    return NUMPY if backend is None else backend.name


def task_device(choice: str, mapper: Any) -> str:
    """The device choice a mapper's tasks resolve: ``auto`` means a GPU the task was given, so a mapper whose tasks
    are given none (``num_gpus == 0``, a Ray mapper without GPUs) runs ``auto`` on the CPU."""
    return NUMPY if choice == "auto" and getattr(mapper, "num_gpus", None) == 0 else choice


def run_on(choice: str, fn: Callable[[Any], Any], item: Any) -> tuple[str, Any]:
    """``fn(item)`` with the block arithmetic on ``resolve(choice)``; returns the device's name and the result."""
    backend = resolve(choice)
    with use(backend):
        return device_name(backend), fn(item)


class DeviceMapper:
    """``mapper(fn, items)`` whose items run their block arithmetic on ``choice`` (resolved inside each item),
    recording in ``devices`` the device names the items used; ``cpu`` passes ``fn`` through unchanged."""

    def __init__(self, mapper: Callable[[Callable, Iterable], Iterable], choice: str) -> None:
        self.mapper, self.choice = mapper, task_device(choice, mapper)
        self.devices: set[str] = set()

    @property
    def in_process(self) -> bool:
        """Whether the wrapped mapper runs items in this process (builtin ``map``)."""
        return self.mapper is map

    @property
    def nodes(self) -> set[str]:
        """The nodes the wrapped mapper recorded (none for builtin ``map``)."""
        return getattr(self.mapper, "nodes", set())

    def _record(self, got: tuple[str, Any]) -> Any:
        self.devices.add(got[0])
        return got[1]

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]:
        if self.choice == NUMPY:
            self.devices.add(NUMPY)
            return self.mapper(fn, items)
        got = self.mapper(partial(run_on, self.choice, fn), items)
        return [self._record(g) for g in got] if isinstance(got, list) else map(self._record, got)


class TorchBackend:
    """The block arithmetic in torch float64 on ``device`` (GPUs compute float64 at a fraction of their float32
    rate: an H100 ≈ 60 TFLOP/s float64 tensor-core GEMMs); numpy float64 arrays in and out, shaped as the numpy
    path's."""

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = "cuda" if self.device.type == "cuda" else f"torch-{self.device.type}"

    def _tensor(self, a: np.ndarray) -> Any:
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:
            a = a.copy()  # torch.from_numpy warns about read-only arrays (memory maps)
        return self.torch.from_numpy(a).to(self.device, dtype=self.torch.float64)

    def _chunks(self, x: np.ndarray, shift: Any) -> Iterator[tuple[int, int, Any]]:
        """``(start, stop, x[start:stop] − shift)`` as float64 tensors of exactly TORCH_ROWS rows (zero-padded)."""
        for start in range(0, len(x), TORCH_ROWS):
            part = self._tensor(x[start : start + TORCH_ROWS]) - shift
            if len(part) < TORCH_ROWS:
                part = self.torch.nn.functional.pad(part, (0, 0, 0, TORCH_ROWS - len(part)))
            yield start, min(start + TORCH_ROWS, len(x)), part

    def moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (d,) and Σ (x − mean)ᵀ(x − mean) (d, d), exactly symmetric, of the rows of ``x`` (m >= 1, d)."""
        t = self.torch
        zero = t.zeros(x.shape[1], dtype=t.float64, device=self.device)
        total = zero.clone()
        for _, _, part in self._chunks(x, zero):
            total += part.sum(dim=0)
        mean = total / len(x)
        acc = t.zeros((x.shape[1], x.shape[1]), dtype=t.float64, device=self.device)
        for _, _, part in self._chunks(x, mean):  # padding rows are zero after the shift
            acc += part.T @ part
        upper = t.triu(acc)
        m2 = upper + t.triu(acc, 1).T  # exactly symmetric: the lower triangle mirrors the upper
        return mean.cpu().numpy(), m2.cpu().numpy()

    def project(self, x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
        """``(x − mean) @ components`` (n, k) float64."""
        mu, comps = self._tensor(mean), self._tensor(components)
        out = np.empty((len(x), components.shape[1]))
        for start, stop, part in self._chunks(x, mu):
            out[start:stop] = (part @ comps)[: stop - start].cpu().numpy()
        return out

    def assign(self, z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """Nearest centroid of each row of ``z`` (m, k) for each restart's centroids (R, cells, k) -> (m, R) int64:
        :func:`memray.stats.kmeans.assign_all`'s rule, the near ties recomputed on the CPU by its formula."""
        t = self.torch
        r_count, cells, k = centroids.shape
        out = np.zeros((len(z), r_count), dtype=np.int64)
        if cells == 1 or not len(z):
            return out
        flat = self._tensor(centroids.reshape(r_count * cells, k))
        csq = (flat * flat).sum(dim=1).reshape(r_count, cells)
        cmax = csq.max(dim=1).values
        step = max(1, TORCH_CELLS_ROWS // (r_count * cells))
        for start in range(0, len(z), step):
            chunk = z[start : start + step]
            zt = self._tensor(chunk)
            zsq = (zt * zt).sum(dim=1)
            approx = (zsq[:, None] - 2.0 * (zt @ flat.T)).reshape(len(zt), r_count, cells) + csq[None]
            two = t.topk(approx, 2, dim=2, largest=False).values
            tol = 8.0 * (k + 4) * EPS64 * (zsq[:, None] + cmax[None, :])
            best = t.argmin(approx, dim=2).cpu().numpy()
            rows, restarts = (v.cpu().numpy() for v in t.nonzero(two[..., 1] - two[..., 0] <= tol, as_tuple=True))
            if len(rows):
                diff = chunk[rows, None, :] - centroids[restarts]
                best[rows, restarts] = np.argmin(np.sum(diff * diff, axis=-1), axis=1)
            out[start : start + len(chunk)] = best
        return out

    def lloyd(
        self, z: np.ndarray, centroids: np.ndarray, sums: bool, objective: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per-restart cell sums (R, cells, k) (zeros unless ``sums``), counts (R, cells) int64 and, if
        ``objective``, each row's squared distance to its cell's centroid (m, R), summed over dimensions left to
        right (the numpy path's bits). Sums are one-hot GEMMs (deterministic, unlike atomic scatter-adds)."""
        t = self.torch
        r_count, cells, k = centroids.shape
        labels = self.assign(z, centroids)
        zt, ct = self._tensor(z), self._tensor(centroids)
        lab = t.from_numpy(labels).to(self.device)
        ids = t.arange(cells, device=self.device)
        out_sums = t.zeros((r_count, cells, k), dtype=t.float64, device=self.device)
        counts = np.zeros((r_count, cells), dtype=np.int64)
        sq = np.zeros((len(z), r_count)) if objective else None
        step = max(1, TORCH_CELLS_ROWS // cells)
        for r in range(r_count):
            counts[r] = np.bincount(labels[:, r], minlength=cells)
            for start in range(0, len(z) if sums else 0, step):
                onehot = (lab[start : start + step, r][None, :] == ids[:, None]).to(t.float64)
                out_sums[r] += onehot @ zt[start : start + step]
            if objective:
                diff = zt - ct[r][lab[:, r]]
                diff = diff * diff
                acc = diff[:, 0].clone()
                for j in range(1, k):
                    acc += diff[:, j]
                sq[:, r] = acc.cpu().numpy()
        return out_sums.cpu().numpy(), counts, sq
