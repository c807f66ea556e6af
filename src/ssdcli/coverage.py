"""How well a set of default boxes covers a dataset's ground truth (`ssd priors --data`).

For every ground-truth box: the best IoU with any prior, in the network's input frame. SSD
resizes the whole image to the input size without keeping the aspect ratio, so a box's position
in that frame is the box divided by the image size; IoU is unchanged by the per-axis scaling to
pixels, so it is computed on ``_norm`` coordinates. A box whose best IoU is below the matching
threshold (0.5, SSD paper sec. 2.2) is only matched through best-prior forcing, with a poorly
fitting prior: many such boxes mean the priors do not suit the data.

:func:`best_prior_iou` scores boxes against every prior. The default-box search
(:mod:`ssdcli.prior_fit`) scores many candidate shapes instead, one layer at a time:
:func:`grid_offsets` and :func:`shape_iou` give each box's best IoU with all priors of one shape
on one layer from the nearest grid centre alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssdcli.boxes import box_iou_xyxy, cxcywh_to_xyxy
from ssdcli.data.check import LARGE_AREA_PX, SMALL_AREA_PX
from ssdcli.data.records import DetectionDataset
from ssdcli.priors import LayerPriors, PriorSpec, generate_priors

MATCH_THRESHOLD = 0.5


@dataclass(frozen=True)
class CoverageGroup:
    """Best-IoU statistics of one group of boxes (all, one size bin, one class).
    Statistics are None when the group has no boxes."""

    name: str
    num_boxes: int
    mean_best_iou: float | None
    median_best_iou: float | None
    share_below: float | None  # fraction of boxes whose best IoU < the threshold

    def to_dict(self) -> dict:
        return {"name": self.name, "num_boxes": self.num_boxes, "mean_best_iou": self.mean_best_iou,
                "median_best_iou": self.median_best_iou, "share_below_threshold": self.share_below}


@dataclass(frozen=True)
class CoverageReport:
    """Prior coverage of a dataset. ``best_iou``: float[N] per ground-truth box (crowd boxes left
    out), in record order."""

    arch: str
    image_size: int
    num_priors: int
    threshold: float
    overall: CoverageGroup
    by_size: list[CoverageGroup]
    by_class: list[CoverageGroup]
    best_iou: np.ndarray

    def to_json(self) -> dict:
        return {
            "arch": self.arch,
            "image_size": self.image_size,
            "num_priors": self.num_priors,
            "threshold": self.threshold,
            "overall": self.overall.to_dict(),
            "by_size": [g.to_dict() for g in self.by_size],
            "by_class": [g.to_dict() for g in self.by_class],
        }


def best_prior_iou(boxes_xyxy_norm: Tensor, priors_cxcywh_norm: Tensor, chunk: int = 512) -> Tensor:
    """Best IoU of each box with any prior.

    Args:
        boxes_xyxy_norm: Tensor[N, 4], xyxy normalised to the image size.
        priors_cxcywh_norm: Tensor[P, 4], cxcywh normalised (unclipped, as matching uses them).
        chunk: boxes per IoU matrix, bounding memory to ``chunk * P`` floats.

    Returns:
        Tensor[N], IoU in [0, 1].
    """
    priors_xyxy_norm = cxcywh_to_xyxy(priors_cxcywh_norm)  # (P, 4)
    best = [box_iou_xyxy(part, priors_xyxy_norm).amax(dim=1) for part in boxes_xyxy_norm.split(chunk)]
    return torch.cat(best) if best else boxes_xyxy_norm.new_zeros(0)


def _group(name: str, best_iou: np.ndarray, threshold: float) -> CoverageGroup:
    if best_iou.size == 0:
        return CoverageGroup(name, 0, None, None, None)
    return CoverageGroup(name, int(best_iou.size), float(best_iou.mean()), float(np.median(best_iou)),
                         float((best_iou < threshold).mean()))


@dataclass(frozen=True)
class GroundTruth:
    """A dataset's non-crowd ground-truth boxes as the network sees them, in record order.

    Attributes:
        boxes_xyxy_norm: Tensor[N, 4] float32, xyxy divided by the image size (the squeeze to
            the square input keeps these coordinates).
        area_px: float32[N], area in original-image pixels (for the COCO size bins).
        labels: int64[N], 1-based class indices.
    """

    boxes_xyxy_norm: Tensor
    area_px: np.ndarray
    labels: np.ndarray


def network_ground_truth(dataset: DetectionDataset) -> GroundTruth:
    """Every non-crowd ground-truth box of ``dataset`` at the network input (see :class:`GroundTruth`)."""
    boxes_px, sizes, labels = [], [], []
    for record in dataset.records:
        keep = ~record.iscrowd
        boxes_px.append(record.boxes_xyxy_px[keep])
        sizes.append(np.tile([record.width, record.height, record.width, record.height], (int(keep.sum()), 1)))
        labels.append(record.labels[keep])
    boxes_xyxy_px = np.concatenate(boxes_px).astype(np.float32) if boxes_px else np.zeros((0, 4), np.float32)
    image_wh = np.concatenate(sizes).astype(np.float32) if sizes else np.ones((0, 4), np.float32)  # (N, 4)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    areas = (boxes_xyxy_px[:, 2] - boxes_xyxy_px[:, 0]) * (boxes_xyxy_px[:, 3] - boxes_xyxy_px[:, 1])
    return GroundTruth(torch.from_numpy(boxes_xyxy_px / image_wh), areas, all_labels)


def grid_offsets(boxes_cxcywh_norm: Tensor, spec: PriorSpec, layer: LayerPriors) -> Tensor:
    """Distance of each box centre to the nearest prior centre of ``layer``, per axis.

    Prior centres lie on a regular grid, ``(j + offset) * step / image_size`` for ``j < f``.

    Args:
        boxes_cxcywh_norm: Tensor[N, 4], cxcywh normalised.

    Returns:
        Tensor[N, 2], ``(|dx|, |dy|)`` normalised to the input.
    """
    scale = layer.step / spec.image_size  # grid pitch, normalised
    centres = boxes_cxcywh_norm[:, :2]  # (N, 2)
    index = torch.round(centres / scale - spec.offset).clamp(0, layer.feature_map - 1)
    return (centres - (index + spec.offset) * scale).abs()


def shape_iou(boxes_wh_norm: Tensor, offsets: Tensor, shapes_wh_norm: Tensor) -> Tensor:
    """IoU of each box with a prior of each shape centred at ``offsets`` from the box centre.

    With :func:`grid_offsets` this is each box's best IoU with the priors of one shape on one
    layer (unclipped): the overlap along each axis only shrinks as the centres move apart, and
    the grid is separable, so the nearest centre per axis is the best prior of that shape. This
    avoids materialising ``f * f`` priors per shape.

    Args:
        boxes_wh_norm: Tensor[N, 2], box widths and heights, normalised.
        offsets: Tensor[N, 2], ``(|dx|, |dy|)`` between box and prior centres, normalised.
        shapes_wh_norm: Tensor[C, 2], prior widths and heights, normalised.

    Returns:
        Tensor[N, C], IoU in [0, 1].
    """
    half_box = boxes_wh_norm[:, None, :] / 2  # (N, 1, 2)
    half_prior = shapes_wh_norm[None, :, :] / 2  # (1, C, 2)
    d = offsets[:, None, :]  # (N, 1, 2)
    # the box spans [-half_box, half_box], the prior [d - half_prior, d + half_prior], per axis
    overlap = (torch.minimum(half_box, d + half_prior) - torch.maximum(-half_box, d - half_prior)).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]  # (N, C)
    union = boxes_wh_norm.prod(dim=1)[:, None] + shapes_wh_norm.prod(dim=1)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def prior_coverage(dataset: DetectionDataset, spec: PriorSpec, threshold: float = MATCH_THRESHOLD) -> CoverageReport:
    """Best IoU of every non-crowd ground-truth box with the priors of ``spec``, overall, by COCO
    size bin (area in original-image pixels: small < 32^2 <= medium < 96^2 <= large) and per class."""
    truth = network_ground_truth(dataset)
    best_iou = best_prior_iou(truth.boxes_xyxy_norm, generate_priors(spec).float()).numpy()
    areas, all_labels = truth.area_px, truth.labels
    bins = (
        ("small", areas < SMALL_AREA_PX),
        ("medium", (areas >= SMALL_AREA_PX) & (areas < LARGE_AREA_PX)),
        ("large", areas >= LARGE_AREA_PX),
    )
    return CoverageReport(
        arch=spec.name,
        image_size=spec.image_size,
        num_priors=spec.num_priors,
        threshold=threshold,
        overall=_group("all", best_iou, threshold),
        by_size=[_group(name, best_iou[mask], threshold) for name, mask in bins],
        by_class=[_group(name, best_iou[all_labels == k], threshold) for k, name in enumerate(dataset.classes, 1)],
        best_iou=best_iou,
    )
