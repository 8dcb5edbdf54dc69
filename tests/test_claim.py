"""Claims on a folder (memray.io.claim, memray.io.claim_store) between real processes, on local files and on S3.

A holder process takes the claim and keeps it until told to go; the test process (or several contender processes)
then tries to claim the same folder: refused at once naming the holder while it lives, taken over once it is gone
or its lease ran out, and exactly one of several contenders wins a stale claim.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memray.io.claim import (
    CLAIM_FILE,
    ClaimHeldError,
    ClaimLostError,
    ClaimRecord,
    acquire,
    process_alive,
    stale_reason,
)
from memray.io.claim_store import claim_store

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys
from memray.io.claim import acquire
claim = acquire(sys.argv[1], float(sys.argv[2]), renew=sys.argv[3] == "renew")
print("held", claim.record.pid, flush=True)
sys.stdin.readline()
claim.release()
print("released", flush=True)
"""
CONTEND = """
import sys
from memray.io.claim import ClaimHeldError, acquire
try:
    claim = acquire(sys.argv[1], 300.0)
except ClaimHeldError as exc:
    print("refused", exc, flush=True)
    sys.exit(3)
print("won", flush=True)
sys.stdin.readline()
claim.release()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen]]:
    """Processes started by a test; ended at teardown (by their own handles) if still running."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def hold(holders: list[subprocess.Popen], folder: str, lease_s: float = 300.0, renew: bool = True) -> int:
    """Start a process holding the claim on ``folder``; returns its pid once it holds it."""
    p = _spawn(HOLD, folder, str(lease_s), "renew" if renew else "no")
    holders.append(p)
    line = p.stdout.readline()
    assert line.startswith("held"), (line, p.stderr.read() if p.poll() is not None else "")
    return int(line.split()[1])


def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder to claim: a local path, or a prefix in a fresh bucket of the session's S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "runs" / "x")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/x"


def read_record(folder: str) -> ClaimRecord | None:
    got = claim_store(folder).read()
    return None if got is None else ClaimRecord.from_json(got[0])


def test_second_writer_is_refused_at_once_in_one_line_naming_the_holder(folder: str, holders) -> None:
    pid = hold(holders, folder)
    with pytest.raises(ClaimHeldError) as info:
        acquire(folder, 300.0, advice="wait, use another --out")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{folder} is being written by ")
    assert f"@{socket.gethostname()} pid {pid} since " in msg and "expires in" in msg
    assert f"wait, use another --out, or remove {folder}/{CLAIM_FILE} if that run is gone" in msg
    assert info.value.record.pid == pid
    holders[0].stdin.write("\n")
    holders[0].stdin.flush()
    assert holders[0].stdout.readline().strip() == "released"
    assert read_record(folder) is None  # released: deleted
    with acquire(folder, 300.0) as claim:  # and free for the next run
        assert read_record(folder).run_id == claim.record.run_id
    assert read_record(folder) is None


def test_claim_of_a_killed_process_on_this_host_is_taken_over(folder: str, holders, caplog) -> None:
    pid = hold(holders, folder)
    os.kill(pid, signal.SIGKILL)  # no release: the record stays behind
    holders[0].wait(timeout=30)
    assert read_record(folder).pid == pid
    with acquire(folder, 300.0) as claim:
        assert read_record(folder).run_id == claim.record.run_id and claim.record.pid == os.getpid()
    assert f"process {pid}" in caplog.text and "took over" in caplog.text


def test_expired_lease_of_a_live_holder_is_taken_over(folder: str, holders, caplog) -> None:
    hold(holders, folder, lease_s=1.0, renew=False)  # alive, but its lease is not renewed
    time.sleep(2.5)  # past the lease on the store's clock (S3 times have 1 s resolution)
    with acquire(folder, 300.0) as claim:  # the holder lives: only the expired lease lets this run take over
        assert read_record(folder).run_id == claim.record.run_id
    assert "took over" in caplog.text and "lease expired" in caplog.text


def test_renewals_keep_a_claim_past_its_lease(folder: str) -> None:
    with acquire(folder, 0.6) as claim:  # renewed every 0.2 s by the claim's thread
        deadline = time.monotonic() + 60
        while claim.record.renewed == claim.record.started and time.monotonic() < deadline:
            time.sleep(0.1)
        on_store = read_record(folder)
        assert on_store.run_id == claim.record.run_id and on_store.renewed > on_store.started


def test_lost_claim_is_reported_and_not_deleted(folder: str) -> None:
    claim = acquire(folder, 300.0, renew=False)
    store = claim_store(folder)
    other = ClaimRecord("bob@elsewhere pid 7", "elsewhere", 7, "", claim.record.started, claim.record.renewed, 300.0,
                        "other-run")  # fmt: skip
    assert store.replace(other.to_json(), store.read()[1]) is not None  # another run took it over
    claim.renew()
    with pytest.raises(ClaimLostError, match="taken over by bob@elsewhere pid 7"):
        claim.check()
    claim.release()
    assert read_record(folder).run_id == "other-run"  # the other run's claim stays


def test_exactly_one_of_several_processes_takes_over_a_stale_claim(folder: str, holders) -> None:
    store = claim_store(folder)
    gone = dead_pid()
    stale = ClaimRecord(f"x@{socket.gethostname()} pid {gone}", socket.gethostname(), gone, "", "2026-01-01T00:00:00Z",
                        "2026-01-01T00:00:00Z", 300.0, "stale-run")  # fmt: skip
    assert store.create(stale.to_json()) is not None
    procs = [_spawn(CONTEND, folder) for _ in range(3)]
    holders.extend(procs)
    firsts = [p.stdout.readline().strip() for p in procs]  # each has decided once it printed
    assert sum(line == "won" for line in firsts) == 1, firsts
    winner = procs[[line == "won" for line in firsts].index(True)]
    assert all(f"pid {winner.pid}" in line for line in firsts if line != "won")  # the losers name the winner
    assert read_record(folder).pid == winner.pid
    winner.stdin.write("\n")
    winner.stdin.flush()
    assert winner.wait(timeout=60) == 0


def test_another_host_s_live_claim_is_respected_and_its_expired_one_taken() -> None:
    now = "2026-12-07T10:00:00.000Z"
    rec = ClaimRecord("bob@elsewhere pid 1", "elsewhere", 1, "", now, now, 300.0, "r")
    assert stale_reason(rec, 5.0, host="here", alive=lambda *a: False) is None  # its pid means nothing here
    assert stale_reason(rec, 301.0, host="here") == "its lease expired 1 s ago"
    assert stale_reason(rec, 5.0, host="elsewhere", alive=lambda *a: False) == "its process 1 on elsewhere is gone"
    assert stale_reason(rec, 5.0, host="elsewhere", alive=lambda *a: True) is None


def test_a_reused_pid_is_not_the_holder() -> None:
    me = ClaimRecord.new(300.0)
    assert process_alive(me.pid, me.proc_start)
    assert not process_alive(me.pid, "1") or not me.proc_start  # same pid, another start time: another process
    assert not process_alive(dead_pid())


def test_a_claim_file_that_is_no_record_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / CLAIM_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{CLAIM_FILE}: not a claim record .*remove it if no run is writing"):
        acquire(str(tmp_path))
    assert json.loads(ClaimRecord.new(5.0).to_json())["lease_s"] == 5.0
