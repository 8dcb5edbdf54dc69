"""memray.ray.errors: a user error raised in a Ray Data function or a Ray task reaches the command line as one line.

The end-to-end cases run ``memray audit`` in a child process (its own local Ray) with a full disk under one output
folder (:mod:`full_disk`: the kernel's ``ENOSPC`` from ``/dev/full``): in the embedding actors' part files and in
the scoring tasks' fit workspace. Each must exit 2 with one line naming the file and the cause, and no traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from full_disk import full_disk_env, needs_dev_full
from ray.exceptions import UserCodeException

from memray.io.storage import StorageError
from memray.ray.errors import StageError, one_line, user_errors

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "data" / "sample"


def test_user_errors_keep_their_message_and_bugs_stay_wrapped() -> None:
    with pytest.raises(StageError) as err, user_errors():
        raise StorageError("/out/x.parquet: cannot write: no space left on device", "/out/x.parquet")
    err.value.args = (f"{err.value.args[0]}\nFailed to apply UDF transform after 1/1 attempts",)  # as Ray Data does
    back = pickle.loads(pickle.dumps(err.value))  # as Ray carries it to the driver
    assert isinstance(back, ValueError) and isinstance(back, UserCodeException)
    assert str(back) == "/out/x.parquet: cannot write: no space left on device" and back.kind == "StorageError"
    with pytest.raises(UserCodeException) as bug, user_errors():
        raise KeyError("k")
    assert not isinstance(bug.value, ValueError) and isinstance(bug.value.__cause__, KeyError)


def test_one_line_is_the_original_message() -> None:
    from ray.exceptions import RayTaskError

    cause = StorageError("/out/a.npz: cannot write: no space left on device (…)\nsecond line", "/out/a.npz")
    wrapped = RayTaskError("fn", "Traceback (most recent call last):\n  …", cause).as_instanceof_cause()
    assert one_line(wrapped) == "/out/a.npz: cannot write: no space left on device (…)"


@needs_dev_full
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("full", "settings"),
    [
        ("embeddings", []),  # the embedding actors' part files (Ray Data)
        ("fit", ["--set", "ct.block_rows=40"]),  # the scoring tasks' per-block outputs (5 Ray tasks fail)
    ],
)
def test_a_full_disk_under_ray_is_one_line_naming_the_file(tmp_path: Path, full: str, settings: list[str]) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "memray.cli", "audit", "--train", str(S / "train.npz"), "--test",
            str(S / "test.npz"), "--gen", f"g={S / 'heldout_real.npz'}", "--out", str(out), "--model", "test_vit",
            "--random-init", "--set", "embed.model_kwargs.img_size=32", "--set", "resources.actor_num_cpus=0.5",
            "--set", "ct.bootstrap=0", *settings, "--num-cpus", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env = full_disk_env(tmp_path, out / full, env)
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "Unhandled error" not in text, text[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line and "memray" in line]
    assert len(lines) == 1, lines
    pattern = rf"memray audit: error: {re.escape(str(out / full))}/\S+: cannot write: no space left on device " \
              r"\(OSError: \[Errno 28\] No space left on device\); .*"  # fmt: skip
    assert re.fullmatch(pattern, lines[0]), lines[0]
