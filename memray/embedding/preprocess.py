"""Image preprocessing presets: uint8 HWC RGB arrays → a float32 NCHW batch for the encoder.

Presets:

- ``paper`` (He et al. 2024): resize the short side to ``round(S · 256/224)`` (256 for S = 224) with bilinear
  interpolation (Pillow's, which antialiases, i.e. torchvision's default ``antialias=True``), centre-crop S×S,
  ``ToTensor`` (0..1), normalise with mean = std = 0.5 (so values lie in [-1, 1]). S is the model's input size.
- ``model``: the model's own eval transform, ``timm.data.create_transform(**resolve_model_data_config(model))``,
  with the input size taken from the model actually built (so ``img_size=224`` on a DINOv2 is honoured).

Inputs: ``(H, W, 3)`` RGB, ``(H, W)`` or ``(H, W, 1)`` greyscale (replicated to RGB) or ``(H, W, 4)`` RGBA
(alpha dropped, as :func:`memray.io.images.decode_image` does), all uint8. The object is picklable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from memray.config import PREPROCESS_PRESETS, ConfigError, EmbedConfig
from memray.embedding.prepare import PaperPrepare
from memray.io.images import ImageDecodeError, decode_array

PAPER_RESIZE_RATIO = 256 / 224  # short side before the centre crop, relative to the crop (paper: 256 → 224)
PAPER_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
PAPER_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_INPUT_SIZE: tuple[int, int] = (224, 224)


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
    def paper(cls, input_size: int | tuple[int, int] = DEFAULT_INPUT_SIZE) -> Preprocessor:
        """The paper's pipeline for an encoder taking ``input_size`` (S or (H, W)) pixels."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        resize = round(min(h, w) * PAPER_RESIZE_RATIO)
        params = {
            "input_size": [3, h, w],
            "resize_short_side": resize,
            "crop": [h, w],
            "interpolation": "bilinear",
            "antialias": True,
            "mean": list(PAPER_MEAN),
            "std": list(PAPER_STD),
        }
        return cls("paper", params)

    @classmethod
    def for_model(cls, preset: str, model: torch.nn.Module) -> Preprocessor:
        """The preset resolved for a built timm model (its input size; its data config for ``model``)."""
        from timm.data import resolve_model_data_config

        size = model_input_size(model)
        if preset == "paper":
            return cls.paper(size)
        data = resolve_model_data_config(model, args={"input_size": (3, *size)})
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
        return cls(preset, params)

    @classmethod
    def from_config(cls, cfg: EmbedConfig) -> Preprocessor:
        """The preprocessor an embedder built from ``cfg`` will use, without loading weights.

        The architecture is instantiated on PyTorch's ``meta`` device (no memory, no weights), so a driver or CPU
        stage can preprocess without a model copy.
        """
        import timm

        if not timm.is_model(cfg.model):
            raise ConfigError(f"unknown timm model {cfg.model!r}; list names with timm.list_models('vit_*')")
        with torch.device("meta"):
            model = timm.create_model(cfg.model, pretrained=False, **dict(cfg.model_kwargs))
        return cls.for_model(cfg.preprocess, model)

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
            uint8 ``(3, H', W')`` with ``(3, H', W') == input_size``: small to ship to an accelerator, where
            :meth:`finish` completes the pipeline.
        """
        if self.preset == "paper":
            return self.paper_prepare()(image)
        out = np.asarray(self.transform(to_pil(image)))
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def paper_prepare(self) -> PaperPrepare:
        """The torch-free CPU half of the paper preset (what Ray's read tasks run)."""
        if self.preset != "paper":
            raise ConfigError(f"preset {self.preset!r} has no torch-free prepare; only 'paper' does")
        return PaperPrepare(int(self.params["resize_short_side"]), tuple(self.params["crop"]))

    def finish(self, prepared: torch.Tensor) -> torch.Tensor:
        """The float part for a batch of :meth:`prepare` outputs, on the tensor's own device.

        Args:
            prepared: uint8 ``(N, 3, H, W)``.

        Returns:
            float32 ``(N, 3, H, W)``: ``(x / 255 − mean) / std`` (torchvision's ToTensor + Normalize, same ops).
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
            float32 tensor ``(N, 3, H, W)`` (``input_size``), on the CPU.
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
            "transform": f"{self.transform!r} + ToTensor + Normalize(mean, std)",
            "input": "uint8 RGB; greyscale replicated to RGB; alpha dropped",
        }


def _checked(img: np.ndarray, index: int) -> np.ndarray:
    try:
        return decode_array(img)
    except ImageDecodeError as exc:
        raise ValueError(f"image {index}: {exc.message}") from exc


def to_pil(img: np.ndarray) -> Image.Image:
    """A uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as an RGB PIL image."""
    return Image.fromarray(decode_array(img))


def model_input_size(model: torch.nn.Module) -> tuple[int, int]:
    """``(H, W)`` the model is built for: its patch embedding's fixed size, else its pretrained config's."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(model, "dynamic_img_size", False):
        return int(img_size[0]), int(img_size[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size else DEFAULT_INPUT_SIZE
