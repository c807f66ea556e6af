"""Box regression targets: SSD paper sec. 2.2, eq. 2, with Caffe's ``CENTER_SIZE`` variances.

For a box ``g`` and its default box ``d`` (both cxcywh, same units)::

    delta_cx = (g_cx - d_cx) / (v_c * d_w)      delta_w = log(g_w / d_w) / v_s
    delta_cy = (g_cy - d_cy) / (v_c * d_h)      delta_h = log(g_h / d_h) / v_s

with the variances ``(v_c, v_s)`` of the network's :class:`~ssdcli.priors.PriorSpec` (Caffe's
``(0.1, 0.2)`` by default); callers pass ``spec.variances``, so a checkpoint trained with others
decodes with its own. :func:`encode` and :func:`decode` are an inverse pair:
``decode(encode(g, d, v), d, v) == g`` up to float rounding, for every box of positive size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# exp() of a size delta larger than this overflows float16/float32 to inf; a box 1e4x its prior
# is meaningless anyway (Detectron's BBOX_XFORM_CLIP is log(1000 / 16) for the same reason).
MAX_LOG_SIZE_DELTA = math.log(1000.0 / 16.0)


def encode(boxes_cxcywh: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float]) -> Tensor:
    """Regression targets of boxes relative to their default boxes.

    Args:
        boxes_cxcywh: Tensor[..., P, 4], the box matched to each default box, cxcywh, with
            ``w, h > 0`` (a zero size gives ``-inf``; data readers drop such boxes).
        priors_cxcywh: Tensor[P, 4], default boxes, cxcywh, same units as ``boxes_cxcywh``.
        variances: ``(centre, size)`` variances, the prior spec's ``variances``.

    Returns:
        Tensor[..., P, 4]: deltas ``(dcx, dcy, dw, dh)``, unitless.
    """
    v_centre, v_size = variances
    centre = (boxes_cxcywh[..., :2] - priors_cxcywh[:, :2]) / (v_centre * priors_cxcywh[:, 2:])
    size = torch.log(boxes_cxcywh[..., 2:] / priors_cxcywh[:, 2:]) / v_size
    return torch.cat((centre, size), dim=-1)


def decode(deltas: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float]) -> Tensor:
    """Boxes from regression deltas: the inverse of :func:`encode`.

    Args:
        deltas: Tensor[..., P, 4], ``(dcx, dcy, dw, dh)`` as produced by the network.
        priors_cxcywh: Tensor[P, 4], default boxes, cxcywh.
        variances: ``(centre, size)`` variances, the prior spec's ``variances``.

    Returns:
        Tensor[..., P, 4]: boxes, cxcywh, in the units of ``priors_cxcywh``. Size deltas are
        clamped at ``MAX_LOG_SIZE_DELTA / v_size`` so an untrained network cannot produce inf.
    """
    return torch.cat(_centre_and_size(deltas, priors_cxcywh, variances), dim=-1)


def decode_xyxy(deltas: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float]) -> Tensor:
    """:func:`decode` as corners: bit for bit ``cxcywh_to_xyxy(decode(...))`` (the same
    operations on each number) in four tensor operations instead of nine, for post-processing, which
    decodes a few thousand candidates per batch and pays per operation.

    Returns:
        Tensor[..., P, 4]: boxes, xyxy, in the units of ``priors_cxcywh``.
    """
    centre, size = _centre_and_size(deltas, priors_cxcywh, variances)
    half = size * 0.5
    return torch.cat((centre - half, centre + half), dim=-1)


def _centre_and_size(deltas: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float]) -> tuple[Tensor, Tensor]:
    v_centre, v_size = variances
    centre = priors_cxcywh[:, :2] + deltas[..., :2] * v_centre * priors_cxcywh[:, 2:]
    size = priors_cxcywh[:, 2:] * torch.exp((deltas[..., 2:] * v_size).clamp(max=MAX_LOG_SIZE_DELTA))
    return centre, size
