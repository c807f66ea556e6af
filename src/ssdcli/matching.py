"""Assign every default box a ground-truth box: SSD paper sec. 2.2 "Matching strategy", as the
authors' Caffe ``MatchBBox`` (caffe/src/caffe/util/bbox_util.cpp, match_type PER_PREDICTION) does.

1. Bipartite matching: repeatedly take the (object, default box) pair with the highest IoU among
   the objects and default boxes not yet matched, match them, and remove both, until every
   object has its own default box or no remaining pair overlaps (Caffe keeps only IoU > 1e-6).
   Two objects whose best default box is the same both get a positive: the one with the higher
   IoU takes it, the other its best remaining box. Ties go to the lower default-box index, then
   the lower object index (Caffe's scan order with a strict ``>``).
2. Every other default box takes the ground-truth box with which its IoU is highest (the lower
   index on a tie), and is positive when that IoU is >= 0.5 (Caffe ``overlap_threshold``),
   background otherwise.

Everything is batched: ground truth arrives padded to ``G`` boxes per image (label 0 = padding).
Step 1 equals "each object takes its best default box" whenever no two objects of an image share
one, so only the images where two do run the greedy loop, one step per object (at most ``G``
steps, each vectorised over those images and all their pairs); no Python loop runs over priors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssdcli.boxes import batched_box_iou_xyxy, cxcywh_to_xyxy, xyxy_to_cxcywh
from ssdcli.codec import encode

# Caffe MatchBBox stores only overlaps above this; an object whose every IoU is at most this gets
# no default box.
MIN_OVERLAP = 1e-6


def match(
    gt_boxes_xyxy: Tensor,
    gt_labels: Tensor,
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Match default boxes to ground truth: bipartite first, then per default box at
    ``iou_threshold`` (the module docstring; Caffe ``MatchBBox``).

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
    prior_of_gt = bipartite_match(iou)  # (B, G), -1 = no default box

    # Each matched object's default box is positive for it, whatever its IoU. The priors of one
    # image are distinct, so the scatter has no collisions; unmatched objects write to a spare
    # column P that is cut off.
    gt_ids = torch.arange(num_gt, device=gt_labels.device).expand(batch, num_gt)  # (B, G)
    forced = torch.full((batch, num_priors + 1), -1, dtype=torch.int64, device=gt_labels.device)
    forced.scatter_(1, torch.where(prior_of_gt >= 0, prior_of_gt, num_priors), gt_ids)
    forced = forced[:, :num_priors]  # (B, P)
    is_forced = forced >= 0
    best_gt_index = torch.where(is_forced, forced, best_gt_index)

    labels = gt_labels.gather(1, best_gt_index)  # (B, P)
    positive = is_forced | (best_gt_iou >= iou_threshold)
    labels = torch.where(positive, labels, torch.zeros_like(labels))
    best_gt_index = torch.where(positive, best_gt_index, torch.zeros_like(best_gt_index))
    return labels, best_gt_index


def bipartite_match(iou: Tensor) -> Tensor:
    """Step 1 of the module docstring: a distinct default box for each object, greedily by IoU.

    Args:
        iou: Tensor[B, G, P], IoU of each object with each default box; rows of padding hold a
            negative value and are never matched.

    Returns:
        Tensor[B, G] int64, the default box matched to each object, -1 for padding and for an
        object that overlaps no free default box by more than :data:`MIN_OVERLAP`.
    """
    best_iou, best_prior = iou.max(dim=2)  # (B, G); max returns the first (lowest) index
    candidate = best_iou > MIN_OVERLAP  # (B, G)
    prior_of_gt = torch.where(candidate, best_prior, torch.full_like(best_prior, -1))  # (B, G)
    # Images where two objects want the same default box: only there does the greedy order matter.
    shared = (best_prior[:, :, None] == best_prior[:, None, :]) & candidate[:, :, None] & candidate[:, None, :]
    shared &= ~torch.eye(iou.shape[1], dtype=torch.bool, device=iou.device)  # (B, G, G)
    contested = shared.flatten(1).any(dim=1).nonzero().flatten()  # (B',)
    if contested.numel() > 0:
        prior_of_gt[contested] = _greedy_bipartite(iou[contested], best_iou[contested], best_prior[contested])
    return prior_of_gt


def _greedy_bipartite(iou: Tensor, best_iou: Tensor, best_prior: Tensor) -> Tensor:
    """Caffe's loop on Tensor[B', G, P] (modified in place), one matched pair per step and image.

    ``best_iou`` / ``best_prior`` (Tensor[B', G], each object's best free default box, the lowest
    index on a tie) are kept current instead of searching the whole matrix each step: taking a
    default box only changes the rows whose best it was.
    """
    batch, num_gt, num_priors = iou.shape
    prior_of_gt = torch.full((batch, num_gt), -1, dtype=torch.int64, device=iou.device)
    images = torch.arange(batch, device=iou.device)
    best_iou, best_prior = best_iou.clone(), best_prior.clone()
    for _ in range(num_gt):  # each step matches one object per image, or ends that image
        top = best_iou.max(dim=1, keepdim=True).values  # (B', 1)
        found = top.squeeze(1) > MIN_OVERLAP  # (B',)
        if not found.any():
            break
        # Caffe's scan order on ties: the lowest default box, then the lowest object.
        at_top = best_iou == top  # (B', G)
        prior = torch.where(at_top, best_prior, num_priors).min(dim=1, keepdim=True).values  # (B', 1)
        gt = (at_top & (best_prior == prior)).to(torch.uint8).argmax(dim=1)  # (B',) first such object
        rows, gt, prior = images[found], gt[found], prior.squeeze(1)[found]
        prior_of_gt[rows, gt] = prior
        best_iou[rows, gt] = -1.0  # the object is matched
        iou[rows, :, prior] = -1.0  # and so is its default box
        taken = torch.full((batch,), -1, dtype=torch.int64, device=iou.device).index_copy(0, rows, prior)  # (B',)
        stale = (best_prior == taken[:, None]) & (best_iou > MIN_OVERLAP)  # (B', G): their best is gone
        image_index, gt_index = stale.nonzero(as_tuple=True)
        if image_index.numel() > 0:
            best_iou[image_index, gt_index], best_prior[image_index, gt_index] = iou[image_index, gt_index].max(dim=1)
    return prior_of_gt


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
