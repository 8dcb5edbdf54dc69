"""memray.job.reference: a reference made from other inputs or settings is refused naming fields and files."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pytest
from ray_helpers import audit_config, sample_images, write_npz, write_pngs

from memray.embedding.embed import make_prepare
from memray.io.config import DatasetSpec
from memray.io.features import FeatureSet, write_features
from memray.job.keys import embed_key
from memray.job.preflight import preflight
from memray.job.reference import ReferenceMismatchError, claim_reference, embeddings_root


def _inputs(root: Path) -> dict[str, str]:
    write_pngs(root / "train", sample_images("train", 40))
    return {
        "train": str(root / "train"),
        "test": write_npz(root / "test.npz", sample_images("test", 20)),
        "copy": write_npz(root / "copy.npz", sample_images("kde_copy_bw8", 20)),
        "real": write_npz(root / "real.npz", sample_images("heldout_real", 20)),
    }


def _refusal(cfg) -> str:
    with pytest.raises(ReferenceMismatchError) as err:
        preflight(cfg)
    return str(err.value)


def test_changed_embed_settings_are_named_as_configured(tmp_path: Path) -> None:
    cfg = audit_config(_inputs(tmp_path / "in"), str(tmp_path / "out"), reference=str(tmp_path / "ref"))
    claim_reference(cfg, preflight(cfg))
    other = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, pooling=("mean",)), max_image_pixels=1000)
    msg = _refusal(other)
    assert "embed.pooling: ['cls'] → ['mean']; max_image_pixels: 89478485 → 1000" in msg, msg
    assert "embed.embed" not in msg and "listing" not in msg


def _features(path: Path, n: int) -> str:
    ids = np.array([f"{path.stem}_{i}" for i in range(n)], dtype=object)
    write_features(str(path), FeatureSet(ids, {1: np.ones((n, 4), np.float32)}))
    return str(path)


def test_changed_embeddings_files_are_named(tmp_path: Path) -> None:
    emb = tmp_path / "emb"
    for name, n in (("a", 10), ("b", 10), ("p", 10), ("g", 10)):
        _features(emb / "train" / f"{name}.parquet" if name in "ab" else emb / f"{name}.parquet", n)
    cfg = audit_config({"train": "-", "test": "-", "copy": "-", "real": "-"}, str(tmp_path / "out"),
                       reference=str(tmp_path / "ref"))  # fmt: skip
    cfg = dataclasses.replace(
        cfg,
        train=DatasetSpec(name="train", embeddings=(str(emb / "train"),)),
        test=DatasetSpec(name="test", embeddings=(str(emb / "p.parquet"),)),
        generated=(DatasetSpec(name="gen", embeddings=(str(emb / "g.parquet"),)),),
        embed=None,
    )
    claim_reference(cfg, preflight(cfg))
    (emb / "train" / "a.parquet").unlink()
    time.sleep(0.01)
    _features(emb / "train" / "b.parquet", 12)  # rewritten
    _features(emb / "train" / "c.parquet", 5)  # new
    msg = _refusal(cfg)
    train = emb / "train"
    assert (f"train set 'train' changed since the reference was made: added {train}/c.parquet; removed "
            f"{train}/a.parquet; changed {train}/b.parquet") in msg, msg  # fmt: skip
    assert "test set 'test'" not in msg


@pytest.mark.timeout(300)
def test_changed_image_files_are_named(ray_local, tmp_path: Path) -> None:
    from memray.ray.embed_stage import run_embedding

    inputs = _inputs(tmp_path / "in")
    cfg = audit_config(inputs, str(tmp_path / "out"), reference=str(tmp_path / "ref"), resources__shard_rows=16)
    checked = preflight(cfg)
    claim_reference(cfg, checked)
    plans = [p for s in (cfg.train, cfg.test) for p in checked.plans[s.name]]
    run_embedding(cfg, plans, embeddings_root(cfg, "train"), {}, make_prepare(cfg.embed), embed_key(cfg))
    assert preflight(cfg)  # unchanged inputs: the reference is accepted
    train = Path(inputs["train"])
    (train / "img_00003.png").unlink()
    time.sleep(0.01)
    (train / "img_00010.png").write_bytes((train / "img_00011.png").read_bytes() + b"\0")  # rewritten
    for name in ("img_00040.png", "img_00041.png"):  # new, past the last shard
        (train / name).write_bytes((train / "img_00000.png").read_bytes())
    msg = _refusal(cfg)
    want = ("train set 'train' changed since the reference was made: added img_00040.png, img_00041.png; removed "
            "img_00003.png; changed img_00010.png")  # fmt: skip
    assert want in msg, msg
    assert not re.search(r"[0-9a-f]{12}' →", msg)  # no digests
