"""memray.stats.workspace.load_npz: the arrays np.load gives, read from np.savez archives without np.load's zip
streams (every member cut from the bytes), and np.load's own answer for any other archive."""

import io
import zipfile

import numpy as np
import pytest

from memray.stats.workspace import Workspace, _stored_npy, load_npz


def savez(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def assert_like_np_load(data: bytes) -> dict[str, np.ndarray]:
    got = load_npz(data)
    with np.load(io.BytesIO(data), allow_pickle=False) as ref:
        assert list(got) == ref.files
        for name in ref.files:
            want = ref[name]
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
            assert got[name].tobytes() == want.tobytes(), name  # bit for bit (NaN and -0.0 included)
            assert got[name].flags.writeable and got[name].flags.aligned, name
            assert got[name].flags.c_contiguous == want.flags.c_contiguous, name
    return got


def fast_members(data: bytes) -> list[bool]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [_stored_npy(data, info) is not None for info in zf.infolist()]


@pytest.mark.parametrize(
    "arrays",
    [
        {"z": np.random.default_rng(0).normal(size=(1024, 64)), "rows": np.arange(1024)},
        {"empty": np.zeros((0, 64), np.float32), "scalar": np.array(-0.0), "u": np.array([1, 2**63], np.uint64)},
        {"nan": np.array([np.nan, np.inf, -np.inf]), "big_endian": np.arange(7, dtype=">f4"), "s": np.array(["ab"])},
        {"wide": np.ones((3, 70000), np.int8)},
    ],
)
def test_savez_archives_are_read_from_the_bytes_like_np_load(arrays):
    data = savez(**arrays)
    assert all(fast_members(data))  # the fast path, not the fallback
    got = assert_like_np_load(data)
    got[next(iter(got))][...] = 0  # writable copies: the bytes are not changed
    assert_like_np_load(data)


def test_other_archives_go_to_np_load():
    fortran = savez(f=np.asfortranarray(np.arange(12.0).reshape(3, 4)), c=np.arange(3))
    assert fast_members(fortran) == [False, True]
    assert_like_np_load(fortran)
    compressed = savez(compressed=True, x=np.arange(10))
    assert fast_members(compressed) == [False]
    assert_like_np_load(compressed)
    with pytest.raises(ValueError):  # object arrays stay refused, as np.load(allow_pickle=False) refuses them
        load_npz(savez(o=np.array([{"a": 1}], dtype=object)))


def test_workspace_round_trip(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    z = np.random.default_rng(1).normal(size=(33, 5))
    ws.put("cells/cell_0001/block_000002", z=z, rows=np.arange(33, dtype=np.int64))
    got = ws.get("cells/cell_0001/block_000002")
    assert np.array_equal(got["z"], z) and got["rows"].dtype == np.int64
    assert (tmp_path / "ws/cells/cell_0001/block_000002.npz").is_file()
