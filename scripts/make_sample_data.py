"""Build the bundled sample (``data/sample/``) from Fashion-MNIST's IDX files, deterministically.

    python scripts/make_sample_data.py [--fashion-mnist /usr/share/datasets/fashion-mnist] [--out data/sample]

The IDX files come from the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
nothing is downloaded. Every choice is seeded; the ``.npz`` files are written with fixed zip timestamps, so a rerun
reproduces them byte for byte (their SHA-256 are listed in the generated README).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

# One BLAS thread: the fits are small, and thread-count-dependent float sums would change the last bits of the
# recorded summaries (the images are rounded to uint8 and do not change).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from synthetic import gmm_sample, kde_sample  # noqa: E402  (scripts/synthetic.py, beside this script)

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "sample"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SELECTION_SEED = 20240731  # which real images go into T, P and the held-out sets
RUN_SEEDS = {1: 1001, 2: 2002}  # generator seeds of run 1 and run 2
N_TRAIN_PER_CLASS, N_TEST_PER_CLASS, N_HELDOUT_PER_CLASS, N_GEN = 200, 100, 50, 500
KDE_COPY_BANDWIDTH, KDE_WIDE_BANDWIDTH, GMM_COMPONENTS, GMM_PCA_DIM = 8.0, 64.0, 20, 32
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array (uint8 data only: Fashion-MNIST images and labels)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}; the file is truncated")
    return data.reshape(shape)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{source}: unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}")
    return images, labels


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
    """Sorted indices: ``per_class`` random rows of every class, none in ``exclude``."""
    free = np.setdiff1d(np.arange(len(labels)), exclude)
    picks = [rng.choice(free[labels[free] == c], size=per_class, replace=False) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picks))


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """A compressed ``.npz`` with fixed timestamps (reproducible bytes); ``meta`` is JSON in a 0-d string array."""
    arrays = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build(source: Path, out: Path) -> dict[str, dict]:
    """Write every sample file into ``out``; return {file name: summary} for the README."""
    out.mkdir(parents=True, exist_ok=True)
    tr_images, tr_labels = load_split(source, "train")
    te_images, te_labels = load_split(source, "test")
    rng = np.random.default_rng(SELECTION_SEED)
    train_idx = stratified(tr_labels, N_TRAIN_PER_CLASS, rng, np.array([], int))
    test_idx = stratified(te_labels, N_TEST_PER_CLASS, rng, np.array([], int))
    held_idx = {1: stratified(te_labels, N_HELDOUT_PER_CLASS, rng, test_idx)}
    held_idx[2] = stratified(te_labels, N_HELDOUT_PER_CLASS, rng, np.concatenate([test_idx, held_idx[1]]))
    common = {"dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), MIT licence", "selection_seed": SELECTION_SEED}
    summary: dict[str, dict] = {}

    def real(name: str, split: str, images: np.ndarray, labels: np.ndarray, idx: np.ndarray, role: str) -> None:
        meta = {**common, "role": role, "split": split, "generator": "real", "source_index": "Fashion-MNIST row"}
        write_npz(out / name, {"images": images[idx], "labels": labels[idx], "source_index": idx}, meta)
        summary[name] = {"n": len(idx), "what": role}

    real("train.npz", "train", tr_images, tr_labels, train_idx, "T: training set (200 per class)")
    real("test.npz", "t10k", te_images, te_labels, test_idx, "P: held-out test set (100 per class)")
    train, train_labels = tr_images[train_idx], tr_labels[train_idx]
    for run, seed in RUN_SEEDS.items():
        suffix = "" if run == 1 else f"_run{run}"
        what = "Q: real test images disjoint from P (the ideal generator)"
        real(f"heldout_real{suffix}.npz", "t10k", te_images, te_labels, held_idx[run], what)
        gens = {
            f"kde_copy_bw{KDE_COPY_BANDWIDTH:.0f}": ("Q: KDE near-copies of T (memorization)", kde_sample),
            f"kde_bw{KDE_WIDE_BANDWIDTH:.0f}": ("Q: KDE with a wide kernel: heavily noised copies of T", kde_sample),
            f"gmm_k{GMM_COMPONENTS}": ("Q: Gaussian-mixture sampler in a 32-d PCA space", gmm_sample),
        }
        for stem, (what, fn) in gens.items():
            grng = np.random.default_rng(seed)
            if fn is kde_sample:
                bw = KDE_COPY_BANDWIDTH if stem.startswith("kde_copy") else KDE_WIDE_BANDWIDTH
                images, prov = kde_sample(train, N_GEN, bw, grng)
                labels = train_labels[prov["source_rows"]]
            else:
                images, prov = gmm_sample(train, N_GEN, GMM_COMPONENTS, grng, pca_dim=GMM_PCA_DIM)
                labels = np.full(N_GEN, -1)  # a mixture sample has no class
            meta = {**common, "role": what, "run": run, "source_rows_index": "train.npz", **prov}
            write_npz(out / f"{stem}{suffix}.npz", {"images": images, "labels": labels.astype(np.int16)}, meta)
            summary[f"{stem}{suffix}.npz"] = {"n": N_GEN, "what": f"{what}, seed {seed}"}
    for name in summary:
        data = (out / name).read_bytes()
        summary[name] |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return summary


README_HEAD = """\
# Bundled sample data: Fashion-MNIST and synthetic generators

Small, real data for memray's quick start and tests. Every file is an `.npz` of uint8 28×28 grey images under
the key `images`, with `labels` (Fashion-MNIST class 0–9; -1 = none, for mixture samples) and `meta` (a 0-d
string array holding JSON provenance: source, generator, parameters, seed, exact RNG state, and for copies the
rows of `train.npz` they came from). Real sets also hold `source_index`, the row in the original Fashion-MNIST
file. Read one with:

```python
import json, numpy as np
z = np.load("data/sample/kde_copy_bw8.npz")
images, labels, meta = z["images"], z["labels"], json.loads(z["meta"].item())
```

Roles in the C_T audit: **T** = `train.npz` (the "generator's" training set), **P** = `test.npz`, **Q** = each
generated set. Each generator has two runs (seeds {seeds}) for fingerprinting. What to expect:

- `kde_copy_bw8*`: near-copies of T, the memorizing generator: C_T ≪ 0 expected.
- `heldout_real*`: fresh real images, the ideal generator: C_T ≈ 0 expected.
- `kde_bw64*`: copies of T under heavy pixel noise (std 64 grey levels). How it reads depends on the space: a
  pixel-space PCA-64 projection discards most of the noise and still sees copies (C_T < 0), whereas the paper
  found additive noise (σ = 25 on CIFAR-10) reads C_T > 0 in every layer of a trained ViT-B/16.
- `gmm_k20*`: blurry mixture samples, not copies.

Measured in pixel space (PCA-64 fit on T, 10 k-means cells, Euclidean, τ = 20/|Q|), `tests/test_synthetic.py`
checks with an independent scikit-learn/SciPy C_T: `kde_copy_bw8` ≈ −11, `kde_bw64` ≈ −4, `heldout_real` and
`gmm_k20` within ±1.5.

## How it was made

```
apt-get install dataset-fashion-mnist          # Debian package with the IDX files; no download
python scripts/make_sample_data.py --fashion-mnist /usr/share/datasets/fashion-mnist --out data/sample
```

Selection seed {selection_seed}: T = {n_train} training images per class (from the 60,000), P = {n_test} test
images per class (from the 10,000), each held-out set = {n_held} further test images per class, disjoint from P and
from each other. KDE = Meehan et al.'s sampler (a random row of T plus Gaussian noise of the given std in grey
levels, clipped and rounded); GMM = {gmm_k} full-covariance components fitted by EM in a {gmm_d}-d PCA space of
T, sampled and mapped back. The script is deterministic: rerunning it reproduces these bytes.

| file | images | what | KiB | SHA-256 |
|---|---:|---|---:|---|
"""

README_TAIL = """
## Citation

Han Xiao, Kashif Rasul, Roland Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms.* arXiv:1708.07747, 2017. <https://github.com/zalandoresearch/fashion-mnist>

## Licence

The Fashion-MNIST images are distributed under the MIT licence:

The MIT License (MIT) Copyright © [2017] Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.
"""


def write_readme(out: Path, summary: dict[str, dict]) -> None:
    """``out/README.md``: what each file is, how it was made, sizes and hashes, citation and licence."""
    head = README_HEAD.format(
        seeds=", ".join(str(s) for s in RUN_SEEDS.values()),
        selection_seed=SELECTION_SEED,
        n_train=N_TRAIN_PER_CLASS,
        n_test=N_TEST_PER_CLASS,
        n_held=N_HELDOUT_PER_CLASS,
        gmm_k=GMM_COMPONENTS,
        gmm_d=GMM_PCA_DIM,
    )
    rows = [
        f"| `{name}` | {s['n']:,} | {s['what']} | {s['bytes'] / 1024:.1f} | `{s['sha256']}` |"
        for name, s in sorted(summary.items())
    ]
    total = sum(s["bytes"] for s in summary.values())
    text = head + "\n".join(rows) + f"\n\nTotal: {total / 1024**2:.2f} MiB.\n" + README_TAIL
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-mnist", default=DEFAULT_SOURCE, help="folder with the four *-ubyte.gz IDX files")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: data/sample)")
    args = ap.parse_args(argv)
    source = Path(args.fashion_mnist)
    if not (source / "train-images-idx3-ubyte.gz").exists():
        print(f"{source}: Fashion-MNIST IDX files not found; apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    summary = build(source, Path(args.out))
    write_readme(Path(args.out), summary)
    for name, s in summary.items():
        print(f"{name:28s} {s['n']:5d} images {s['bytes'] / 1024:8.1f} KiB  {s['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
