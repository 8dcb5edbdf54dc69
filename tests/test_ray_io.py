"""The audit job's inputs and outputs: a real S3 endpoint over HTTP, and bad images reported as rows."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import s3fs
from archive_bytes import tar_bytes
from PIL import Image
from ray_helpers import audit_config, make_inputs, sample_images, write_pngs

from memray.io import schema
from memray.ray.pipeline import run_audit


@pytest.mark.timeout(300)
def test_s3_inputs_and_outputs_match_local(ray_local, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(tmp_path / "in") + "/", f"{s3_bucket}/in/", recursive=True)
    remote = {k: f"s3://{s3_bucket}/in/{Path(v).name}" for k, v in inputs.items()}
    local = run_audit(audit_config(inputs, str(tmp_path / "local")))
    out = f"s3://{s3_bucket}/runs/audit"
    run_audit(audit_config(remote, out))

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    got = pd.read_parquet(f"{out}/{schema.CT_SCORES_FILE}", storage_options=opts)
    pd.testing.assert_frame_equal(got, local.ct_scores, check_dtype=False, atol=0, rtol=0)
    for name in (schema.CT_CELLS_FILE, schema.NEIGHBORS_FILE):  # same ids from S3 keys as from local paths
        with fs.open(f"{s3_bucket}/runs/audit/{name}", "rb") as fh:
            remote_table = pq.read_table(fh)
        local_table = pq.read_table(tmp_path / "local" / name)
        # same data, NaN where the local run has NaN (Arrow's equals counts NaN != NaN); the metadata records the
        # other input URLs
        assert remote_table.schema.equals(local_table.schema, check_metadata=False), name
        pd.testing.assert_frame_equal(remote_table.to_pandas(), local_table.to_pandas(), check_exact=True, obj=name)
        meta = json.loads(remote_table.schema.metadata[schema.META_KEY])
        assert meta["job"]["job_config"]["train"]["urls"] == [remote["train"]]
    assert fs.exists(f"{s3_bucket}/runs/audit/{schema.RUN_FILE}")
    assert fs.exists(f"{s3_bucket}/runs/audit/embeddings/train/shard-00000.done.json")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _png16(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("I;16", img.shape[::-1], img.astype("<u2").tobytes()).save(buf, format="PNG")
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members)


def _png_rows_cut(img: np.ndarray) -> bytes:
    """A PNG (greyscale, every chunk and CRC valid) whose pixel data holds half the rows its header declares."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + row.tobytes() for row in img[: len(img) // 2])
    ihdr = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_bad_files(folder: Path) -> dict[str, str | None]:
    """One file per kind of bad (or unusual) input; value = expected error status, None = must embed fine.

    Units that cannot be read give one ``unreadable`` row named after the file/archive; the members a cut tar
    shard yielded before its cut embed fine.
    """
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    jpeg = io.BytesIO()  # large enough that cutting it in half cuts the entropy-coded data, not the headers
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    npz = io.BytesIO()
    np.savez(npz, images=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    tar = _tar({"k1.png": _png(rgb[..., 1]), "k2.png": _png(rgb[..., 2]), "k3.png": _png(rgb)})
    cut = tarfile.open(fileobj=io.BytesIO(tar)).getmember("k3.png").offset_data + 100  # inside k3's data
    files = {
        "bad_corrupt.png": (b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)), "corrupt"),
        "bad_truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated"),
        "bad_empty.png": (b"", "empty"),
        "bad_text.png": (b"this is not an image, just text\n", "not_image"),
        "bad_bomb.png": (_png(np.zeros((200, 200), np.uint8)), "too_large"),
        "odd_gray.png": (_png(rgb[..., 0]), None),
        "odd_rgba.png": (_png(np.dstack([rgb, np.full((28, 28), 128, np.uint8)])), None),
        "odd_16bit.png": (_png16(rgb[..., 0].astype(np.uint16) * 257), None),
        "bad_rows.png": (_png_rows_cut(rgb[..., 0]), "truncated"),
        "bad_zip.npz": (npz.getvalue()[:-40], "unreadable"),
        "bad_cut.tar": (tar[:cut], "unreadable"),  # k1, k2 whole, k3 cut
        "bad_cut.tar/k1": (None, None),
        "bad_cut.tar/k2": (None, None),
    }
    for name, (data, _) in files.items():
        if data is not None:
            (folder / name).write_bytes(data)
    (folder / "bad_dangling.png").symlink_to(folder / "deleted.png")
    return {name: status for name, (_, status) in files.items()} | {"bad_dangling.png": "unreadable"}


@pytest.mark.timeout(300)
def test_bad_images_become_error_rows_and_counts_add_up(ray_local, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    gen_dir = tmp_path / "in" / "gen_folder"
    write_pngs(gen_dir, sample_images("heldout_real", 90))
    expected = write_bad_files(gen_dir)
    for name in (".hidden.png", "photo.jfif", "NOTES"):  # listed, not inputs: reported as skipped, by name
        (gen_dir / name).write_bytes(b"x")
        expected[name] = "skipped"
    inputs["real"] = str(gen_dir)
    cfg = audit_config(inputs, str(tmp_path / "out"), max_image_pixels=20_000)  # 200×200 = 40,000 px: too large
    result = run_audit(cfg)

    counts = result.stats["counts"]["real"]
    rows = {k: counts[k] for k in ("rows_read", "rows_embedded", "rows_reported")}
    assert rows == {"rows_read": 104, "rows_embedded": 95, "rows_reported": 9}
    assert counts["files_skipped"] == 3
    errors = pd.read_parquet(tmp_path / "out" / schema.ERRORS_FILE)
    got = dict(zip(errors[schema.SAMPLE_ID], errors[schema.STATUS], strict=True))
    assert got == {name: status for name, status in expected.items() if status is not None}
    assert (errors[schema.SET] == "real").all() and errors[schema.ERROR].str.len().gt(0).all()
    unreadable = errors[errors[schema.STATUS] == "unreadable"]
    for sid, err in zip(unreadable[schema.SAMPLE_ID], unreadable[schema.ERROR], strict=True):
        assert str(gen_dir / sid) in err, err
    nbrs = pd.read_parquet(tmp_path / "out" / schema.NEIGHBORS_FILE)
    real_ids = set(nbrs.loc[nbrs[schema.GEN_SET] == "real", schema.SAMPLE_ID])
    fine = {"odd_gray.png", "odd_rgba.png", "odd_16bit.png", "bad_cut.tar/k1", "bad_cut.tar/k2"}
    assert fine <= real_ids and not real_ids & set(got)
    scores = result.ct_scores[result.ct_scores[schema.GEN_SET] == "real"]
    assert (scores[schema.N_GEN] == 95).all() and np.isfinite(scores[schema.CT]).all()
