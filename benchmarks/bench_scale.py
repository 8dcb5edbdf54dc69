"""Scale benchmark: the Ray audit job on precomputed embeddings, |T| = 100k, 300k, 1M (d = 768, 2 layers).

Synthetic features (a Gaussian mixture in 768 dimensions, float32) are written once as embedding Parquet (the
"bring your own embeddings" input: ``sample_id`` + ``layer_<ℓ>`` fixed-size-list columns, 65,536 rows a file)
under ``--data`` (default ``/tmp/memray-bench-scale``): the training set T, a held-out set P of 10k and three
generated sets of 500 (near-copies of training rows, fresh samples, noisy samples). Each size then runs the
audit job in a fresh process with its own local Ray (own temp dir), sampling every 0.2 s:

- the driver's RSS (the process that calls ``run_audit``),
- the largest RSS of any other process of that Ray (workers, raylet, GCS),
- the object store's bytes in use.

It prints one row per size and the ratios the design is held to: driver peak flat in |T| (≤ 1.2× from the smallest
to the largest size, under 1.5 GB), worker peak bounded by the block size, wall time ≤ 2.3× per 2× |T|.

    python benchmarks/bench_scale.py                     # 100k, 300k, 1M (about 25 GB of Parquet on disk)
    python benchmarks/bench_scale.py --sizes 20000 60000  # a quick look

The query-side case (``--queries``) holds |T| = 50k and grows the generated rows instead: four generated sets
(near-copies of training rows, fresh, noisy and shifted samples) of G/4 rows each, G = 20k and 200k by default. It
prints the driver's peak beside that of the code in ``--before DIR`` (a checkout of an earlier memray, e.g.
``git worktree add /tmp/memray-before <commit>``), with the ratio from the smallest to the largest G; the design
holds the driver flat (≤ 1.3×), since it keeps ~24 B per generated row and never the features.

    python benchmarks/bench_scale.py --queries 20000 200000 --before /tmp/memray-before
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

D, LAYERS, FILE_ROWS, N_TEST, N_GEN, CENTRES = 768, (1, 2), 65536, 10_000, 500, 50
Q_TRAIN, Q_SETS = 50_000, ("qcopies", "qfresh", "qnoisy", "qshifted")


def _write_table(path: Path, ids: list[str], layers: dict[int, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"sample_id": pa.array(ids, pa.string())}
    for layer, x in layers.items():
        cols[f"layer_{layer}"] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, compression="zstd", use_dictionary=False)


def _sample(rng: np.random.Generator, centres: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """n rows per layer: a mixture component plus noise (layer 2 = a fixed rotation of layer 1 plus noise)."""
    k = rng.integers(len(centres), size=n)
    base = centres[k] + rng.normal(scale=1.0, size=(n, D))
    return {1: base.astype(np.float32), 2: (base[:, ::-1] + rng.normal(scale=0.5, size=(n, D))).astype(np.float32)}


def make_data(root: Path, n_train: int) -> dict[str, str]:
    """Write (once) the sets of one size; returns {set name: folder}."""
    root = root / f"T{n_train}"
    done = root / "done"
    sets = {s: str(root / s) for s in ("train", "test", "copies", "fresh", "noisy")}
    if done.exists():
        return sets
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(CENTRES, D))
    for start in range(0, n_train, FILE_ROWS):
        n = min(FILE_ROWS, n_train - start)
        ids = [f"t{i:09d}" for i in range(start, start + n)]
        _write_table(root / "train" / f"part-{start // FILE_ROWS:05d}.parquet", ids, _sample(rng, centres, n))
    _write_table(root / "test" / "part-00000.parquet", [f"p{i}" for i in range(N_TEST)], _sample(rng, centres, N_TEST))
    first = _read_first(root / "train" / "part-00000.parquet", N_GEN)
    copies = {k: v + rng.normal(scale=0.05, size=v.shape).astype(np.float32) for k, v in first.items()}
    _write_table(root / "copies" / "part-00000.parquet", [f"c{i}" for i in range(N_GEN)], copies)
    _write_table(root / "fresh" / "part-00000.parquet", [f"f{i}" for i in range(N_GEN)], _sample(rng, centres, N_GEN))
    noise = _sample(rng, centres, N_GEN)
    noisy = {k: v + rng.normal(scale=2.0, size=v.shape).astype(np.float32) for k, v in noise.items()}
    _write_table(root / "noisy" / "part-00000.parquet", [f"n{i}" for i in range(N_GEN)], noisy)
    done.write_text("ok")
    return sets


def _read_first(path: Path, n: int) -> dict[int, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).slice(0, n)
    return {ell: table[f"layer_{ell}"].combine_chunks().flatten().to_numpy().reshape(n, D) for ell in LAYERS}


def make_query_data(root: Path, n_gen: int) -> dict[str, str]:
    """Write (once) the four generated sets of G = ``n_gen`` rows beside the 50k training set; {set name: folder}."""
    sets = make_data(root, Q_TRAIN)
    qroot = root / f"T{Q_TRAIN}" / f"Q{n_gen}"
    out = {"train": sets["train"], "test": sets["test"], **{g: str(qroot / g) for g in Q_SETS}}
    if (qroot / "done").exists():
        return out
    import pyarrow.parquet as pq

    rng = np.random.default_rng(n_gen)
    centres = np.random.default_rng(0).normal(scale=4.0, size=(CENTRES, D))
    table = pq.read_table(Path(sets["train"]) / "part-00000.parquet")
    train = {ell: table[f"layer_{ell}"].combine_chunks().flatten().to_numpy().reshape(-1, D) for ell in LAYERS}
    m = n_gen // len(Q_SETS)
    for g in Q_SETS:
        for start in range(0, m, FILE_ROWS):
            n = min(FILE_ROWS, m - start)
            if g == "qcopies":  # training rows plus a little noise
                pick = rng.integers(0, table.num_rows, n)
                x = {k: v[pick] + rng.normal(scale=0.05, size=(n, D)).astype(np.float32) for k, v in train.items()}
            else:  # fresh samples, noisier ones, shifted ones
                x = _sample(rng, centres, n)
                noise = {"qfresh": 0.0, "qnoisy": 2.0, "qshifted": 0.5}[g]
                x = {k: (v + noise * rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
            ids = [f"{g}{i:08d}" for i in range(start, start + n)]
            _write_table(qroot / g / f"part-{start // FILE_ROWS:05d}.parquet", ids, x)
    (qroot / "done").write_text("ok")
    return out


def _store_bytes() -> int:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return int(get_memory_info_reply(get_state_from_address(None)).store_stats.object_store_bytes_used)


def run_one(
    sets: dict[str, str], out: str, num_cpus: int, gens: tuple[str, ...] = ("copies", "fresh", "noisy")
) -> dict:
    """One audit in this process (called in a fresh subprocess per size): wall time and memory peaks."""
    import psutil
    import ray

    from memray.job.config import audit_config_from_dict
    from memray.ray.pipeline import run_audit

    cfg = audit_config_from_dict(
        {
            "train": {"name": "train", "embeddings": [sets["train"]]},
            "test": {"name": "test", "embeddings": [sets["test"]]},
            "generated": [{"name": g, "embeddings": [sets[g]]} for g in gens],
            "output": out,
            "ct": {"mode": "paper", "seed": 0},
            "resources": {"index_task_num_cpus": 1.0},
        }
    )
    tmp = tempfile.mkdtemp(prefix="mr-bs-", dir="/tmp")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    me = psutil.Process()
    peaks = {"driver": 0, "worker": 0, "store": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks["driver"] = max(peaks["driver"], me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    peaks["worker"] = max(peaks["worker"], child.memory_info().rss)
                except psutil.Error:
                    pass
            try:
                peaks["store"] = max(peaks["store"], _store_bytes())
            except Exception:
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    result = run_audit(cfg)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    ray.shutdown()
    ct = result.ct_scores.set_index(["gen_set", "layer"])["ct"].round(3).to_dict()
    out = {"wall_s": wall, **{f"{k}_peak_mb": v / 2**20 for k, v in peaks.items()}}
    return {**out, "ct": {str(k): v for k, v in ct.items()}}


def _child(args: list[str], code: str | None = None) -> dict:
    """Run this script with ``args`` in a fresh process (``code``: the memray tree it imports, workers included)."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="memray-bench-out-", dir="/tmp") as out:
        cmd = [sys.executable, __file__, *args, "--out", out, *(["--code", code] if code else [])]
        cwd = code or str(REPO)  # Ray's workers put the driver's working folder first on their path
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scale_case(args: argparse.Namespace) -> None:
    """|T| grows: the driver stays flat, workers are bounded by a block, time grows about linearly."""
    rows = []
    for n in args.sizes:
        make_data(Path(args.data), n)
        rows.append((n, _child(["--one", str(n), "--data", args.data, "--num-cpus", str(args.num_cpus)])))
    print(f"{'|T|':>9}  {'wall s':>8}  {'driver MB':>9}  {'worker MB':>9}  {'store MB':>8}  {'time ×':>6}")
    prev = None
    for n, r in rows:
        ratio = f"{r['wall_s'] / prev[1]['wall_s']:.2f}" if prev else "—"
        print(f"{n:>9}  {r['wall_s']:>8.1f}  {r['driver_peak_mb']:>9.0f}  {r['worker_peak_mb']:>9.0f}  "
              f"{r['store_peak_mb']:>8.0f}  {ratio:>6}")  # fmt: skip
        prev = (n, r)
    lo, hi = rows[0][1], rows[-1][1]
    ratio = hi["driver_peak_mb"] / lo["driver_peak_mb"]
    print(f"driver peak {hi['driver_peak_mb']:.0f} MB at |T|={rows[-1][0]} vs {lo['driver_peak_mb']:.0f} MB at "
          f"|T|={rows[0][0]}: {ratio:.2f}× (target ≤ 1.2×, < 1,500 MB)")  # fmt: skip
    for (n0, r0), (n1, r1) in itertools.pairwise(rows):
        per2 = (r1["wall_s"] / r0["wall_s"]) ** (np.log(2) / np.log(n1 / n0))
        print(f"wall time {n0} → {n1}: {r1['wall_s'] / r0['wall_s']:.2f}× ({per2:.2f}× per 2× |T|; target ≤ 2.3×)")
    print("C_T (largest size):", json.dumps(hi["ct"]))


def query_case(args: argparse.Namespace) -> None:
    """G generated rows grow beside |T| = 50k: the driver's peak, this code beside ``--before``'s."""
    codes = {"after": None} if not args.before else {"before": args.before, "after": None}
    got: dict[str, dict[int, dict]] = {c: {} for c in codes}
    for g in args.queries:
        make_query_data(Path(args.data), g)
        for name, code in codes.items():
            got[name][g] = _child(
                ["--one-queries", str(g), "--data", args.data, "--num-cpus", str(args.num_cpus)], code
            )
            print(f"G={g} {name}: {json.dumps(got[name][g])}", flush=True)
    head = "".join(f"  {name + ' driver MB':>17}  {name + ' wall s':>13}" for name in codes)
    print(f"{'G (generated rows)':>18}{head}")
    for g in args.queries:
        cells = "".join(f"  {got[c][g]['driver_peak_mb']:>17.0f}  {got[c][g]['wall_s']:>13.1f}" for c in codes)
        print(f"{g:>18}{cells}")
    lo, hi = args.queries[0], args.queries[-1]
    for name in codes:
        a, b = got[name][lo]["driver_peak_mb"], got[name][hi]["driver_peak_mb"]
        print(f"{name}: driver peak {b:.0f} MB at G={hi} vs {a:.0f} MB at G={lo}: {b / a:.2f}×"
              + (" (target ≤ 1.3×)" if name == "after" else ""))  # fmt: skip
    if args.before:
        same = all(got["before"][g]["ct"] == got["after"][g]["ct"] for g in args.queries)
        print("C_T before == after (rounded to 3 decimals):", same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--queries", type=int, nargs="*", help="the query-side case: generated rows G (20000 200000)")
    parser.add_argument("--before", help="a checkout of an earlier memray to measure beside this one (--queries)")
    parser.add_argument("--data", default="/tmp/memray-bench-scale")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-queries", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.code:
        sys.path.insert(0, args.code)  # before this tree: the driver imports the code measured
    if args.one:
        print(json.dumps(run_one(make_data(Path(args.data), args.one), args.out, args.num_cpus)))
    elif args.one_queries:
        sets = make_query_data(Path(args.data), args.one_queries)
        print(json.dumps(run_one(sets, args.out, args.num_cpus, Q_SETS)))
    elif args.queries is not None:
        args.queries = args.queries or [20_000, 200_000]
        query_case(args)
    else:
        scale_case(args)


if __name__ == "__main__":
    main()
