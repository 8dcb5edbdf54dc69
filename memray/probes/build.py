"""Build the probe sets: a seeded sample of training images, transformed, written as one ``.tar`` per probe.

Layout under ``out_url``: ``<probe>.tar`` (uncompressed; members ``<index:06d>.png``, lossless PNG, in the order
of the sorted source sample ids, so a member's key is its index) and ``manifest.json``, written last: per probe its
set name, file, parameters, seed rule, ``n``, the source training sample id of every member (``source_ids[i]`` is
member ``i``), byte size and SHA-256. Tars carry fixed headers (mtime 0, uid/gid 0, no user names, mode 0644,
ustar), so the same samples and config give byte-identical files. Each tar is a dataset memray reads like any other
(sample ids ``<probe>.tar/<index:06d>``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from PIL import Image

from memray.config import to_dict
from memray.io.images import ImageDecodeError, decode_array, decode_image
from memray.io.sources import UnitReadError, list_units, read_unit
from memray.io.storage import join, open_output, read_json, store, write_json
from memray.probes.config import PROBE_SET_PREFIX, ProbesConfig
from memray.probes.transforms import PROBES

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1  # bump whenever a transform's output changes for the same parameters: old tars are rebuilt
POOL_FACTOR = 4  # sample_training reads whole units until it has seen at least POOL_FACTOR·n samples
SEED_RULE = "image i of probe p: numpy.random.default_rng([seed, zlib.crc32(p.encode()), i])"


@dataclass(frozen=True)
class ProbeSet:
    """One written probe set: ``probe`` name, generated-set name ``probe_<probe>``, tar ``url``, parameters, size."""

    probe: str
    set_name: str
    url: str
    params: dict[str, Any] = field(hash=False)
    n: int


def set_name(probe: str) -> str:
    """The generated-set name of a probe: ``probe_<probe>``."""
    return PROBE_SET_PREFIX + probe


def sample_training(
    urls: str | list[str],
    n: int,
    seed: int,
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """A seeded sample of ``n`` training images as ``(sample id, (H, W, 3) uint8 RGB)``, sorted by sample id.

    Cheap at scale: units (files, shards) are read whole in a seeded random order until at least ``4·n`` samples
    have been seen (or all); a seeded reservoir of ``2·n`` of those is kept (memory bounded by ``2·n`` encoded
    images whatever the unit sizes), then decoded in a seeded random order until ``n`` decode. The sample is thus
    uniform over the units read, not over the whole set. Same inputs and seed give the same ids. Undecodable
    samples and unreadable units are skipped, logged and appended to ``skipped`` as ``(id or url, status)``;
    fewer than ``n`` images (a small set) gives all of them, with a warning.
    """
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    units = list_units(urls, storage_options, image_column)
    rng = np.random.default_rng([seed, zlib.crc32(b"sample_training")])
    keep, seen = 2 * n, 0
    pool: list[tuple[str, bytes | np.ndarray]] = []
    for u in rng.permutation(len(units)):
        try:
            for sid, payload in read_unit(units[u], storage_options):
                if seen < keep:
                    pool.append((sid, payload))
                elif (j := int(rng.integers(0, seen + 1))) < keep:  # Algorithm R: a uniform keep-subset
                    pool[j] = (sid, payload)
                seen += 1
        except UnitReadError as exc:
            log.warning("probe sample: skipping unreadable unit: %s", exc)
            if skipped is not None:
                skipped.append((units[u].url, "unreadable"))
        if seen >= POOL_FACTOR * n:
            break
    out: list[tuple[str, np.ndarray]] = []
    bad = 0
    for i in rng.permutation(len(pool)):
        if len(out) == n:
            break
        sid, payload = pool[i]
        try:
            img = decode_array(payload) if isinstance(payload, np.ndarray) else decode_image(payload)
        except ImageDecodeError as exc:
            bad += 1
            log.debug("probe sample: %s undecodable (%s)", sid, exc)
            if skipped is not None:
                skipped.append((sid, exc.status))
            continue
        out.append((sid, img))
    if bad:
        log.warning("probe sample: %d undecodable training samples skipped", bad)
    if len(out) < n:
        log.warning("probe sample: only %d decodable training images (of %d seen) for n=%d", len(out), seen, n)
    return sorted(out, key=lambda item: item[0])


class _Counting:
    """A write-only file wrapper that counts and hashes the bytes written (tarfile needs ``write``/``tell``)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.size, self.sha = fh, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.size += len(data)
        self.sha.update(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _entry(probe: str, cfg: ProbesConfig, ids: list[str]) -> dict[str, Any]:
    """The manifest entry of a probe, without the written file's size and hash."""
    return {
        "set": set_name(probe),
        "file": f"{probe}.tar",
        "params": cfg.params(probe),
        "seed": cfg.seed,
        "seed_rule": SEED_RULE,
        "members": "<index:06d>.png, index i holds source_ids[i]",
        "n": len(ids),
        "source_ids": list(ids),
    }


def _write_tar(
    probe: str,
    samples: list[tuple[str, np.ndarray]],
    cfg: ProbesConfig,
    url: str,
    storage_options: dict[str, Any] | None,
) -> dict:
    fn, params = PROBES[probe]
    key = zlib.crc32(probe.encode())
    with open_output(url, storage_options) as fh:
        counting = _Counting(fh)
        with tarfile.open(fileobj=counting, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (_, img) in enumerate(samples):
                data = _png(fn(img, np.random.default_rng([cfg.seed, key, i]), **params))
                info = tarfile.TarInfo(f"{i:06d}.png")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    log.info("probe %s: %d images -> %s (%d bytes)", probe, len(samples), url, counting.size)
    return {"bytes": counting.size, "sha256": counting.sha.hexdigest()}


def _size(url: str, storage_options: dict[str, Any] | None) -> int | None:
    st = store(url, storage_options)
    try:
        return int(st.call("size", st.path))
    except FileNotFoundError:
        return None


def _write(
    samples: list[tuple[str, np.ndarray]],
    cfg: ProbesConfig,
    out_url: str,
    storage_options: dict[str, Any] | None,
    old: dict[str, Any],
) -> list[ProbeSet]:
    """Write every probe of ``cfg`` whose ``old`` manifest entry does not match (or whose tar is gone), then the
    manifest; the manifest is not rewritten when nothing changed."""
    if not samples:
        raise ValueError("no training images to build probe sets from")
    ids = [sid for sid, _ in samples]
    old_probes = old.get("probes", {}) if old.get("version") == MANIFEST_VERSION else {}
    entries: dict[str, dict[str, Any]] = {}
    for probe in cfg.probes:
        url, want, prev = join(out_url, f"{probe}.tar"), _entry(probe, cfg, ids), old_probes.get(probe, {})
        if {k: prev.get(k) for k in want} == want and prev.get("bytes") == _size(url, storage_options):
            log.info("probe %s: reusing %s", probe, url)
            entries[probe] = prev
        else:
            entries[probe] = {**want, **_write_tar(probe, samples, cfg, url, storage_options)}
    manifest = {"version": MANIFEST_VERSION, "config": to_dict(cfg), "probes": entries}
    if manifest != old:
        write_json(join(out_url, MANIFEST_FILE), manifest, storage_options)
    return [ProbeSet(p, e["set"], join(out_url, e["file"]), dict(e["params"]), e["n"]) for p, e in entries.items()]


def write_probe_sets(
    samples: list[tuple[str, np.ndarray]],
    cfg: ProbesConfig,
    out_url: str,
    storage_options: dict[str, Any] | None = None,
) -> list[ProbeSet]:
    """Transform ``samples`` with every probe of ``cfg`` and write ``<out_url>/<probe>.tar`` + ``manifest.json``.

    ``samples`` are ``(training sample id, (H, W, 3) uint8)`` in member order (:func:`sample_training` sorts them).
    Returns the probe sets in ``cfg.probes`` order.
    """
    return _write(samples, cfg, out_url, storage_options, {})


def build_probes(
    train_urls: str | list[str],
    cfg: ProbesConfig,
    out_url: str,
    storage_options: dict[str, Any] | None = None,
    image_column: str | None = None,
) -> list[ProbeSet]:
    """Sample the training set (:func:`sample_training`) and write the probe sets (:func:`write_probe_sets`).

    A probe whose tar exists with the size, parameters, seed and source ids its manifest entry records is reused;
    the others are rewritten (the training sample is always drawn again, so a changed training set is noticed).
    """
    samples = sample_training(train_urls, cfg.n, cfg.seed, storage_options, image_column)
    try:
        old = read_json(join(out_url, MANIFEST_FILE), storage_options)
    except (FileNotFoundError, json.JSONDecodeError):
        old = {}
    return _write(samples, cfg, out_url, storage_options, old if isinstance(old, dict) else {})
