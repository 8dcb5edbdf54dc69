"""Images/s of all-layer extraction (LayerEmbedder, every block, CLS) vs a plain ``forward_features`` call.

Same model, same weights, same input batch, timed alternately in one run (which path goes first alternates);
prints both throughputs from the fastest batch (robust to other load on the machine) and from the median, and
their ratios (goal ≥ 0.95×). On CUDA both run under the same bf16 autocast and channels_last, and with
``--peak-tflops`` the achieved fraction of the bf16 roofline is printed (FLOPs/img from the model config).

    python benchmarks/bench_embed.py --models vit_small_patch16_224,vit_base_patch16_224 --batch-size 16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from memray.embedding.config import EmbedConfig
from memray.embedding.embed import LayerEmbedder


def vit_flops_per_image(model: torch.nn.Module) -> float:
    """Forward FLOPs (2 per multiply-add) of a timm ViT from its config: patch embedding + blocks.

    Per block with N tokens, width D and MLP hidden H: 2N(4D² + 2DH) for qkv/proj/MLP plus 4N²D for attention.
    """
    d = model.embed_dim
    n_patches = model.patch_embed.num_patches
    n = n_patches + model.num_prefix_tokens
    p = model.patch_embed.patch_size
    hidden = model.blocks[0].mlp.fc1.out_features
    patch = 2 * n_patches * (3 * p[0] * p[1]) * d
    block = 2 * n * (4 * d * d + 2 * d * hidden) + 4 * n * n * d
    return float(patch + len(model.blocks) * block)


def _timed(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_model(name: str, batch_size: int, iters: int, warmup: int, peak_tflops: float | None) -> dict[str, float]:
    """Time both paths on one model; returns images/s of each, the ratio and (CUDA) roofline fractions."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    cfg = EmbedConfig(model=name, random_init=True, pooling=("cls",), layers="all", batch_size=batch_size)
    emb = LayerEmbedder(cfg, model=model)
    cuda = emb.device.type == "cuda"
    model = model.to(emb.device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, *emb.preprocessor.input_size[1:], generator=torch.Generator().manual_seed(0))
    x_dev = x.to(emb.device, memory_format=torch.channels_last) if cuda else x

    def baseline() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(
                emb.device.type, dtype=emb.autocast_dtype or torch.float32, enabled=emb.autocast_dtype is not None
            ),
        ):
            model.forward_features(x_dev)

    def layers() -> None:
        emb.embed_batch(x)  # includes the host→device copy and the pooled outputs' device→host copy

    times: dict[str, list[float]] = {"forward_features": [], "all_layers": []}
    pair = [("forward_features", baseline), ("all_layers", layers)]
    for i in range(warmup + iters):
        for label, fn in pair if i % 2 == 0 else pair[::-1]:  # alternate which path goes first
            dt = _timed(fn, cuda)
            if i >= warmup:
                times[label].append(dt)
    out = {label: batch_size / min(ts) for label, ts in times.items()}  # best batch: robust to other load
    out.update({f"median_{label}": batch_size / statistics.median(ts) for label, ts in times.items()})
    out["ratio"] = out["all_layers"] / out["forward_features"]
    out["median_ratio"] = out["median_all_layers"] / out["median_forward_features"]
    out["gflops_per_img"] = vit_flops_per_image(model) / 1e9
    if cuda and peak_tflops:
        for label in ("forward_features", "all_layers"):
            out[f"roofline_{label}"] = out[label] * out["gflops_per_img"] / (peak_tflops * 1e3)
    return out


def main() -> None:
    """Parse options, run every model, print one line each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224", help="comma-separated timm names")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5, help="timed batches per path (best and median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per path first")
    ap.add_argument("--num-threads", type=int, help="torch CPU threads")
    ap.add_argument("--peak-tflops", type=float, help="accelerator's dense bf16 peak (TFLOP/s) for the roofline")
    args = ap.parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; torch {torch.__version__}, timm {timm.__version__}; batch {args.batch_size}")
    print(f"{'model':28s} {'GFLOP/img':>9s} {'fwd_feat img/s':>14s} {'all-layer img/s':>15s} {'ratio':>6s}")
    for name in args.models.split(","):
        r = bench_model(name.strip(), args.batch_size, args.iters, args.warmup, args.peak_tflops)
        line = f"{name:28s} {r['gflops_per_img']:9.2f} {r['forward_features']:14.2f} {r['all_layers']:15.2f}"
        line += f" {r['ratio']:5.3f}x  (medians {r['median_forward_features']:.2f} / {r['median_all_layers']:.2f}"
        line += f" = {r['median_ratio']:.3f}x)"
        if "roofline_all_layers" in r:
            line += f"  roofline {r['roofline_forward_features']:.1%} / {r['roofline_all_layers']:.1%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
