"""What an audit claims (memray.job.claims), between real processes: its output, a reference it builds, and not a
finished reference it only reads; and `memray audit` refusing a second run into one output before Ray starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_helpers import audit_config

from memray.config import ConfigError, digest, to_dict
from memray.io.claim import CLAIM_FILE, ClaimHeldError
from memray.job.claims import audit_claims
from memray.job.config import result_dict
from memray.job.keys import fit_key
from memray.job.markers import FITS, REFERENCE_FILE

ROOT = Path(__file__).resolve().parents[1]
S = ROOT / "data" / "sample"
INPUTS = {"train": "/data/t", "test": "/data/p", "copy": "/data/c", "real": "/data/r"}
# the preflight's listings and (random-init) weights, for fit keys
CHECKED = types.SimpleNamespace(
    listing=lambda name: [f"{name}/0.png"], weights=None
)  # the preflight's listings, for fit keys
AUDIT = """
import json, sys, types
from memray.job.claims import audit_claims
from memray.job.config import audit_config_from_dict
cfg = audit_config_from_dict(json.loads(sys.argv[1]))
checked = types.SimpleNamespace(listing=lambda name: [f"{name}/0.png"], weights=None)
with audit_claims(cfg, checked) as claims:
    print(json.dumps(claims.record()), flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started; ended at teardown (by their own handles) if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def start_audit(procs: list[subprocess.Popen], cfg) -> dict:
    """A process holding ``audit_claims(cfg)`` (as a running audit does); returns its claims record."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", AUDIT, json.dumps(to_dict(cfg))], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    procs.append(p)
    line = p.stdout.readline()
    assert line, p.communicate(timeout=30)[1]
    return {**json.loads(line), "pid": p.pid}


def finish_reference(cfg) -> None:
    """A reference whose fit of ``cfg`` is complete, as a finished build leaves it."""
    ref = Path(cfg.reference)
    ref.mkdir(parents=True)
    (ref / REFERENCE_FILE).write_text(json.dumps({FITS: {fit_key(cfg, CHECKED): {"layers": [1, 2]}}}))


def test_second_audit_into_one_output_is_refused_naming_the_first(tmp_path: Path, procs) -> None:
    out = str(tmp_path / "runs" / "x")
    first = start_audit(procs, audit_config(INPUTS, out))
    assert first["output"]["pid"] == first["pid"]
    with pytest.raises(ClaimHeldError) as info, audit_claims(audit_config(INPUTS, out), CHECKED):
        pass
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{out} is being written by ")
    assert f"@{socket.gethostname()} pid {first['pid']} since" in msg
    assert f"wait, use another --out, or remove {out}/{CLAIM_FILE} if that run is gone" in msg


def test_second_audit_building_one_reference_is_refused_and_leaves_its_output_unclaimed(tmp_path: Path, procs):
    ref = str(tmp_path / "ref")
    builder = start_audit(procs, audit_config(INPUTS, str(tmp_path / "a"), reference=ref))
    assert builder["reference"]["role"] == "built" and builder["reference"]["pid"] == builder["pid"]
    with pytest.raises(ClaimHeldError) as info, audit_claims(audit_config(INPUTS, str(tmp_path / "b"), reference=ref),
                                                             CHECKED):  # fmt: skip
        pass
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"reference {ref} is being built by ")
    assert f"pid {builder['pid']} since" in msg and "wait, or give another reference" in msg
    assert not (tmp_path / "b" / CLAIM_FILE).exists()  # the refused audit released its output again


def test_two_audits_read_a_finished_reference_at_once_without_claiming_it(tmp_path: Path, procs) -> None:
    ref = str(tmp_path / "ref")
    cfgs = [audit_config(INPUTS, str(tmp_path / name), reference=ref) for name in ("a", "b")]
    finish_reference(cfgs[0])
    other = audit_config(INPUTS, str(tmp_path / "c"), reference=ref, ct__cells=5)  # builds a fit of other settings
    assert start_audit(procs, other)["reference"]["role"] == "built"
    readers = [start_audit(procs, cfg) for cfg in cfgs]  # both hold their claims at the same time
    assert [r["reference"] for r in readers] == [{"role": "read"}, {"role": "read"}]
    assert [r["output"]["pid"] for r in readers] == [p.pid for p in procs[1:]]
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
    assert not any(tmp_path.glob(f"*/{CLAIM_FILE}"))  # every claim released


def test_lease_is_configured_recorded_and_outside_the_result_digest(tmp_path: Path) -> None:
    cfg = audit_config(INPUTS, str(tmp_path / "x"), claim_lease_s=900)
    with audit_claims(cfg, CHECKED) as claims:
        assert json.loads((tmp_path / "x" / CLAIM_FILE).read_text())["lease_s"] == 900.0
        assert claims.record()["output"]["lease_s"] == 900.0
    assert digest(result_dict(cfg)) == digest(result_dict(audit_config(INPUTS, str(tmp_path / "x"))))
    with pytest.raises(ConfigError, match="claim_lease_s=1: must be a finite number >= 5"):
        audit_config(INPUTS, str(tmp_path / "x"), claim_lease_s=1)


@pytest.mark.timeout(240)
def test_cli_refuses_a_second_run_into_one_output_before_starting_ray(tmp_path: Path, procs) -> None:
    out = tmp_path / "runs" / "x"
    first = start_audit(procs, audit_config(INPUTS, str(out)))
    # a run that would succeed (as the README's folder command) if the output were free
    argv = ["audit", "--train", str(S / "train.npz"), "--test", str(S / "test.npz"), "--gen",
            f"g={S / 'gmm_k20.npz'}", "--out", str(out), "--model", "test_vit", "--random-init",
            "--set", "embed.model_kwargs={img_size: 32}", "--set", "resources.actor_num_cpus=0.5",
            "--set", "resources.torch_threads=1", "--num-cpus", "2"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "memray.cli", *argv], capture_output=True, text=True, timeout=200,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"memray audit: error: {out} is being written by "), last
    assert f"pid {first['pid']} since" in last and "or remove" in last
    assert sorted(p.name for p in out.iterdir()) == [CLAIM_FILE, ".memray-claim.lock"]  # nothing else written
    assert "Ray" not in done.stderr  # refused before Ray started
