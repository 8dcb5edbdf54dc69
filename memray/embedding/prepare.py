"""The CPU half of the paper's preprocessing in plain PIL + numpy: resize the short side, centre-crop, uint8.

Identical, operation for operation, to torchvision's ``Resize(r, bilinear)`` + ``CenterCrop(S)`` on a PIL image
(the pipeline the authors used), but importable without torch: Ray's read tasks unpickle it without paying a
torch import in every worker process. The float half (``/255``, ``(x − mean)/std``) runs with the encoder
(:meth:`memray.embedding.preprocess.Preprocessor.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from memray.io.images import decode_array


@dataclass(frozen=True)
class PaperPrepare:
    """``(H, W[, C])`` uint8 image → uint8 ``(channels, crop_h, crop_w)``; picklable and torch-free.

    Attributes:
        resize_short_side: the short side after the bilinear (antialiased, PIL) resize; the long side keeps the
            aspect ratio, truncated to an integer (torchvision's rule).
        crop: ``(height, width)`` of the centre crop; offsets ``round((size − crop) / 2)``, zero-padded first
            when the image is smaller than the crop (torchvision's rule).
        channels: 3 (RGB) or 1 (greyscale: Pillow's ``convert("L")`` of the RGB image, before the resize).
    """

    resize_short_side: int
    crop: tuple[int, int]
    channels: int = 3

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = Image.fromarray(decode_array(image))
        if self.channels == 1:
            img = img.convert("L")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_short_side, int(self.resize_short_side * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_h, new_w) != (h, w):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        out = np.asarray(img)
        out = out[:, :, None] if out.ndim == 2 else out
        ch, cw = self.crop
        if ch > out.shape[0] or cw > out.shape[1]:  # pad (left/top get the floor half), as torchvision does
            ph, pw = max(ch - out.shape[0], 0), max(cw - out.shape[1], 0)
            out = np.pad(out, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        top = round((out.shape[0] - ch) / 2.0)
        left = round((out.shape[1] - cw) / 2.0)
        return np.ascontiguousarray(out[top : top + ch, left : left + cw].transpose(2, 0, 1))
