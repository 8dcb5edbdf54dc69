"""Pixel space: the prepared images themselves at a fixed small size, an evidence space beside the encoder's layers.

A memorizer that reproduces a few hundred training images blurrily, or a sampler that adds pixel noise to training
images, can sit far from its sources in every layer of an encoder (noise and blur move ViT features) and close to
them in pixels. So every image the job embeds also gets ``pixel_features``: the encoder's prepared uint8 input
``(C, S, S)`` averaged over channels (grey), reduced to ``size × size`` by box averaging (PIL ``BOX``: each output
pixel the mean of the input pixels it covers), scaled to [0, 1] and flattened: ``(size²,)`` float32. No per-image
normalisation: the layer's PCA and metric apply as for every layer. Its column is ``pixels`` (layer number
:data:`memray.io.schema.PIXEL_LAYER`); it gets views like the layers, and replication, concentration and leaked
images like them, but no C_T (it is not a layer of the encoder's curve).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from memray.io.schema import PIXEL_LAYER


def pixel_features(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(n, C, S, S)`` prepared images → float32 ``(n, size²)`` grey pixels in [0, 1] (module docstring)."""
    images = np.asarray(images)
    out = np.empty((len(images), size * size), np.float32)
    for i, img in enumerate(images):
        grey = img.astype(np.float32).mean(axis=0)
        small = Image.fromarray(grey, mode="F").resize((size, size), Image.BOX)
        out[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    return out


def with_pixels(feats: dict[int, np.ndarray], images: np.ndarray, size: int) -> dict[int, np.ndarray]:
    """``feats`` (``{ℓ: (n, D)}`` of ``images``) with pixel space added under :data:`PIXEL_LAYER` when ``size`` > 0."""
    if size <= 0 or not len(images):
        return feats
    return {**feats, PIXEL_LAYER: pixel_features(images, size)}
