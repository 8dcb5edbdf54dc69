"""``memray embed``: per-layer embeddings of a folder of images or an ``.npz`` of uint8 images → feature Parquet.

Output: ``--out FILE.parquet`` with ``sample_id`` (as in the audit job: the path relative to the folder,
``<file name>/<row>`` for ``.npz`` rows, ``<shard>/<key>`` for tar members)
and one fixed-size-list column ``layer_<ℓ>`` per layer; the embedder's :meth:`describe` record, the config and
the row counts sit in the schema metadata. Images that cannot be decoded are excluded and listed in
``<out stem>.errors.parquet`` (``set, sample_id, status, error``; written even when empty, so a stale file never
survives a rerun). The command checks and prints ``rows read = rows embedded + rows reported``.

User errors are found before the model is built: the image listing first, then the encoder
(:func:`memray.embedding.embed.check_encoder`: model name, weights header, layers). torch and timm are imported only by
:func:`run`, so ``memray --help`` stays light.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from memray.commands import add_encoder_input_flags, encoder_input_settings, parse_key_values
from memray.config import digest, to_dict
from memray.embedding.config import EmbedConfig
from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.features import FeatureSet, write_features
from memray.io.images import DEFAULT_MAX_PIXELS
from memray.io.shards import IMAGE, STATUS_OK, ShardPlan, plan_shards, read_shard
from memray.io.storage import open_output

if TYPE_CHECKING:
    from memray.embedding.embed import LayerEmbedder

log = logging.getLogger(__name__)
SHARD_ROWS = 1024  # images decoded ahead of the encoder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``memray embed``."""
    p = subparsers.add_parser(
        "embed",
        help="per-layer ViT embeddings of images → feature Parquet",
        description="Reads images (a folder or s3:// prefix, searched recursively; an .npz of uint8 images; "
        "WebDataset .tar; Parquet with image bytes), embeds them with a timm ViT (CLS or mean of patch tokens at "
        "every requested layer) and writes --out FILE.parquet (sample_id + one layer_<l> column per layer, config "
        "and provenance in the schema metadata) and FILE.errors.parquet (the images that could not be decoded). "
        "Paths, model name, weights and layers are checked before the model is loaded.",
    )
    p.add_argument(
        "--images",
        required=True,
        help="folder or s3:// prefix of images (recursive), .npz of uint8 images, WebDataset .tar, or Parquet",
    )
    p.add_argument("--out", required=True, help="output feature file (.parquet, local or s3://)")
    p.add_argument("--model", default=EmbedConfig.model, help="timm model name (default: %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="local path or URL of a .safetensors file (default: the model hub)")
    src.add_argument("--random-init", action="store_true", help="untrained encoder (a baseline; recorded)")
    p.add_argument("--layers", default="all", help="'all' (blocks 1…L) or comma-separated numbers, 0 = patch embed")
    p.add_argument("--norm", action="store_true", help="apply the model's final LayerNorm to every layer")
    p.add_argument("--preprocess", choices=["paper", "model"], default="paper", help="default: paper (256→224, 0.5)")
    add_encoder_input_flags(p)
    p.add_argument("--batch-size", type=int, default=EmbedConfig.batch_size, help="images per forward pass")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored embedding dtype")
    p.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--model-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm.create_model argument, VALUE parsed as YAML/JSON (e.g. img_size=224 for DINOv2)",
    )
    p.set_defaults(func=run)


def parse_layers(text: str) -> str | tuple[int, ...]:
    """``"all"`` or a comma-separated list of layer numbers."""
    if text.strip() == "all":
        return "all"
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ValueError(f"--layers {text!r}: use 'all' or comma-separated integers like 1,2,12") from exc


def errors_url(out: str) -> str:
    """``<dir>/<stem>.errors.parquet`` beside the feature file ``out``."""
    return str(out)[: -len(".parquet")] + ".errors.parquet"


def run(args: argparse.Namespace) -> int:
    """Embed the images and write the feature and error files; returns the exit status."""
    if not str(args.out).endswith(".parquet"):
        raise ValueError(f"--out {args.out}: the feature file must end in .parquet")
    cfg = EmbedConfig(
        model=args.model,
        weights=args.weights,
        random_init=args.random_init,
        layers=parse_layers(args.layers),
        norm=args.norm,
        preprocess=args.preprocess,
        dtype=args.dtype,
        batch_size=args.batch_size,
        model_kwargs=parse_key_values(args.model_kwarg, "--model-kwarg"),
        **encoder_input_settings(args),
    )
    set_name = PurePosixPath(str(args.images).rstrip("/")).stem
    plans = plan_shards(DatasetSpec(name=set_name, urls=(str(args.images),)), shard_rows=SHARD_ROWS)
    from memray.embedding.embed import LayerEmbedder, check_encoder  # torch + timm: only once the inputs are known good

    encoder = check_encoder(cfg)
    log.info("encoder %s: layers %s of %d blocks", cfg.model, encoder["layers"], encoder["num_blocks"])
    embedder = LayerEmbedder(cfg, num_threads=args.num_threads)
    ids, layers, errors, rows_read = _embed_source(args.images, plans, embedder, set_name)
    rows_embedded, rows_reported = len(ids), len(errors)
    if rows_read != rows_embedded + rows_reported:  # an internal bug, never expected: refuse to write
        raise RuntimeError(
            f"{args.images}: rows read {rows_read} != embedded {rows_embedded} + reported {rows_reported}"
        )
    err_url = errors_url(args.out)
    _write_errors(err_url, errors)
    counts = {"rows_read": rows_read, "rows_embedded": rows_embedded, "rows_reported": rows_reported}
    if errors:
        by_status = Counter(e[2] for e in errors)
        log.warning("%s: %d image(s) not decodable (%s); see %s", args.images, len(errors), dict(by_status), err_url)
    print(f"rows read = rows embedded + rows reported: {rows_read} = {rows_embedded} + {rows_reported}")
    if rows_embedded == 0:
        print(f"memray embed: error: no image of {args.images} could be embedded; see {err_url}")
        return 1
    meta = {
        "stage": "embed",
        "input": str(args.images),
        "set": set_name,
        "config": to_dict(cfg),
        "config_digest": digest(cfg),
        "embedder": embedder.describe(),
        "counts": counts,
        "errors_file": err_url,
    }
    write_features(args.out, FeatureSet(np.asarray(ids, dtype=object), layers, str(args.images)), meta)
    print(f"features: {args.out} ({rows_embedded} rows × layers {list(embedder.resolved_layers)})")
    print(f"errors:   {err_url} ({rows_reported} rows)")
    return 0


def _embed_source(
    path: str, plans: list[ShardPlan], embedder: LayerEmbedder, set_name: str
) -> tuple[list[str], dict[int, np.ndarray], list[tuple[str, str, str, str]], int]:
    """Read, decode, prepare and embed every image with the audit job's own shard reader (same sample ids).

    Returns ids, ``{ℓ: (n, D)}``, error rows and rows read. The next shard is decoded in a thread while the
    current one runs on the encoder.
    """
    bs = embedder.cfg.batch_size
    log.info("%s: %d shard(s), batches of %d", path, len(plans), bs)

    def read(k: int) -> list[dict[str, Any]]:
        return read_shard(plans[k], embedder.preprocessor.prepare, DEFAULT_MAX_PIXELS)

    ids: list[str] = []
    parts: list[dict[int, np.ndarray]] = []
    errors: list[tuple[str, str, str, str]] = []
    n_read = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(read, 0)
        for k in range(len(plans)):
            rows = future.result()
            if k + 1 < len(plans):
                future = pool.submit(read, k + 1)
            n_read += len(rows)
            ok = [r for r in rows if r[schema.STATUS] == STATUS_OK]
            errors += [(set_name, r[schema.SAMPLE_ID], r[schema.STATUS], r[schema.ERROR]) for r in rows if r not in ok]
            for i in range(0, len(ok), bs):
                parts.append(embedder.embed_prepared(np.stack([r[IMAGE] for r in ok[i : i + bs]])))
            ids += [r[schema.SAMPLE_ID] for r in ok]
    layers = {
        layer: np.concatenate([p[layer] for p in parts])
        if parts
        else np.empty((0, embedder.dims[layer]), embedder.out_dtype)
        for layer in embedder.resolved_layers
    }
    return ids, layers, errors, n_read


def _write_errors(url: str, errors: list[tuple[str, str, str, str]]) -> None:
    cols = list(zip(*errors, strict=True)) if errors else [[], [], [], []]
    table = pa.Table.from_arrays([pa.array(list(c), pa.string()) for c in cols], schema=schema.ERRORS_SCHEMA)
    with open_output(url) as fh:
        pq.write_table(table, fh)
