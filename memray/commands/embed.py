"""``memray embed``: per-layer embeddings of a folder of images or an ``.npz`` of uint8 images → feature Parquet.

Output: ``--out FILE.parquet`` with ``sample_id`` (as in the audit job: the path relative to the folder,
``<file name>/<row>`` for ``.npz`` rows, ``<shard>/<key>`` for tar members)
and one fixed-size-list column ``layer_<ℓ>`` per layer; the embedder's :meth:`describe` record, the config and
the row counts sit in the schema metadata. Images that cannot be decoded are excluded and listed in
``<out stem>.errors.parquet`` (``set, sample_id, status, error``; written even when empty, so a stale file never
survives a rerun). The command checks and prints ``rows read = rows embedded + rows reported``.

The images are embedded by the audit job's embed stage in this process (:func:`memray.job.local.embed_shards`) into
a staging folder ``<out stem>.shards/`` beside ``--out`` (the job's shard files and markers), then streamed into
``--out`` and the folder deleted: an interrupted ``memray embed`` rerun with the same arguments resumes, embedding
only the shards without a valid marker.

User errors are found before the model is built: the image listing first, then the encoder
(:func:`memray.embedding.embed.check_encoder`: model name, weights header, layers). torch and timm are imported only by
:func:`run`, so ``memray --help`` stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections import Counter
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from memray.commands import add_encoder_input_flags, encoder_input_settings, parse_key_values
from memray.config import digest, to_dict
from memray.embedding.config import EmbedConfig
from memray.io import schema
from memray.io.config import DatasetSpec
from memray.io.features import parquet_options
from memray.io.images import DEFAULT_MAX_PIXELS
from memray.io.shards import ShardPlan, plan_shards
from memray.io.storage import open_output, open_url, remove

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


def staging_url(out: str) -> str:
    """``<dir>/<stem>.shards``: the shard folder beside ``out`` while the command runs (a rerun resumes from it)."""
    return str(out)[: -len(".parquet")] + ".shards"


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
    err_url, staging = errors_url(args.out), staging_url(args.out)
    meta = {
        "stage": "embed",
        "input": str(args.images),
        "set": set_name,
        "config": to_dict(cfg),
        "config_digest": digest(cfg),
        "embedder": embedder.describe(),
    }
    counts, pieces = _embed_shards(embedder, plans, staging, meta, err_url)
    rows_read, rows_embedded, rows_reported = (counts[k] for k in ("rows_read", "rows_embedded", "rows_reported"))
    print(f"rows read = rows embedded + rows reported: {rows_read} = {rows_embedded} + {rows_reported}")
    if rows_embedded == 0:
        remove(staging, recursive=True)
        print(f"memray embed: error: no image of {args.images} could be embedded; see {err_url}")
        return 1
    _concat(args.out, pieces, {**meta, "counts": counts, "errors_file": err_url})
    remove(staging, recursive=True)
    print(f"features: {args.out} ({rows_embedded} rows × layers {list(embedder.resolved_layers)})")
    print(f"errors:   {err_url} ({rows_reported} rows)")
    return 0


def _embed_shards(
    embedder: LayerEmbedder, plans: list[ShardPlan], staging: str, meta: dict[str, Any], err_url: str
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Embed the shards not yet done under ``staging`` (the audit's embed stage in process,
    :func:`memray.job.local.embed_shards`), write the error rows to ``err_url``; returns the counts and the shards'
    feature files ``(url, rows)`` in order. A shard's key: the embed config, the image limits and the weights."""
    from memray.job.collect import collect_errors
    from memray.job.keys import stage_embed_key
    from memray.job.local import embed_shards

    stage = {"embed": to_dict(embedder.cfg), "max_image_pixels": DEFAULT_MAX_PIXELS, "resources.shard_rows": SHARD_ROWS}
    key = stage_embed_key(stage, embedder.weights_info)
    prepare = embedder.preprocessor.prepare
    log.info("%s: %d shard(s) under %s, batches of %d", meta["input"], len(plans), staging, embedder.cfg.batch_size)
    embed_shards(lambda: embedder, plans, staging, meta, prepare, DEFAULT_MAX_PIXELS, key, embedder.weights_info)
    errors, by_set, pieces = collect_errors(staging, plans, {}, None)  # checks rows read = embedded + reported
    with open_output(err_url) as fh:
        pq.write_table(errors, fh)
    if errors.num_rows:
        by_status = Counter(errors.column(schema.STATUS).to_pylist())
        log.warning("%s: %d image(s) not decodable (%s); see %s", meta["input"], errors.num_rows, dict(by_status),
                    err_url)  # fmt: skip
    counts = by_set.get(meta["set"], {"rows_read": 0, "rows_embedded": 0, "rows_reported": 0})
    return {k: counts[k] for k in ("rows_read", "rows_embedded", "rows_reported")}, pieces.get(meta["set"], [])


def _concat(out: str, pieces: list[tuple[str, int]], meta: dict[str, Any]) -> None:
    """Stream the shards' feature files into one ``out`` (one shard in memory at a time), ``meta`` in its schema."""
    with open_output(out) as fh, contextlib.ExitStack() as stack:
        writer = None
        for url, _ in pieces:
            with open_url(url, "rb") as src:
                table = pq.read_table(src)
            if writer is None:
                sch = table.schema.with_metadata({schema.META_KEY: json.dumps(meta, sort_keys=True).encode()})
                writer = stack.enter_context(pq.ParquetWriter(fh, sch, **parquet_options(sch)))
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
