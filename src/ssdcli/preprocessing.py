"""How an image becomes the network's input: channel order, normalisation and resize rule.

Every path from pixels to a network input goes through :func:`to_network_input` (``ssd detect``,
``ssd eval``, video frames, export checks) with the checkpoint's :class:`Preprocessing`
(:func:`preprocessing_of`), so an imported model sees exactly its source's input. Training and
validation use ``ssdcli.data.transforms``, which is this project's ``uint8`` rule in RGB order:
the rule ``ssd train`` checkpoints store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssdcli.data.transforms import normalize, resize_uint8

CHANNEL_ORDERS = ("rgb", "bgr")
RESIZE_RULES = ("uint8", "float", "cv2")
"""How an image is resized to the square input (:func:`to_network_input`):

- ``uint8``: this project's rule: ``data.transforms.resize_uint8`` (bilinear, no antialias, the
  result rounded to uint8), then normalised.
- ``float``: torchvision's ``GeneralizedRCNNTransform``: the image scaled to [0, 1] and
  normalised in float32, then ``F.interpolate(mode="bilinear", align_corners=False)``, never
  rounded.
- ``cv2``: ssd.pytorch's ``BaseTransform``: ``cv2.resize`` (``INTER_LINEAR``, OpenCV's
  fixed-point arithmetic) of the uint8 BGR image, then float32 minus the mean.

The three give different pixels (``uint8`` and ``cv2`` differ by one grey level on about 15 % of
the pixels of a VOC photo; ``uint8`` and ``float`` by up to 0.84 of a level), so an imported
model is exact only with its own rule.
"""


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the network's input ``Tensor[3, S, S]``.

    Attributes:
        image_size: S, the side of the square input (the image is resized without keeping its
            aspect ratio).
        channel_order: ``rgb`` or ``bgr``: the order of the network's input channels.
        mean, std: per input channel, in that order, in [0, 1] units: the input is
            ``(pixel / 255 - mean) / std``. Sources that subtract a 0-255 mean without scaling
            (ssd.pytorch: ``pixel - 104``) are ``mean = 104 / 255, std = 1 / 255``.
        resize: one of :data:`RESIZE_RULES`.
    """

    image_size: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel order {self.channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize rule {self.resize!r}: expected one of {', '.join(RESIZE_RULES)}")


def preprocessing_of(checkpoint: Mapping[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` of a loaded checkpoint dict (or of export metadata with the
    same keys: ``image_size``, ``channel_order``, ``mean``, ``std``, ``resize``; the last two
    default to ``rgb`` / ``uint8``, version 1's meaning)."""
    return Preprocessing(
        int(checkpoint["image_size"]),
        str(checkpoint.get("channel_order", "rgb")),
        tuple(float(m) for m in checkpoint["mean"]),
        tuple(float(s) for s in checkpoint["std"]),
        str(checkpoint.get("resize", "uint8")),
    )


def to_network_inputs(images_rgb: list[Tensor], prep: Preprocessing) -> Tensor:
    """:func:`to_network_input` of each image, stacked: float32 Tensor[B, 3, S, S]."""
    if not images_rgb:
        return torch.empty(0, 3, prep.image_size, prep.image_size)
    return torch.stack([to_network_input(image, prep) for image in images_rgb])


def to_network_input(image_rgb: Tensor, prep: Preprocessing) -> Tensor:
    """One image as the network input.

    Args:
        image_rgb: uint8 Tensor[3, H, W], RGB (as ``torchvision.io.decode_image`` gives it).
        prep: the model's preprocessing.

    Returns:
        float32 Tensor[3, S, S], channels in ``prep.channel_order``, normalised.
    """
    if image_rgb.dtype != torch.uint8 or image_rgb.dim() != 3 or image_rgb.shape[0] != 3:
        raise ValueError(f"expected a uint8 Tensor[3, H, W], got {image_rgb.dtype} {tuple(image_rgb.shape)}")
    size = prep.image_size
    image = image_rgb.flip(0) if prep.channel_order == "bgr" else image_rgb  # (3, H, W) network order
    if prep.resize == "uint8":
        return normalize(resize_uint8(image, size), prep.mean, prep.std)
    if prep.resize == "float":
        # torchvision GeneralizedRCNNTransform: normalize, then resize (transform.py).
        mean = torch.tensor(prep.mean).view(3, 1, 1)
        std = torch.tensor(prep.std).view(3, 1, 1)
        normalised = (image.float() / 255.0 - mean) / std  # (3, H, W)
        resized = F.interpolate(normalised[None], size=[size, size], mode="bilinear", align_corners=False)
        return resized[0]  # (3, S, S)
    return _cv2_input(image, prep)


def _cv2_input(image: Tensor, prep: Preprocessing) -> Tensor:
    """ssd.pytorch ``BaseTransform``: ``cv2.resize(image, (S, S)).astype(float32) - mean`` on 0-255."""
    import cv2  # heavy optional import, only this rule needs it

    size = prep.image_size
    hwc = image.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3), network channel order
    resized = torch.from_numpy(cv2.resize(hwc, (size, size), interpolation=cv2.INTER_LINEAR))  # (S, S, 3)
    mean_255 = torch.tensor([255.0 * m for m in prep.mean], dtype=torch.float32)  # 104, 117, 123
    std_255 = torch.tensor([255.0 * s for s in prep.std], dtype=torch.float32)  # 1, 1, 1
    return ((resized.float() - mean_255) / std_255).permute(2, 0, 1).contiguous()  # (3, S, S)
