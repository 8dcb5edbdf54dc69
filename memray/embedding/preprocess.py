"""Image preprocessing presets: uint8 HWC RGB arrays → a float32 NCHW batch for the encoder.

Presets:

- ``paper`` (He et al. 2024): resize the short side to ``round(S · 256/224)`` (256 for S = 224) with bilinear
  interpolation (Pillow's, which antialiases, i.e. torchvision's default ``antialias=True``), centre-crop S×S,
  ``ToTensor`` (0..1), normalise with mean = std = 0.5 (so values lie in [-1, 1]). S is the model's input size.
- ``model``: the model's own eval transform, ``timm.data.create_transform(**resolve_model_data_config(model))``,
  with the input size taken from the model actually built (so ``img_size=224`` on a DINOv2 is honoured).

Explicit values override the preset's (``embed.mean``, ``embed.std``, ``embed.resize``: the short side before the
crop, ``embed.crop``: the side of the square fed to the encoder); the resolved values are what :meth:`describe`
records.

Channels follow the model built (its patch embedding's input channels): 3 → RGB; 1 (``in_chans=1``) → greyscale,
converted from RGB with Pillow's ``convert("L")`` (ITU-R 601-2 luma, exact for greyscale images), normalised with
one mean and std (the ``paper`` preset's 0.5; for ``model``, the average of timm's three values, unless given).

Inputs: ``(H, W, 3)`` RGB, ``(H, W)`` or ``(H, W, 1)`` greyscale (replicated to RGB) or ``(H, W, 4)`` RGBA
(alpha dropped, as :func:`memray.io.images.decode_image` does), all uint8. The object is picklable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from memray.config import ConfigError, FieldError
from memray.embedding.config import PREPROCESS_PRESETS, EmbedConfig
from memray.embedding.prepare import PaperPrepare
from memray.io.images import ImageDecodeError, decode_array

PAPER_RESIZE_RATIO = 256 / 224  # short side before the centre crop, relative to the crop (paper: 256 → 224)
PAPER_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
PAPER_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_INPUT_SIZE: tuple[int, int] = (224, 224)
CHANNELS: tuple[int, ...] = (1, 3)  # greyscale or RGB input
INPUT_TEXT: dict[int, str] = {  # how images reach the encoder, by its input channels (recorded)
    3: "uint8 RGB; greyscale replicated to RGB; alpha dropped",
    1: "uint8 greyscale (RGB → L: 0.299 R + 0.587 G + 0.114 B, Pillow's convert('L'); greyscale images kept "
    "exactly); alpha dropped",
}


class Preprocessor:
    """A picklable image → tensor transform built from a preset and resolved parameters.

    Build it with :meth:`paper`, :meth:`for_model` or :meth:`from_config`; ``params`` fully determine the
    pipeline and are what :meth:`describe` records.
    """

    def __init__(self, preset: str, params: dict[str, Any]) -> None:
        if preset not in PREPROCESS_PRESETS:
            raise ConfigError(f"preprocess={preset!r}: choose one of {', '.join(PREPROCESS_PRESETS)}")
        self.preset = preset
        self.params = dict(params)
        self._transform: transforms.Compose | None = None

    @classmethod
    def paper(
        cls,
        input_size: int | tuple[int, int] = DEFAULT_INPUT_SIZE,
        channels: int = 3,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: int | None = None,
    ) -> Preprocessor:
        """The paper's pipeline for an encoder taking ``input_size`` (S or (H, W)) pixels of ``channels`` channels;
        ``mean``, ``std`` and ``resize`` (short side before the crop) override the preset's values."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        params = {
            "input_size": [channels, h, w],
            "resize_short_side": int(resize or round(min(h, w) * PAPER_RESIZE_RATIO)),
            "crop": [h, w],
            "interpolation": "bilinear",
            "antialias": True,
            "mean": list(mean or PAPER_MEAN[:1] * channels),
            "std": list(std or PAPER_STD[:1] * channels),
        }
        return cls("paper", params)

    @classmethod
    def for_model(
        cls,
        preset: str,
        model: torch.nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: int | None = None,
        crop: int | None = None,
        name: str | None = None,
    ) -> Preprocessor:
        """The preset resolved for a built timm model (its input size and channels; its data config for
        ``model``), with the explicit ``mean``, ``std``, ``resize`` and ``crop`` over the preset's.

        Raises:
            FieldError: ``mean``/``std`` do not have one value per input channel of the model, or ``resize`` is
                smaller than the crop; ConfigError: the model takes neither 1 nor 3 channels.
        """
        from timm.data import resolve_model_data_config

        name = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        channels = checked_channels(model, name, mean=mean, std=std)
        size = (crop, crop) if crop else model_input_size(model)
        if resize is not None and resize < min(size):
            why = f"(embed.crop or the input size of {name}): the crop is cut from the resized image"
            raise FieldError("embed.resize", resize, f"an integer >= the crop {min(size)} {why}")
        if preset == "paper":
            return cls.paper(size, channels, mean=mean, std=std, resize=resize)
        data = resolve_model_data_config(model, args={"input_size": (channels, *size)})
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
        for key, given in (("mean", mean), ("std", std)):
            if given is not None:
                params[key] = [float(v) for v in given]
            elif len(params[key]) != channels:  # a greyscale model: one value, the average of timm's per-channel ones
                params[key] = [float(np.mean(params[key]))] * channels
        if resize is not None:
            params["crop_pct"] = crop_pct_for(min(size), resize)
        return cls(preset, params)

    @classmethod
    def for_config(cls, cfg: EmbedConfig, model: torch.nn.Module) -> Preprocessor:
        """:meth:`for_model` with ``cfg``'s preset and explicit ``mean``, ``std``, ``resize`` and ``crop``."""
        return cls.for_model(
            cfg.preprocess, model, mean=cfg.mean, std=cfg.std, resize=cfg.resize, crop=cfg.crop, name=cfg.model
        )

    @classmethod
    def from_config(cls, cfg: EmbedConfig) -> Preprocessor:
        """The preprocessor an embedder built from ``cfg`` will use, without loading weights.

        The architecture is instantiated on PyTorch's ``meta`` device (:func:`meta_model`), so a driver or CPU
        stage can preprocess without a model copy.
        """
        return cls.for_config(cfg, meta_model(cfg))

    # ---- transform: PIL stages (uint8 → uint8), then ToTensor + Normalize ----------------------------------
    def _build(self) -> transforms.Compose:
        p = self.params
        if self.preset == "paper":
            resize = transforms.Resize(
                p["resize_short_side"], interpolation=transforms.InterpolationMode.BILINEAR, antialias=True
            )
            return transforms.Compose([resize, transforms.CenterCrop(tuple(p["crop"]))])
        from timm.data import create_transform

        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in p.items()}
        stages = list(create_transform(**kwargs, is_training=False).transforms)
        names = [type(t).__name__ for t in stages]
        if names[-2:] != ["MaybeToTensor", "Normalize"] and names[-2:] != ["ToTensor", "Normalize"]:
            raise ConfigError(f"unexpected timm eval transform {names}; expected PIL stages, ToTensor, Normalize")
        return transforms.Compose(stages[:-2])

    @property
    def transform(self) -> transforms.Compose:
        """The PIL stages (resize, crop: PIL image → PIL image, uint8), built on first use."""
        if self._transform is None:
            self._transform = self._build()
        return self._transform

    def __getstate__(self) -> dict[str, Any]:
        return {"preset": self.preset, "params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.preset = state["preset"]
        self.params = state["params"]
        self._transform = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the tensors produced."""
        return tuple(self.params["input_size"])  # type: ignore[return-value]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The integer part of the pipeline for one image (resize + crop, CPU).

        Args:
            image: uint8 ``(H, W[, C])`` (see the module docstring for channels).

        Returns:
            uint8 ``(C, H', W')`` equal to ``input_size`` (C = 1 for a greyscale model): small to ship to an
            accelerator, where :meth:`finish` completes the pipeline.
        """
        if self.preset == "paper":
            return self.paper_prepare()(image)
        img = to_pil(image)
        out = np.asarray(self.transform(img.convert("L") if self.input_size[0] == 1 else img))
        return np.ascontiguousarray((out[:, :, None] if out.ndim == 2 else out).transpose(2, 0, 1))

    def paper_prepare(self) -> PaperPrepare:
        """The torch-free CPU half of the paper preset (what Ray's read tasks run)."""
        if self.preset != "paper":
            raise ConfigError(f"preset {self.preset!r} has no torch-free prepare; only 'paper' does")
        return PaperPrepare(int(self.params["resize_short_side"]), tuple(self.params["crop"]), self.input_size[0])

    def finish(self, prepared: torch.Tensor) -> torch.Tensor:
        """The float part for a batch of :meth:`prepare` outputs, on the tensor's own device.

        Args:
            prepared: uint8 ``(N, C, H, W)``.

        Returns:
            float32 ``(N, C, H, W)``: ``(x / 255 − mean) / std`` (torchvision's ToTensor + Normalize, same ops).
        """
        if prepared.dtype != torch.uint8 or prepared.ndim != 4 or tuple(prepared.shape[1:]) != self.input_size:
            raise ValueError(
                f"prepared batch is {prepared.dtype} {tuple(prepared.shape)}; expected uint8 (N, *{self.input_size})"
            )
        x = prepared.to(torch.float32).div(255)
        mean = torch.as_tensor(self.params["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.params["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Preprocess a batch (``finish`` of stacked ``prepare`` outputs).

        Args:
            images: a sequence of uint8 arrays (sizes may differ), or one uint8 array ``(N, H, W[, C])``.

        Returns:
            float32 tensor ``(N, C, H, W)`` (``input_size``), on the CPU.
        """
        prepared = [self.prepare(_checked(img, i)) for i, img in enumerate(images)]
        if not prepared:
            return torch.empty((0, *self.input_size), dtype=torch.float32)
        return self.finish(torch.from_numpy(np.stack(prepared)))

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the pipeline (preset, sizes, interpolation, normalisation, channel handling)."""
        return {
            "preset": self.preset,
            **self.params,
            "channels": self.input_size[0],
            "transform": f"{self.transform!r} + ToTensor + Normalize(mean, std)",
            "input": INPUT_TEXT[self.input_size[0]],
        }


def _checked(img: np.ndarray, index: int) -> np.ndarray:
    try:
        return decode_array(img)
    except ImageDecodeError as exc:
        raise ValueError(f"image {index}: {exc.message}") from exc


def to_pil(img: np.ndarray) -> Image.Image:
    """A uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as an RGB PIL image."""
    return Image.fromarray(decode_array(img))


def meta_model(cfg: EmbedConfig) -> torch.nn.Module:
    """``cfg``'s architecture on PyTorch's ``meta`` device: shapes only, no memory, no weights."""
    import timm

    if not timm.is_model(cfg.model):
        raise ConfigError(f"unknown timm model {cfg.model!r}; list names with timm.list_models('vit_*')")
    with torch.device("meta"):
        return timm.create_model(cfg.model, pretrained=False, **dict(cfg.model_kwargs))


def model_input_size(model: torch.nn.Module) -> tuple[int, int]:
    """``(H, W)`` the model is built for: its patch embedding's size (timm's default or the ``img_size`` model
    kwarg; also for a ``dynamic_img_size`` model, which takes other sizes too), else its pretrained config's."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return int(img_size[0]), int(img_size[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size else DEFAULT_INPUT_SIZE


def model_channels(model: torch.nn.Module) -> int:
    """Input channels of a timm model: its patch projection's ``in_channels``, else ``in_chans``, else 3."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    found = getattr(proj, "in_channels", None) or getattr(model, "in_chans", None)
    return int(found) if found else 3


def checked_channels(
    model: torch.nn.Module, name: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> int:
    """The model's input channels (1 or 3), refusing explicit ``mean``/``std`` of another length.

    Raises:
        ConfigError: the model takes neither 1 nor 3 channels; FieldError: ``mean``/``std`` have another length.
    """
    channels = model_channels(model)
    if channels not in CHANNELS:
        raise ConfigError(f"{name} takes {channels}-channel input; memray feeds RGB (3) or greyscale (in_chans=1)")
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) != channels:
            kind = "greyscale, in_chans=1" if channels == 1 else "RGB"
            allowed = f"{channels} value(s), one per input channel of {name} ({kind})"
            raise FieldError(f"embed.{key}", list(value), allowed)
    return channels


def crop_pct_for(crop: int, resize: int) -> float:
    """timm's ``crop_pct`` that makes its eval transform resize to ``resize`` before a ``crop`` crop:
    ``floor(crop / crop_pct) == resize`` (``crop / resize``, nudged down when float rounding would miss)."""
    pct = crop / resize
    while math.floor(crop / pct) < resize:
        pct = math.nextafter(pct, 0.0)
    return pct
