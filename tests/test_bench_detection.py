"""benchmarks/bench_detection.py, fast: one memorizer and one honest set of a small zoo, audited end to end.

The zoo (``scripts/make_zoo.py --quick`` with larger sets) holds ``copy_mix`` (30% transformed copies of training
images among mixture samples, with per-image ground truth) and ``heldout`` (real images disjoint from T and P:
the ideal generator). The audit runs in process with the bundled encoder, the default views, pixel space and the
relative evidence score.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION_MNIST.exists(), reason="needs the Debian package dataset-fashion-mnist")
SIZES = ["--n-train", "600", "--n-test", "400", "--n-heldout", "300", "--n-gen", "200"]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_detection
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_detection


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, bench) -> tuple[Path, Path, pd.DataFrame]:
    zoo = tmp_path_factory.mktemp("zoo")
    cmd = [sys.executable, str(REPO / "scripts" / "make_zoo.py"), "--out", str(zoo), "--quick", "--seeds", "0",
           "--only", "copy_mix", "heldout", *SIZES]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sets = bench.zoo_sets(zoo)
    out = bench.run_audit(zoo, sets, tmp_path_factory.mktemp("audit") / "run", threads=1)
    return zoo, out, sets


@pytest.mark.timeout(1200)
def test_the_memorizer_is_copying_and_the_held_out_set_is_not(bench, audited) -> None:
    _, out, _ = audited
    flags = bench.flagged_by_method(out, 0.05).set_index("name")
    assert flags.loc["copy_mix-s0", "verdict copying"] and flags.loc["copy_mix-s0", "+ replication"]
    assert not flags.loc["heldout-s0"].any()  # no method flags the ideal generator
    rep = pd.read_parquet(out / "replication.parquet")
    mix = rep[rep.gen_set == "copy_mix-s0"]
    assert (mix.ci_low > 0.05).any()  # 30% copies: the rate's lower bound clears 5% somewhere


@pytest.mark.timeout(1200)
def test_per_image_recall_against_the_ground_truth(bench, audited) -> None:
    """In pixel space (layer −1) most of the 60 transformed copies are found, with their true source, at a low
    false-positive rate on the honest images (independent truth: truth.parquet from the zoo script)."""
    _, out, sets = audited
    img = bench.per_image(out, sets, -1, 0.01)
    assert img["positives"] == 60 and img["negatives"] == 140 + 200
    assert img["recall"] >= 0.4 and img["fpr"] <= 0.02 and img["source"] >= 0.9
