"""Whole audit job on Ray vs a bare in-process loop (decode → embed), and 1× vs 2× the images.

Prints, side by side in one run:
- images/s of the bare loop (list → read → decode → prepare → embed, one process, no Ray, no scoring), doing the
  job's forward passes: the training images once, every test and generated image under each of the default
  ``evidence.views`` (7 with the defaults; ``--views identity`` for one);
- images/s of the whole Ray job (read, decode, embed in an actor pool, shard files, per-layer FAISS + C_T and all
  the evidence), and their ratio (goal ≥ 0.8× on 2 cores): the job's overhead over the same embedding work;
- wall time of the Ray job on 2× the images over 1× (goal ≤ 2.2×), with the peak resident memory of the
  driver plus all Ray processes;
- where the job's time went (its ``run.json``): the embedding stage (after how long the first forward pass began,
  the actor's start-up within it, the actors' forward passes), the scoring, and the rest (preflight, report, tables).

    python benchmarks/bench_pipeline.py [--images 2000] [--model vit_tiny_patch16_224 --img-size 112]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import LayerEmbedder, make_prepare
from memray.embedding.views import extra_views
from memray.io.images import decode_image
from memray.job.config import audit_config_from_dict
from memray.ray.pipeline import run_audit
from memray.stats.config import DEFAULT_VIEWS

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def write_images(folder: Path, n: int, seed: int) -> None:
    """``n`` PNGs drawn (with replacement) from the bundled Fashion-MNIST sample."""
    with np.load(SAMPLE / "train.npz") as z:
        pool = z["images"]
    folder.mkdir(parents=True)
    for i, j in enumerate(np.random.default_rng(seed).integers(0, len(pool), n)):
        buf = io.BytesIO()
        Image.fromarray(pool[j]).save(buf, format="PNG")
        (folder / f"{i:06d}.png").write_bytes(buf.getvalue())


def tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (Linux ``/proc``; Ray workers included)."""
    parent, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid], rss[pid] = int(fields[1]), int(fields[21]) * 4096
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


class PeakRSS:
    """Polls the resident memory of this process and all its descendants every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bare_loop(folders: dict[str, Path], embed: EmbedConfig, threads: int, views: list[str]) -> tuple[int, float]:
    """Decode → prepare → embed every image in one process, the test and generated images also under ``views``
    (the training images once); returns (images, seconds)."""
    t0 = time.perf_counter()
    prepare = make_prepare(embed)
    embedder = LayerEmbedder(embed, num_threads=threads)
    under = extra_views(views)
    n = 0
    for role, folder in folders.items():
        files = sorted(p.name for p in folder.iterdir())
        for i in range(0, len(files), embed.batch_size):
            images = [decode_image((folder / f).read_bytes()) for f in files[i : i + embed.batch_size]]
            batch = [prepare(x) for x in images]
            batch += [prepare(v(x)) for v in (under if role != "train" else ()) for x in images]
            for j in range(0, len(batch), embed.batch_size):
                embedder.embed_prepared(np.stack(batch[j : j + embed.batch_size]))
            n += len(images)
    return n, time.perf_counter() - t0


def ray_job(
    folders: dict[str, Path], embed: dict, out: Path, threads: int, views: list[str]
) -> tuple[int, float, int, dict]:
    """The whole audit job on the local Ray; returns (images, seconds, peak RSS bytes, run.json's stats)."""
    cfg = audit_config_from_dict(
        {
            "train": {"name": "train", "urls": [str(folders["train"])]},
            "test": {"name": "test", "urls": [str(folders["test"])]},
            "generated": [{"name": "gen", "urls": [str(folders["gen"])]}],
            "output": str(out),
            "embed": embed,
            "ct": {"mode": "paper"},
            "evidence": {"views": views},
            "resources": {"actors": 1, "actor_num_cpus": 1, "torch_threads": threads, "shard_rows": 512},
        }
    )
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = run_audit(cfg)
        dt = time.perf_counter() - t0
    n = sum(c["rows_read"] for c in result.stats["counts"].values())
    return n, dt, mem.peak, result.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="training images at 1× (test and gen: a quarter each)")
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--views", nargs="+", default=list(DEFAULT_VIEWS), help="evidence.views of the job (and loop)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    embed = {"model": args.model, "random_init": True, "model_kwargs": {"img_size": args.img_size}, "batch_size": 64}
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="memray-bench-") as tmp:
        results, bare = {}, {}
        for scale in (1, 2):
            n = args.images * scale
            folders = {k: Path(tmp) / f"x{scale}" / k for k in ("train", "test", "gen")}
            for f, size, seed in zip(folders.values(), (n, n // 4, n // 4), (0, 1, 2), strict=True):
                write_images(f, size, seed + 10 * scale)
            results[scale] = ray_job(folders, embed, Path(tmp) / f"out{scale}", args.threads, args.views)
            bare[scale] = bare_loop(folders, EmbedConfig(**embed), args.threads, args.views)
    passes = 1 + len(extra_views(args.views))
    print(
        f"model {args.model} @ {args.img_size}px (random init), {args.threads} CPU threads, views {args.views} "
        f"(test and generated images embedded {passes}× in both)"
    )
    print("GiB = peak resident memory of the driver and every Ray process")
    for scale in (1, 2):
        (n, t, m, stats), (nb, tb) = results[scale], bare[scale]
        print(f"{scale}× bare loop (decode → embed)      : {nb:6d} images {tb:7.1f} s {nb / tb:7.1f} img/s")
        gib = m / 2**30
        print(f"{scale}× Ray job (read → embed → C_T)    : {n:6d} images {t:7.1f} s {n / t:7.1f} img/s  {gib:.2f} GiB")
        print(f"{scale}× ratio Ray job / bare loop        : {(n / t) / (nb / tb):.2f}×  (goal ≥ 0.8×)")
        emb, score = stats["embed"], stats["score"]["seconds"]
        print(
            f"{scale}× job's time: embedding {emb['seconds']:.1f} s (first forward pass after "
            f"{emb['first_forward_seconds']:.1f} s, actor start-up {emb['actor_start_seconds']:.1f} s, forward passes "
            f"{emb['forward_seconds']:.1f} s), scoring {score:.1f} s, rest {t - emb['seconds'] - score:.1f} s"
        )
    print(f"Ray job time 2× / 1×                : {results[2][1] / results[1][1]:.2f}×  (goal ≤ 2.2×)")


if __name__ == "__main__":
    main()
