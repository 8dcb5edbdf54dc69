"""Settings of the per-layer ViT embedder (:class:`EmbedConfig`): model, weights, layers, pooling, input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from memray.config import NON_EMPTY, at_least, fail, rule, validate

POOLINGS: tuple[str, ...] = ("cls", "mean", "auto")

Preprocess = Literal["paper", "model"]

PREPROCESS_PRESETS: tuple[str, ...] = get_args(Preprocess)


def _layers_ok(v: object) -> bool:
    return v == "all" or (len(v) > 0 and min(v) >= 0 and len(set(v)) == len(v))


def _pooling_ok(v: tuple[str, ...]) -> bool:
    return len(v) > 0 and set(v) <= set(POOLINGS) and len(set(v)) == len(v)


def _std_ok(v: tuple[float, ...]) -> bool:
    return len(v) > 0 and min(v) > 0


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of the per-layer ViT embedder.

    ``layers``: ``"all"`` or a tuple of block numbers (layer ℓ = output of block ℓ, 1…L; 0 = patch embedding).
    ``weights``: a local path or fsspec URL of a ``.safetensors`` file; ``None`` resolves the timm name through
    the model hub. ``random_init`` must be explicit and is recorded. ``pooling``: ``cls`` (token 0), ``mean`` (of
    the patch tokens) or ``auto`` (``cls`` where the model has a class token, else ``mean``; recorded as resolved).

    The encoder's input: ``preprocess`` names a preset (``paper`` or the model's timm data config); ``mean``,
    ``std`` (one value per input channel of the model), ``resize`` (the short side before the crop) and ``crop``
    (the square side fed to the encoder), when set, override the preset's values. ``None`` = the preset's.
    """

    SECTION = "embed"

    model: str = field(default="vit_base_patch16_224.orig_in21k", metadata=NON_EMPTY)
    weights: str | None = field(default=None, metadata=NON_EMPTY)
    random_init: bool = False
    pooling: tuple[str, ...] = field(
        default=("cls",), metadata=rule(f"(non-empty, from {', '.join(POOLINGS)}, no repeats)", _pooling_ok)
    )
    layers: Literal["all"] | tuple[int, ...] = field(
        default="all", metadata=rule("(block numbers >= 0, non-empty, no repeats)", _layers_ok)
    )
    norm: bool = False
    preprocess: Preprocess = "paper"
    mean: tuple[float, ...] | None = field(default=None, metadata=NON_EMPTY)
    std: tuple[float, ...] | None = field(default=None, metadata=rule("(non-empty, every value > 0)", _std_ok))
    resize: int | None = field(default=None, metadata=at_least(1))
    crop: int | None = field(default=None, metadata=at_least(1))
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = field(default=64, metadata=at_least(1))
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        validate(self)
        if self.random_init and self.weights:
            raise fail(self, "random_init", "false when embed.weights is given (give either weights or random_init)")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise fail(self, "std", f"one value per channel, as many as embed.mean ({len(self.mean)})")
        if self.resize is not None and self.crop is not None and self.resize < self.crop:
            raise fail(self, "resize", f"an integer >= embed.crop ({self.crop}): the crop is cut from the resized one")
