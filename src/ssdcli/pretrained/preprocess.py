"""The exact input an imported network expects: one function per resize rule of :data:`RESIZE_RULES`.

Each rule repeats its source's arithmetic in the source's order, so that the input tensors
(not only the pictures) are the source's, up to float32 rounding of the normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssdcli.data.transforms import normalize, resize_uint8
from ssdcli.pretrained.info import Preprocessing


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
