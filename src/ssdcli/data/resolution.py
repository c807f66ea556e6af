"""How many pixels inference and training need from an image, and large images brought down to it.

A 12 MP phone photo has far more pixels than a network input of S x S (300 for SSD300) can use,
and decoding and augmenting all of them costs about a hundred times what a VOC image does.
``S`` below is the network's input side.

- **Inference** (``ssd detect``, ``ssd eval``, validation during training): a JPEG is decoded at
  1/2, 1/4 or 1/8 scale (libjpeg's scaled inverse DCT) when the reduced image still has at least
  :func:`inference_side` = 2 S pixels on both sides; the resize to S x S follows as before. With
  two or more pixels per input pixel left, the resize is still a true reduction, and the DCT
  scaling only averages away detail finer than those pixels (it filters better than the
  un-antialiased resize that follows would on the full image).
- **Training**: the min-IoU crop may keep as little as :data:`MIN_CROP_SCALE` (0.3) of each
  side, and that crop is then resized to S; for the smallest crop to keep S pixels, the image
  needs :func:`training_side` = ceil(S / 0.3) pixels on its shorter side (1000 for SSD300). The
  zoom-out makes the image smaller in the input, so it needs no more. A larger JPEG is decoded
  reduced to at least that, and every image whose shorter side is over :data:`SHRINK_MARGIN`
  times that is resized (antialiased, aspect kept) to exactly that before the augmentation,
  whose cost grows with the pixels (the zoom-out canvas is up to 4x the image on each side).
- **Boxes**: records keep the file's pixels. A reduction by ``s`` maps ``(x, y)`` to
  ``(x / s, y / s)`` exactly (reduced pixel ``i`` covers the file's pixels ``[s i, s (i + 1))``);
  a resize multiplies by the size ratio. Detections are scaled back with the file's own width
  and height, which the reduced grid (``ceil(W / s) * s``) can exceed by up to ``s - 1``
  pixels: a box coordinate moves by less than ``s`` pixels, under half a network-input pixel.
- **Unchanged**: images under ``2 * inference_side(S)`` pixels on a side for inference (1200 for
  SSD300, 1280 for ssdlite320) and with a shorter side up to ``SHRINK_MARGIN * training_side(S)``
  for training (1250 for SSD300), and every non-JPEG at inference, decode bit for bit as before;
  so do all the shared datasets (at most 640 pixels).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

MIN_CROP_SCALE = 0.3
"""Smallest side of the min-IoU crop as a fraction of the image's (Caffe ``ssd_pascal.py``
``batch_sampler`` ``min_scale``, as ssd.pytorch and torchvision)."""

INFERENCE_PIXELS_PER_INPUT_PIXEL = 2
"""Inference keeps at least this many image pixels per network-input pixel on each side."""

SHRINK_MARGIN = 1.25
"""Training resizes an image down only when its shorter side exceeds :func:`training_side` by
more than this factor (at least 36 % fewer pixels to augment), so near-sized images are not
resampled for little gain."""


def inference_side(size: int) -> int:
    """Pixels an image keeps on each side when decoded for inference at network input ``size``."""
    return INFERENCE_PIXELS_PER_INPUT_PIXEL * size


def training_side(size: int, crop: bool = True) -> int:
    """Pixels training needs on the image's shorter side at network input ``size``: the smallest
    min-IoU crop still has ``size`` pixels (``ceil(size / MIN_CROP_SCALE)``); without the crop,
    what inference keeps."""
    return math.ceil(round(size / MIN_CROP_SCALE, 6)) if crop else inference_side(size)  # 300 / 0.3 = 1000.0000000000001


def shrink_to_side(image: Tensor, boxes_xyxy_px: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """Resize an image whose shorter side is over ``SHRINK_MARGIN * side`` so that it is ``side``.

    Bilinear with antialiasing, aspect ratio kept (within a pixel); boxes scaled with it.
    Smaller images come back as they are (the same tensors).

    Args:
        image: uint8 Tensor[3, H, W].
        boxes_xyxy_px: Tensor[N, 4], xyxy pixels of ``image``.

    Returns:
        ``(image uint8 Tensor[3, h, w], boxes_xyxy_px Tensor[N, 4] in its pixels)``.
    """
    height, width = image.shape[-2:]
    if min(height, width) <= SHRINK_MARGIN * side:
        return image, boxes_xyxy_px
    factor = side / min(height, width)
    new_height, new_width = max(side, round(height * factor)), max(side, round(width * factor))
    resized = F.resize(image, [new_height, new_width], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    scale = torch.tensor([new_width / width, new_height / height] * 2, dtype=boxes_xyxy_px.dtype)
    return resized, boxes_xyxy_px * scale
