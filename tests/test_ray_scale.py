"""The distributed scoring path on a real local Ray: layout independence, a killed worker, references, embeddings.

Every comparison is exact: the Ray job must give the same numbers as another layout of the same job, as a run
whose scoring worker was killed, as one audit of everything, and as the same audit given its embeddings.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from ray_helpers import audit_config, make_inputs

from memray.io import schema
from memray.io.claim import CLAIM_FILE
from memray.job.keys import fit_key
from memray.job.preflight import preflight
from memray.job.reference import ReferenceMismatchError
from memray.ray.pipeline import run_audit

TABLES = (schema.CT_SCORES_FILE, schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE)
BLOCKS = {"ct__block_rows": 50}  # 240 training rows → 5 global row blocks: the reductions really merge


def _tables(out: Path, gen_set: str | None = None) -> dict[str, pd.DataFrame]:
    out_tables = {}
    for name in TABLES:
        df = pd.read_parquet(out / name)
        if gen_set is not None:
            df = df[df[schema.GEN_SET] == gen_set] if name != schema.NEIGHBORS_FILE else df[
                (df[schema.GEN_SET] == gen_set) | (df[schema.ROLE] == schema.ROLE_TEST)]  # fmt: skip
        out_tables[name] = df.reset_index(drop=True)
    return out_tables


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


class _KillOneScoringTask(threading.Thread):
    """Kills the first Ray worker seen running a scoring task (``ray::_run_item``), once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and not self.killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if any("ray::_run_item" in part for part in proc.info["cmdline"] or []):
                    proc.kill()
                    self.killed.append(proc.info["pid"])
                    return
            time.sleep(0.02)


@pytest.mark.timeout(900)
def test_layouts_and_a_killed_scoring_worker_give_identical_tables(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    run_audit(audit_config(inputs, str(tmp_path / "a"), **BLOCKS))
    other = audit_config(
        inputs, str(tmp_path / "b"), resources__shard_rows=32, resources__actors=2, resources__index_task_num_cpus=0.25,
        ct__search_rows=7, **BLOCKS,
    )  # fmt: skip
    run_audit(other)  # other shards, 2 embedding actors, many small search items, more tasks at once
    _assert_same(_tables(tmp_path / "a"), _tables(tmp_path / "b"))

    killer = _KillOneScoringTask()
    killer.start()
    try:
        run_audit(audit_config(inputs, str(tmp_path / "c"), **BLOCKS))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "no scoring task was running to be killed"
    for name in TABLES:  # the retried task gave the same bits as the clean run
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


@pytest.mark.timeout(900)
def test_reference_reuse_and_embeddings_inputs_equal_one_audit_of_everything(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    ref = tmp_path / "ref"
    whole = audit_config(inputs, str(tmp_path / "all"), **BLOCKS)
    run_audit(whole)

    first = audit_config(inputs, str(tmp_path / "x"), reference=str(ref), **BLOCKS)
    first = type(first)(**{**first.__dict__, "generated": first.generated[:1]})  # only "copy"
    built = run_audit(first)
    assert (ref / "reference.json").exists() and list((ref / "embeddings" / "train").glob("*.done.json"))
    assert built.stats["claims"]["reference"]["role"] == "built"  # claimed while written, then marked finished
    assert list(json.loads((ref / "reference.json").read_text())["fits"]) == [fit_key(first, preflight(first))]
    assert not (tmp_path / "x" / "embeddings" / "train").exists()  # the training embeddings live in the reference
    fits = sorted(ref.glob("fit/*/layer_*/fit.npz"))
    assert len(fits) == 6 + 1  # the six layers and pixel space
    stamps = [p.stat().st_mtime_ns for p in fits]

    second = audit_config(inputs, str(tmp_path / "y"), reference=str(ref), **BLOCKS)
    second = type(second)(**{**second.__dict__, "generated": second.generated[1:]})  # only "real"
    res = run_audit(second)
    assert res.stats["embed"]["rows"] == 90  # only the new generated set was embedded
    assert res.stats["claims"]["reference"] == {"role": "read"}  # a finished reference is read without a claim
    assert not list(tmp_path.glob(f"*/{CLAIM_FILE}"))  # every claim released
    assert [p.stat().st_mtime_ns for p in fits] == stamps  # every layer's fit was reused, not refit
    _assert_same(_tables(tmp_path / "x", "copy"), _tables(tmp_path / "all", "copy"))
    _assert_same(_tables(tmp_path / "y", "real"), _tables(tmp_path / "all", "real"))

    with pytest.raises(ReferenceMismatchError, match=r"embed\.pooling: \['cls'\] → \['mean'\]"):
        preflight(audit_config(inputs, str(tmp_path / "z"), reference=str(ref), embed__pooling=["mean"], **BLOCKS))

    # the same audit given its own embeddings (no images, no embed section) gives the same tables
    emb = {name: {"name": name, "embeddings": [str(tmp_path / "all" / "embeddings" / name)]}
           for name in ("train", "test", "copy", "real")}  # fmt: skip
    byo = audit_config(inputs, str(tmp_path / "byo"), **BLOCKS)
    byo = type(byo)(**{
        **byo.__dict__,
        "train": type(byo.train)(**emb["train"]),
        "test": type(byo.test)(**emb["test"]),
        "generated": tuple(type(g)(**emb[g.name], label=g.label) for g in byo.generated),
        "embed": None,
    })  # fmt: skip
    out = run_audit(byo)
    assert out.stats["embed"]["rows"] == 0
    _assert_same(_tables(tmp_path / "byo"), _tables(tmp_path / "all"))
