"""A full disk under one folder, for tests: files created there are opened on Linux's ``/dev/full`` instead.

Every write to ``/dev/full`` fails in the kernel with ``ENOSPC`` ("No space left on device"), so the error memray
sees is the real one, raised where a real full disk raises it (the first write or flush of a file's bytes); only the
choice of the file is made by the test. :func:`fill_disk` does it in this process (pytest's ``monkeypatch`` of
``os.open``); :func:`full_disk_env` in a child process and every Python process it starts (Ray's workers, actors):
a ``sitecustomize`` module on ``PYTHONPATH`` that wraps ``os.open`` the same way at interpreter start.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs Linux's /dev/full")

_SITECUSTOMIZE = """
import os

_FULL = os.environ.get("MEMRAY_TEST_FULL_DIR")
if _FULL:
    _open = os.open

    def _full_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & os.O_CREAT and os.path.abspath(os.fspath(path)).startswith(_FULL):
            return _open("/dev/full", os.O_WRONLY)
        return _open(path, flags, mode, dir_fd=dir_fd)

    os.open = _full_open
"""


def fill_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Files created under ``folder`` (by ``os.open``, as memray's atomic writes do) get ``ENOSPC`` on write."""
    real = os.open
    prefix = str(folder)

    def full_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & os.O_CREAT and os.path.abspath(os.fspath(path)).startswith(prefix):
            return real(str(DEV_FULL), os.O_WRONLY)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", full_open)


def full_disk_env(tmp_path: Path, folder: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child process in which files created under ``folder`` get ``ENOSPC`` on write (Ray workers
    included: they inherit the environment of the Ray the child starts)."""
    site = tmp_path / "full_disk_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "MEMRAY_TEST_FULL_DIR": str(folder)}
