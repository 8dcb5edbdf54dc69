"""memray.io.fetch: a sample's image from its source string, for every input kind (local and S3), and ids → sources."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memray.io.fetch import FetchError, Locator, fetch_by_id, fetch_image, fetch_images, parse_source
from memray.io.listing import list_units
from memray.io.sources import iter_samples


def _img(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder with a PNG, a tar shard, a Parquet file and an .npz; returns it and sample id → image."""
    root = tmp_path / "set"
    (root / "pngs").mkdir(parents=True)
    want = {}
    a = _img(0)
    (root / "pngs" / "a.png").write_bytes(_png(a))
    want["pngs/a.png"] = a
    with tarfile.open(root / "shard.tar", "w") as tf:
        for key in ("k1", "k2"):
            img = _img(len(want))
            data = _png(img)
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            want[f"shard.tar/{key}"] = img
    imgs = [_img(10 + i) for i in range(3)]
    pq.write_table(pa.table({"image": [_png(x) for x in imgs]}), root / "t.parquet")
    want.update({f"t.parquet/{i}": x for i, x in enumerate(imgs)})
    grey = np.random.default_rng(5).integers(0, 256, size=(4, 7, 7), dtype=np.uint8)
    np.savez(root / "g.npz", images=grey)
    want.update({f"g.npz/{i}": np.repeat(grey[i][:, :, None], 3, axis=2) for i in range(4)})
    return root, want


def test_every_sample_fetches_back_by_its_source(dataset) -> None:
    root, want = dataset
    units = list_units(str(root))
    loc = Locator(units)
    ids = [sid for sid, _ in iter_samples(str(root))]
    assert sorted(ids) == sorted(want)  # the locator covers exactly what the audit reads
    sources = loc.sources(ids)
    got = fetch_images(sources)
    for sid, src in zip(ids, sources, strict=True):
        np.testing.assert_array_equal(got[src], want[sid])
    assert loc.source("shard.tar/k2") == f"{root}/shard.tar#k2"
    assert loc.source("pngs/a.png") == f"{root}/pngs/a.png"
    assert parse_source(f"{root}/g.npz#3") == (f"{root}/g.npz", "3")
    assert parse_source("/x/odd#name.png") == ("/x/odd#name.png", None)  # '#' in a file name is not a member


def test_fetch_by_id_lists_like_the_audit(dataset) -> None:
    root, want = dataset
    src, img = fetch_by_id(str(root), "t.parquet/2")
    assert src.endswith("t.parquet#2")
    np.testing.assert_array_equal(img, want["t.parquet/2"])


def test_failures_name_the_source(dataset) -> None:
    root, _ = dataset
    with pytest.raises(FetchError, match="no member '9'"):
        fetch_image(f"{root}/g.npz#9")
    with pytest.raises(FetchError, match="cannot read"):
        fetch_image(f"{root}/missing.png")
    (root / "bad.png").write_bytes(b"not an image")
    with pytest.raises(FetchError, match="cannot decode"):
        fetch_image(f"{root}/bad.png")
    assert Locator(list_units(str(root))).sources(["nowhere/x"]) == [None]


def test_fetch_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    import s3fs

    a = _img(3)
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{s3_bucket}/imgs/x.png", _png(a))
    np.testing.assert_array_equal(fetch_image(f"s3://{s3_bucket}/imgs/x.png"), a)
    src, img = fetch_by_id(f"s3://{s3_bucket}/imgs", "x.png")
    assert src == f"s3://{s3_bucket}/imgs/x.png"
    np.testing.assert_array_equal(img, a)
