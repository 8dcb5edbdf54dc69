"""memray/job/run.py: one entry point — checks, then claims, then the runner; the result type imports no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memray.io.claim import ClaimHeldError
from memray.job.config import audit_config_from_dict
from memray.job.preflight import PreflightError
from memray.job.run import run_job

S = Path(__file__).resolve().parents[1] / "data" / "sample"


def _cfg(out: Path, train: str = str(S / "train.npz")):
    return audit_config_from_dict(
        {
            "train": {"name": "train", "urls": [train]},
            "test": {"name": "test", "urls": [str(S / "test.npz")]},
            "generated": [{"name": "copy", "urls": [str(S / "kde_copy_bw8.npz")]}],
            "output": str(out),
            "embed": {"model": "test_vit", "random_init": True, "model_kwargs": {"img_size": 32}},
        }
    )


class Recorder:
    """A runner that records what it was asked to do (where a real runner would start Ray and run the stages)."""

    def __init__(self, out: Path) -> None:
        self.out, self.calls = out, []

    def start(self) -> None:
        self.calls.append("start")

    def run(self, cfg, checked, claims, allow_gallery_mismatch):
        self.calls.append(("run", (self.out / ".memray-claim.json").exists(), sorted(checked.plans)))
        return "result"


def test_checks_then_claims_then_runner(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "out")
    started = []
    assert run_job(_cfg(tmp_path / "out"), rec, on_started=lambda: started.append(list(rec.calls))) == "result"
    assert rec.calls == ["start", ("run", True, ["copy", "test", "train"])]  # the claim is held while it runs
    assert started == [["start"]]
    assert not (tmp_path / "out" / ".memray-claim.json").exists()  # released at the end


def test_a_failed_check_starts_nothing_and_claims_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "out")
    with pytest.raises((PreflightError, ValueError)):
        run_job(_cfg(tmp_path / "out", train=str(tmp_path / "missing")), rec)
    assert rec.calls == [] and not (tmp_path / "out").exists()


def test_a_second_writer_is_refused_before_its_runner_starts(tmp_path: Path) -> None:
    first, second = Recorder(tmp_path / "out"), Recorder(tmp_path / "out")

    def nested(cfg, checked, claims, allow):
        with pytest.raises(ClaimHeldError, match="is being written by"):
            run_job(_cfg(tmp_path / "out"), second)
        return "first"

    first.run = nested
    assert run_job(_cfg(tmp_path / "out"), first) == "first"
    assert second.calls == []


def test_the_result_type_and_the_runner_import_no_ray() -> None:
    imports = "import sys, memray; memray.AuditResult; import memray.ray.runner, memray.job.run"
    code = f"{imports}\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
