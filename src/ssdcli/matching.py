"""Assign every default box a ground-truth box: SSD paper sec. 2.2 "Matching strategy".

1. Every ground-truth box is matched to the default box with the best IoU ("best-prior forcing"),
   so no object is left without a positive, however badly the priors fit it.
2. Every other default box takes the ground-truth box with which its IoU is highest, and is
   positive when that IoU is >= 0.5 (Caffe ``overlap_threshold``), background otherwise.

When two ground-truth boxes force the same default box, the one with the larger index wins (the
order of the reference implementations' loop over objects), so results are deterministic.

Everything is batched: ground truth arrives padded to ``G`` boxes per image (label 0 = padding)
and no Python loop runs over images, priors or boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssdcli.boxes import batched_box_iou_xyxy, cxcywh_to_xyxy, xyxy_to_cxcywh
from ssdcli.codec import encode


def match(
    gt_boxes_xyxy: Tensor,
    gt_labels: Tensor,
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Match default boxes to ground truth.

    Args:
        gt_boxes_xyxy: Tensor[B, G, 4], ground truth, xyxy normalised (same units as the priors).
        gt_labels: Tensor[B, G] int64, 1-based class of each box; 0 marks padding. Boxes without
            positive width and height are treated as padding too.
        priors_cxcywh: Tensor[P, 4], default boxes, cxcywh normalised.
        iou_threshold: IoU at or above which a default box is positive.

    Returns:
        labels: Tensor[B, P] int64, the class of each default box, 0 = background.
        gt_index: Tensor[B, P] int64, index into G of the box each default box is matched to
            (meaningful where ``labels > 0``; 0 elsewhere).
    """
    batch, num_gt = gt_labels.shape
    num_priors = priors_cxcywh.shape[0]
    if num_gt == 0:
        zeros = torch.zeros(batch, num_priors, dtype=torch.int64, device=priors_cxcywh.device)
        return zeros, zeros.clone()

    wh = gt_boxes_xyxy[..., 2:] - gt_boxes_xyxy[..., :2]  # (B, G, 2)
    valid = (gt_labels > 0) & (wh > 0).all(dim=-1)  # (B, G)

    iou = batched_box_iou_xyxy(gt_boxes_xyxy, cxcywh_to_xyxy(priors_cxcywh))  # (B, G, P)
    iou = iou.masked_fill(~valid[..., None], -1.0)  # padding never wins a prior

    best_gt_iou, best_gt_index = iou.max(dim=1)  # (B, P): best box of each prior
    best_prior_index = iou.argmax(dim=2)  # (B, G): best prior of each box

    # Best-prior forcing (paper sec. 2.2). scatter_reduce with "amax" makes the larger gt index
    # win a shared prior, deterministically; padding carries -1 and never wins.
    gt_ids = torch.arange(num_gt, device=gt_labels.device).expand(batch, num_gt)
    gt_ids = torch.where(valid, gt_ids, torch.full_like(gt_ids, -1))  # (B, G)
    forced = torch.full((batch, num_priors), -1, dtype=torch.int64, device=gt_labels.device)
    forced.scatter_reduce_(1, best_prior_index, gt_ids, reduce="amax", include_self=True)  # (B, P)
    is_forced = forced >= 0
    best_gt_index = torch.where(is_forced, forced, best_gt_index)

    labels = gt_labels.gather(1, best_gt_index)  # (B, P)
    positive = is_forced | (best_gt_iou >= iou_threshold)
    labels = torch.where(positive, labels, torch.zeros_like(labels))
    best_gt_index = torch.where(positive, best_gt_index, torch.zeros_like(best_gt_index))
    return labels, best_gt_index


def assign_targets(
    gt_boxes_xyxy: Tensor,
    gt_labels: Tensor,
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
    *,
    variances: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Training targets for a batch: :func:`match` followed by :func:`ssdcli.codec.encode`.

    Args:
        gt_boxes_xyxy: Tensor[B, G, 4], xyxy normalised, padded (see :func:`match`).
        gt_labels: Tensor[B, G] int64, 0 = padding.
        priors_cxcywh: Tensor[P, 4], cxcywh normalised.
        iou_threshold: as :func:`match`.
        variances: ``(centre, size)`` of the model's prior spec (``model.prior_spec.variances``).

    Returns:
        labels: Tensor[B, P] int64, 0 = background.
        deltas: Tensor[B, P, 4], regression targets; exactly 0 for background default boxes so
            every value is finite.
    """
    labels, gt_index = match(gt_boxes_xyxy, gt_labels, priors_cxcywh, iou_threshold)
    batch, num_priors = labels.shape
    if gt_labels.shape[1] == 0:
        return labels, priors_cxcywh.new_zeros(batch, num_priors, 4)
    matched_xyxy = gt_boxes_xyxy.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, P, 4)
    positive = (labels > 0)[..., None]  # (B, P, 1)
    # Background rows get the prior itself as their "box": its deltas are 0, never log(0).
    matched_cxcywh = torch.where(positive, xyxy_to_cxcywh(matched_xyxy), priors_cxcywh)
    deltas = encode(matched_cxcywh, priors_cxcywh, variances)
    return labels, deltas
