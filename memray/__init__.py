"""memray: memorization audits and model fingerprints for generative image models.

He, Zhao, Bai, Hsieh (2024): the C_T statistic of Meehan et al. (2020) computed at every block of a Vision
Transformer; its curve over layers detects copying and identifies the generating architecture.

The Python API (imported on first use, so ``import memray`` stays light)::

    memray.audit(train=..., test=..., generated={...}, output=...)   # images -> AuditResult (verdicts, report)
    memray.score(train_x, test_x, {"name": gen_x})                   # features -> ScoreResult
    memray.probe(config="jobs/configs/default.yaml")                 # probe sets -> per-layer sensitivity
    memray.fetch_image("data/sample/train.npz#17")                   # a sample's image from its source
    memray.build_report("runs/demo")                                 # (re)write report.html
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
#: The distribution's name (``memray`` on PyPI is Bloomberg's unrelated memory profiler).
DISTRIBUTION = "memray-audit"

_LAZY = {
    "audit": "memray.api",
    "score": "memray.api",
    "probe": "memray.api",
    "AuditResult": "memray.job.result",
    "ScoreResult": "memray.stats.tables",
    "AuditConfig": "memray.job.config",
    "CTConfig": "memray.stats.config",
    "EmbedConfig": "memray.embedding.config",
    "load_audit_config": "memray.job.config",
    "fetch_image": "memray.io.fetch",
    "fetch_by_id": "memray.io.fetch",
    "build_report": "memray.report",
}
__all__ = ["DISTRIBUTION", "__version__", "installed_version", "version", *sorted(_LAZY)]


def installed_version() -> str:
    """The installed ``memray-audit`` distribution's version, ``"unknown"`` from a source tree not installed (what
    result files record: no version is claimed for code that was not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def version() -> str:
    """The installed ``memray-audit`` distribution's version, else :data:`__version__` (an uninstalled tree)."""
    found = installed_version()
    return __version__ if found == "unknown" else found


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
