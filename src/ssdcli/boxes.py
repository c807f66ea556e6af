"""Box formats and IoU.

Three formats, named in every function and argument that speaks one:

- ``xyxy``: corners ``(x1, y1, x2, y2)``, ``x1 <= x2``, ``y1 <= y2``;
- ``cxcywh``: centre and size ``(cx, cy, w, h)``;
- ``xywh``: COCO's top-left corner and size ``(x, y, w, h)``, used only at the COCO boundary.

A suffix ``_norm`` marks coordinates divided by the image size ([0, 1]), ``_px`` pixels.
All functions work on any leading shape ``(..., 4)`` and keep dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """Corners -> centre and size. ``boxes_xyxy: Tensor[..., 4]`` -> ``Tensor[..., 4]``."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """Centre and size -> corners. ``boxes_cxcywh: Tensor[..., 4]`` -> ``Tensor[..., 4]``."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    half_w, half_h = w * 0.5, h * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """COCO ``(x, y, w, h)`` -> corners. ``Tensor[..., 4]`` -> ``Tensor[..., 4]``."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes_xyxy: Tensor) -> Tensor:
    """Corners -> COCO ``(x, y, w, h)``. ``Tensor[..., 4]`` -> ``Tensor[..., 4]``."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_iou_xyxy(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1_xyxy: Tensor[N, 4], xyxy.
        boxes2_xyxy: Tensor[M, 4], xyxy, same units as ``boxes1_xyxy``.

    Returns:
        Tensor[N, M]: IoU in [0, 1]; 0 where the union is empty.
    """
    if boxes1_xyxy.numel() == 0 or boxes2_xyxy.numel() == 0:
        return boxes1_xyxy.new_zeros((boxes1_xyxy.shape[0], boxes2_xyxy.shape[0]))
    return _tv_box_iou(boxes1_xyxy, boxes2_xyxy).nan_to_num_(0.0)


def batched_box_iou_xyxy(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """IoU between every box of ``boxes1`` and every box of ``boxes2``, per batch element.

    torchvision's ``box_iou`` has no batch dimension; this is the same formula with one.

    Args:
        boxes1_xyxy: Tensor[B, N, 4], xyxy.
        boxes2_xyxy: Tensor[M, 4] (shared by the batch) or Tensor[B, M, 4], xyxy.

    Returns:
        Tensor[B, N, M]: IoU in [0, 1]; 0 where the union is empty (padding boxes of zero size).
    """
    if boxes2_xyxy.dim() == 2:
        boxes2_xyxy = boxes2_xyxy.unsqueeze(0)  # (1, M, 4)
    x1a, y1a, x2a, y2a = (c.unsqueeze(-1) for c in boxes1_xyxy.unbind(-1))  # (B, N, 1) each
    x1b, y1b, x2b, y2b = (c.unsqueeze(-2) for c in boxes2_xyxy.unbind(-1))  # (B, 1, M) each
    area1 = (x2a - x1a) * (y2a - y1a)  # (B, N, 1)
    area2 = (x2b - x1b) * (y2b - y1b)  # (B, 1, M)
    # One coordinate at a time: (B, N, M) planes are contiguous along M and vectorise, where a
    # trailing pair dimension (B, N, M, 2) measured slower for the same arithmetic (README "CPU
    # speed notes").
    width = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_(min=0)  # (B, N, M)
    height = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_(min=0)
    inter = width * height  # (B, N, M)
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
