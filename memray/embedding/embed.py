"""Per-layer ViT embeddings in one forward pass (timm ``forward_intermediates``), pooled per block.

Layer numbering: ℓ = 1…L is the residual-stream output of block ℓ (HF ``hidden_states[ℓ]``); ℓ = 0, only when
asked for, is the input to block 1: patch embedding + prefix tokens + position embedding (+ ``norm_pre``, which
CLIP models have). With ``norm=True`` the model's final LayerNorm is applied to every layer, 0 included.

Pooling: ``cls`` is token 0 of the sequence (the class token; the paper's choice); ``mean`` averages the patch
tokens only, excluding every prefix token (class, distillation and register tokens); ``auto`` is ``cls`` where the
model has a class token and ``mean`` where it has none (SigLIP, ``class_token=False`` models), recorded as resolved.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from memray.config import to_dict
from memray.embedding.config import EmbedConfig
from memray.embedding.preprocess import Preprocessor, meta_model, model_channels, model_input_size
from memray.embedding.weights import load_model, preflight_model

log = logging.getLogger(__name__)

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_OUT_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
FLOAT16_MAX = 65504.0
_TORCH_OUT: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


class EmbedError(ValueError):
    """The model cannot give what the config asks for; the message says what to change."""


def resolve_layers(layers: str | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """Absolute, sorted layer numbers: ``"all"`` → 1…L; explicit numbers must lie in 0…L, without repeats."""
    if layers == "all":
        return tuple(range(1, num_blocks + 1))
    if isinstance(layers, str):
        raise EmbedError(f"layers={layers!r}: use 'all' or a list of block numbers 0…{num_blocks}")
    out = [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x <= num_blocks]
    if bad or not out:
        raise EmbedError(
            f"layers={list(layers)} (embed.layers / --layers): this model has blocks 1…{num_blocks} "
            f"(0 = patch embedding); use numbers in 0…{num_blocks} or 'all'"
        )
    if len(set(out)) != len(out):
        raise EmbedError(f"layers={list(layers)} (embed.layers / --layers): repeated layer numbers")
    return tuple(sorted(out))


def check_encoder(cfg: EmbedConfig, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-flight check of ``cfg``'s encoder, cheap enough to run before anything starts.

    Builds the architecture on the meta device and checks what :class:`LayerEmbedder` would refuse: the timm name,
    the weights file (suffix, existence, safetensors header, names and shapes; tensor data is not read, the hub is
    not contacted — see :func:`memray.embedding.weights.preflight_model`), a token-sequence ``forward_intermediates``,
    ``layers`` against the number of blocks, a CLS token for ``cls`` pooling, a ViT stem for layer 0, the input
    fields against the model's channels, and a forward pass on the meta device of the ``(1, C, H, W)`` input the
    preprocessing makes (so a channel or size mismatch fails here, in one line, not in the embedding actors).

    Returns:
        ``{"model", "architecture", "num_blocks", "layers": resolved, "dims": {ℓ: D}, "pooling": resolved,
        "input_size": [C, H, W], "weights": record}``.

    Raises:
        WeightsError, EmbedError: ``ValueError`` subclasses whose one-line message names the field or file.
    """
    model, weights = preflight_model(cfg, storage_options)
    _check_token_model(model, cfg.model)
    num_blocks = len(model.blocks)
    layers = resolve_layers(cfg.layers, num_blocks)
    if "cls" in cfg.pooling:
        _require_cls(model, cfg.model)
    if 0 in layers:
        _require_stem(model, cfg.model)
    input_size = Preprocessor.for_config(cfg, model).input_size
    check_input(model, cfg, input_size)
    dim = _embed_dim(model)
    return {
        "model": cfg.model,
        "architecture": type(model).__name__,
        "num_blocks": num_blocks,
        "layers": list(layers),
        "dims": {layer: dim for layer in layers},
        "pooling": list(resolve_pooling(model, cfg.pooling)),
        "input_size": list(input_size),
        "weights": weights,
    }


def check_input(model: torch.nn.Module, cfg: EmbedConfig, input_size: tuple[int, int, int]) -> None:
    """Run ``model`` (on the meta device: shapes only) on a ``(1, *input_size)`` batch, as the embedder will.

    Raises:
        EmbedError: one line naming the model, the input fed and what to set, when the model refuses it.
    """
    x = torch.empty((1, *input_size), device="meta")
    try:
        with torch.device("meta"):
            model.forward_intermediates(
                x, indices=[len(model.blocks) - 1], return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
            )
    except Exception as exc:  # what the model raises is model-specific (AssertionError, RuntimeError, …)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, NotImplementedError) or "meta" in text.lower():  # a meta-device gap, not the input
            log.info("%s: the input check needs real tensors (%s); the model's first batch checks it", cfg.model, text)
            return
        c, h, w = input_size
        size = model_input_size(model)
        built = f"{size[0]}x{size[1]}, {model_channels(model)} channel(s)"
        advice = (
            f"leave embed.crop (--crop) unset, or build the model for the crop (model_kwargs img_size={h})"
            if (h, w) != size
            else "check model_kwargs (img_size, patch_size, in_chans)"
        )
        raise EmbedError(
            f"{cfg.model} does not take the {c}x{h}x{w} input (channels x height x width) memray feeds it "
            f"({type(exc).__name__}: {text}); the model is built for {built}: {advice}"
        ) from exc


def resolve_pooling(model: torch.nn.Module, pooling: Sequence[str]) -> tuple[str, ...]:
    """``pooling`` with ``auto`` resolved: ``cls`` when the model has a class token, else ``mean``."""
    auto = "cls" if has_cls_token(model) else "mean"
    return tuple(auto if p == "auto" else p for p in pooling)


def has_cls_token(model: torch.nn.Module) -> bool:
    """Whether token 0 of the model's sequence is a class token (a ``cls_token`` and at least one prefix token)."""
    return getattr(model, "cls_token", None) is not None and int(getattr(model, "num_prefix_tokens", 0)) >= 1


class LayerEmbedder:
    """Pooled embeddings of every requested layer of a timm ViT, from one forward pass per batch.

    Args:
        cfg: model, weights, layers, pooling, norm, preprocessing preset, output dtype, batch size.
        model: an already built timm model to use instead of :func:`memray.embedding.weights.load_model` (a deep copy is
            taken, because unneeded trailing blocks are pruned); ``weights_info`` then describes its weights.
        device: ``None`` → ``cuda`` (the current CUDA device, as assigned by the scheduler) when available, else CPU.
        autocast: ``"bfloat16"`` (default), ``"float16"`` or ``None`` (float32); used on CUDA only, CPU runs float32.
        num_threads: ``torch.set_num_threads`` value for CPU work (Ray workers default to 1 thread).
    """

    def __init__(
        self,
        cfg: EmbedConfig,
        *,
        model: torch.nn.Module | None = None,
        weights_info: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        autocast: str | None = "bfloat16",
        num_threads: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise EmbedError(f"autocast={autocast!r}: choose bfloat16, float16 or None")
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.cfg = cfg
        if model is None:
            model, weights_info = load_model(cfg, storage_options)
        else:
            model = copy.deepcopy(model)
        self.weights_info = dict(weights_info or {"source": "caller-provided model"})
        _check_token_model(model, cfg.model)
        self.num_blocks = len(model.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.embed_dim = _embed_dim(model)
        self.resolved_layers = resolve_layers(cfg.layers, self.num_blocks)
        if "cls" in cfg.pooling:
            _require_cls(model, cfg.model)
        if 0 in self.resolved_layers:
            _require_stem(model, cfg.model)
        self.preprocessor = Preprocessor.for_config(cfg, model)
        self.pooling = resolve_pooling(model, cfg.pooling)  # cfg.pooling with ``auto`` resolved
        self._block_indices = [layer - 1 for layer in self.resolved_layers if layer > 0]
        model.prune_intermediate_layers(self._block_indices or [0], prune_norm=not cfg.norm, prune_head=True)
        self.device = torch.device(device) if device is not None else _default_device()
        self.autocast_dtype = AUTOCAST_DTYPES[autocast] if autocast and self.device.type == "cuda" else None
        model = model.to(self.device).eval()
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.out_dtype = _OUT_DTYPES[cfg.dtype]
        self.dims = {layer: self.embed_dim for layer in self.resolved_layers}

    # ---- forward ----------------------------------------------------------------------------------------
    def _sequences(self, x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """``{ℓ: (patch tokens (B, N, D), prefix tokens (B, P, D) or None)}`` for every resolved layer."""
        m, out = self.model, {}
        if 0 in self.resolved_layers:  # the exact steps forward_intermediates runs before block 1
            h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            h = m.norm(h) if self.cfg.norm else h
            p = self.num_prefix_tokens
            out[0] = (h[:, p:], h[:, :p] if p else None)
        if self._block_indices:
            inter = m.forward_intermediates(
                x,
                indices=self._block_indices,
                return_prefix_tokens=True,
                output_fmt="NLC",
                intermediates_only=True,
                norm=self.cfg.norm,
            )
            for idx, item in zip(self._block_indices, inter, strict=True):
                out[idx + 1] = item if isinstance(item, tuple) else (item, None)
        return out

    def embed_batch(self, x: torch.Tensor) -> dict[str, dict[int, np.ndarray]]:
        """Pooled embeddings of one preprocessed batch.

        Args:
            x: float32 ``(B, C, H, W)`` as produced by :attr:`preprocessor`, or uint8 ``(B, C, H, W)`` from
                :meth:`Preprocessor.prepare` (normalised on the device: 4× less to transfer).

        Returns:
            ``{pooling: {ℓ: (B, D) array}}`` for every configured pooling (``"cls"``/``"mean"``/``"auto"``, keyed as
            configured; ``auto`` as resolved in :attr:`pooling`) and every layer of :attr:`resolved_layers`, dtype
            ``cfg.dtype`` (float32 by default).
        """
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = self.preprocessor.finish(x)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
            ):
                seqs = self._sequences(x)
            result: dict[str, dict[int, np.ndarray]] = {}
            for pooling, how in zip(self.cfg.pooling, self.pooling, strict=True):
                pooled = [
                    prefix[:, 0].float() if how == "cls" else patches.float().mean(dim=1)
                    for patches, prefix in (seqs[layer] for layer in self.resolved_layers)
                ]
                stacked = torch.stack(pooled)  # (layers, B, D) float32
                if self.cfg.dtype == "float16" and stacked.abs().amax() > FLOAT16_MAX:
                    raise EmbedError(
                        f"{pooling} embeddings exceed the float16 range (±{FLOAT16_MAX}); use dtype float32"
                    )
                stacked = stacked.to(_TORCH_OUT[self.cfg.dtype]).cpu().numpy()
                result[pooling] = {layer: stacked[i] for i, layer in enumerate(self.resolved_layers)}
        return result

    def embed(self, x: torch.Tensor) -> dict[int, np.ndarray]:
        """``{ℓ: (B, D)}`` for a single-pooling config (convenience over :meth:`embed_batch`)."""
        if len(self.cfg.pooling) != 1:
            raise EmbedError(f"embed() needs exactly one pooling, config has {self.cfg.pooling}; use embed_batch()")
        return self.embed_batch(x)[self.cfg.pooling[0]]

    def embed_prepared(self, prepared: np.ndarray) -> dict[int, np.ndarray]:
        """``{ℓ: (N, D)}`` for uint8 ``(N, C, H, W)`` outputs of :meth:`Preprocessor.prepare` (single pooling),
        run in chunks of ``cfg.batch_size``."""
        if len(self.cfg.pooling) != 1:
            raise EmbedError(f"embed_prepared() needs exactly one pooling, config has {self.cfg.pooling}")
        bs = self.cfg.batch_size
        parts = [
            self.embed(torch.from_numpy(np.ascontiguousarray(prepared[i : i + bs])))
            for i in range(0, len(prepared), bs)
        ]
        if not parts:
            return {layer: np.empty((0, self.embed_dim), self.out_dtype) for layer in self.resolved_layers}
        return {layer: np.concatenate([p[layer] for p in parts]) for layer in self.resolved_layers}

    def embed_images(
        self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int | None = None
    ) -> dict[str, dict[int, np.ndarray]]:
        """Preprocess and embed uint8 images in batches of ``batch_size`` (default ``cfg.batch_size``).

        Returns:
            ``{pooling: {ℓ: (N, D)}}`` in input order, as :meth:`embed_batch`.
        """
        bs = int(batch_size or self.cfg.batch_size)
        parts = [self.embed_batch(self.preprocessor(images[i : i + bs])) for i in range(0, len(images), bs)]
        if not parts:
            empty = np.empty((0, self.embed_dim), self.out_dtype)
            return {p: {layer: empty.copy() for layer in self.resolved_layers} for p in self.cfg.pooling}
        return {
            p: {layer: np.concatenate([part[p][layer] for part in parts]) for layer in self.resolved_layers}
            for p in self.cfg.pooling
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of everything that determines the embeddings (stored beside every output)."""
        import timm

        return {
            "model": self.cfg.model,
            "model_kwargs": dict(self.cfg.model_kwargs),
            "architecture": type(self.model).__name__,
            "weights": self.weights_info,
            "random_init": self.cfg.random_init,
            "pooling": list(self.cfg.pooling),
            "pooling_resolved": list(self.pooling),
            "layers": list(self.resolved_layers),
            "num_blocks": self.num_blocks,
            "num_prefix_tokens": self.num_prefix_tokens,
            "embed_dim": self.embed_dim,
            "norm": self.cfg.norm,
            "preprocess": self.preprocessor.describe(),
            "dtype": self.cfg.dtype,
            "device": str(self.device),
            "autocast": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None,
            "config": to_dict(self.cfg),
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
        }


def make_prepare(cfg: EmbedConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The picklable CPU half of ``cfg``'s preprocessing: ``(H, W, 3)`` uint8 RGB → uint8 ``(C, S, S)`` (C: the
    model's input channels).

    Pair it with :meth:`LayerEmbedder.embed_prepared` (or ``embed_batch`` on uint8), which finishes the
    normalisation on the device. Built without weights (see :meth:`Preprocessor.from_config`).
    """
    pre = Preprocessor.from_config(cfg)
    return pre.paper_prepare() if pre.preset == "paper" else pre.prepare  # the paper's half needs no torch


def describe_preprocessing(cfg: EmbedConfig) -> dict[str, Any]:
    """The record of ``cfg``'s preprocessing (:meth:`Preprocessor.describe`) and its pooling as resolved
    (``auto`` → ``cls``/``mean``), without loading weights (the architecture is built on the meta device)."""
    model = meta_model(cfg)
    return {**Preprocessor.for_config(cfg, model).describe(), "pooling": list(resolve_pooling(model, cfg.pooling))}


def _embed_dim(model: torch.nn.Module) -> int:
    return int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _check_token_model(model: torch.nn.Module, name: str) -> None:
    fi = getattr(model, "forward_intermediates", None)
    if fi is None or not hasattr(model, "blocks") or "return_prefix_tokens" not in inspect.signature(fi).parameters:
        raise EmbedError(
            f"{name} ({type(model).__name__}) has no token-sequence forward_intermediates; memray embeds ViT-family "
            "models (ViT, DeiT, DINO, DINOv2, CLIP ViT, EVA)"
        )


def _require_cls(model: torch.nn.Module, name: str) -> None:
    if not has_cls_token(model):
        raise EmbedError(
            f"{name} has no CLS token (num_prefix_tokens={getattr(model, 'num_prefix_tokens', 0)}, "
            f"global_pool={getattr(model, 'global_pool', None)!r}); use pooling 'mean' (mean of patch tokens) or "
            "'auto' (embed.pooling / --pooling)"
        )


def _require_stem(model: torch.nn.Module, name: str) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise EmbedError(f"layer 0 (patch embedding) is implemented for timm VisionTransformer models, not {name}")
