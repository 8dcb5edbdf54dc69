"""Probe sets: the seeded training sample, the tars and manifest, byte-identical rebuilds and reuse."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import memray.probes.build as build
from memray.config import FieldError, from_dict
from memray.io.sources import Unit, list_units, read_unit
from memray.probes.build import build_probes, sample_training, write_probe_sets
from memray.probes.config import PROBE_NAMES, ProbesConfig
from memray.probes.transforms import PROBES


def _img(i: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(1000 + i).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _dataset(root: Path, units: int, per_unit: int, bad: int = 0) -> Path:
    """``units`` folders of ``per_unit`` PNGs each (``u<k>/<i>.png``), plus ``bad`` undecodable ``.png`` files."""
    for k in range(units):
        (root / f"u{k}").mkdir(parents=True)
        for i in range(per_unit):
            Image.fromarray(_img(k * per_unit + i)).save(root / f"u{k}" / f"{i:03d}.png")
    for b in range(bad):
        (root / "u0" / f"bad{b}.png").write_bytes(b"not an image")
    return root


def _npz(root: Path, rows: int) -> Path:
    root.mkdir(parents=True)
    np.savez(root / "all.npz", images=np.stack([_img(i, 4) for i in range(rows)]))
    return root


def test_config_validates_names() -> None:
    assert ProbesConfig().probes == PROBE_NAMES and ProbesConfig().n == 500
    assert from_dict(ProbesConfig, {"probes": ["copies", "rotated"], "n": 7}).probes == ("copies", "rotated")
    for bad in ({"probes": ["blurred"]}, {"probes": ["copies", "copies"]}, {"probes": []}, {"n": 0}, {"seed": -1}):
        with pytest.raises(FieldError, match="probes"):
            from_dict(ProbesConfig, bad)
    assert ProbesConfig.params("rotated") == {"max_angle": 30.0}


def test_sample_is_seeded_and_decodes_the_sources(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "train", units=3, per_unit=10)
    a, b = sample_training(str(root), 8, seed=1), sample_training(str(root), 8, seed=1)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == 8
    assert [s for s, _ in a] == sorted(s for s, _ in a)
    assert [s for s, _ in sample_training(str(root), 8, seed=2)] != [s for s, _ in a]
    for sid, img in a:  # the decoded pixels of the named file
        k, i = int(sid.split("/")[0][1:]), int(sid.split("/")[1][:3])
        assert np.array_equal(img, _img(k * 10 + i))


def test_sample_reads_units_only_until_four_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "train", units=6, per_unit=10)
    read: list[str] = []
    real = build.read_unit

    def spy(unit: Unit, storage_options: dict | None = None) -> Iterator[tuple[str, object]]:
        read.append(unit.url)
        return real(unit, storage_options)

    monkeypatch.setattr(build, "read_unit", spy)
    covered: set[str] = set()
    for seed in range(12):
        read.clear()
        ids = [s for s, _ in sample_training(str(root), 5, seed=seed)]
        assert len(read) == 20  # 20 single-image units (files) = 4·n, then stop
        assert {f"{s}" for s in ids} <= {u[len(str(root)) + 1 :] for u in read}
        covered |= {s.split("/")[0] for s in ids}
    assert covered == {f"u{k}" for k in range(6)}  # the unit order is random: every folder gets drawn


def test_sample_is_uniform_within_what_was_read(tmp_path: Path) -> None:
    root = _npz(tmp_path / "npz", rows=100)  # one unit: read whole, reservoir of 2n = 20
    counts = Counter(sid for seed in range(400) for sid, _ in sample_training(str(root), 10, seed=seed))
    assert len(counts) == 100
    assert 15 <= min(counts.values()) and max(counts.values()) <= 70  # Binomial(400, 0.1): 40 ± 4.5σ


def test_sample_skips_undecodable_and_warns_when_short(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _dataset(tmp_path / "train", units=1, per_unit=6, bad=3)
    skipped: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="memray.probes.build"):
        got = sample_training(str(root), 20, seed=0, skipped=skipped)
    assert sorted(s for s, _ in got) == [f"u0/{i:03d}.png" for i in range(6)]
    assert sorted(skipped) == [(f"u0/bad{b}.png", "not_image") for b in range(3)]
    assert "3 undecodable" in caplog.text and "only 6 decodable" in caplog.text


def _members(url: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(url) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_tars_hold_the_transformed_images_and_the_manifest_names_them(tmp_path: Path) -> None:
    samples = sample_training(str(_dataset(tmp_path / "train", units=2, per_unit=5)), 7, seed=0)
    cfg = ProbesConfig(n=7, seed=3)
    sets = write_probe_sets(samples, cfg, str(tmp_path / "out"))
    assert [s.probe for s in sets] == list(PROBE_NAMES)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for ps in sets:
        assert ps.set_name == f"probe_{ps.probe}" and ps.url == str(tmp_path / "out" / f"{ps.probe}.tar")
        assert ps.n == 7 and ps.params == PROBES[ps.probe][1]
        entry = manifest["probes"][ps.probe]
        assert entry["source_ids"] == [s for s, _ in samples] and entry["n"] == 7 and entry["seed"] == 3
        assert entry["params"] == ps.params and entry["set"] == ps.set_name
        data = Path(ps.url).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        members = _members(ps.url)
        assert [m.name for m, _ in members] == [f"{i:06d}.png" for i in range(7)]
        fn, params = PROBES[ps.probe]
        for i, (m, png) in enumerate(members):
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            rng = np.random.default_rng([3, zlib.crc32(ps.probe.encode()), i])  # the documented seed rule
            want = fn(samples[i][1], rng, **params)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), want)  # lossless
    copies = _members(str(tmp_path / "out" / "copies.tar"))
    for (_, png), (_, img) in zip(copies, samples, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), img)
    (unit,) = list_units(str(tmp_path / "out" / "rotated.tar"))  # a dataset memray reads like any other
    assert [sid for sid, _ in read_unit(unit)] == [f"rotated.tar/{i:06d}" for i in range(7)]


def test_same_inputs_give_byte_identical_tars(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "train", units=2, per_unit=6)
    cfg = ProbesConfig(probes=("rotated", "noisy", "copies"), n=5, seed=1)
    build_probes(str(root), cfg, str(tmp_path / "a"))
    build_probes(str(root), cfg, str(tmp_path / "b"))
    for name in (*cfg.probes, "manifest"):
        ext = "json" if name == "manifest" else "tar"
        assert (tmp_path / "a" / f"{name}.{ext}").read_bytes() == (tmp_path / "b" / f"{name}.{ext}").read_bytes()
    other = ProbesConfig(probes=cfg.probes, n=5, seed=2)
    build_probes(str(root), other, str(tmp_path / "c"))
    assert (tmp_path / "a" / "noisy.tar").read_bytes() != (tmp_path / "c" / "noisy.tar").read_bytes()


def _rewritten(out: Path, before: dict[str, int]) -> set[str]:
    """The probes whose tar in ``out`` is new or was replaced since ``before`` (name → inode: every write of a
    tar creates a new file and renames it into place)."""
    return {p.stem for p in out.glob("*.tar") if before.get(p.stem) != p.stat().st_ino}


def _inodes(out: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_ino for p in out.glob("*.tar")}


def test_build_reuses_matching_tars_and_rewrites_the_rest(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "train", units=2, per_unit=6)
    out = tmp_path / "out"
    cfg = ProbesConfig(probes=("flipped", "noisy"), n=4, seed=0)
    first = build_probes(str(root), cfg, str(out))
    before, manifest = _inodes(out), (out / "manifest.json").stat().st_mtime_ns
    assert build_probes(str(root), cfg, str(out)) == first and _rewritten(out, before) == set()
    assert (out / "manifest.json").stat().st_mtime_ns == manifest  # nothing changed, nothing written
    (out / "noisy.tar").unlink()
    before = _inodes(out)
    build_probes(str(root), cfg, str(out))
    assert _rewritten(out, before) == {"noisy"}
    before = _inodes(out)
    build_probes(str(root), ProbesConfig(probes=("flipped", "noisy", "copies"), n=4, seed=0), str(out))
    assert _rewritten(out, before) == {"copies"}
    before = _inodes(out)
    build_probes(str(root), ProbesConfig(probes=("flipped", "noisy"), n=4, seed=1), str(out))  # new seed: new sample
    assert _rewritten(out, before) == {"flipped", "noisy"}
    assert set(json.loads((out / "manifest.json").read_text())["probes"]) == {"flipped", "noisy"}
    before = _inodes(out)
    for f in (root / "u0").iterdir():  # the training set changed: other ids are sampled
        f.rename(f.with_name("x" + f.name))
    build_probes(str(root), ProbesConfig(probes=("flipped", "noisy"), n=4, seed=1), str(out))
    assert _rewritten(out, before) == {"flipped", "noisy"}


def test_build_writes_to_s3(tmp_path: Path, s3_bucket: str) -> None:
    root = _dataset(tmp_path / "train", units=1, per_unit=5)
    cfg = ProbesConfig(probes=("copies",), n=3)
    out = f"s3://{s3_bucket}/probes"
    (ps,) = build_probes(str(root), cfg, out)
    assert ps.url == f"{out}/copies.tar"
    (unit,) = list_units(ps.url)
    assert [sid for sid, _ in read_unit(unit)] == [f"copies.tar/{i:06d}" for i in range(3)]
    assert build_probes(str(root), cfg, out) == [ps]
