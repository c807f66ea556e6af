"""The shared core of the error analyses: ground truth as flat arrays, every overlapping
(detection, box) pair of an image with its IoU, and greedy matching in score order.

:mod:`~ssdcli.evaluation.analysis` (Hoiem's false-positive types and size / aspect sensitivity),
:mod:`~ssdcli.evaluation.confusion` and :mod:`~ssdcli.evaluation.tide` all reduce to questions
about these pairs ("the best box of the same class", "any box of a similar class with IoU >= 0.1",
"the best box not taken yet by a higher-scoring detection"), so the IoU of each pair is computed
once, vectorised over all images, and every question is a mask over the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdcli.data.records import ImageRecord
from ssdcli.evaluation.detections import DetectionTable


@dataclass(frozen=True)
class FlatGroundTruth:
    """Every record's boxes in one list, record order, then box order within the record.

    Attributes:
        image_index: int64[G], index into the records, nondecreasing.
        labels: int64[G], 1-based class index.
        boxes_xyxy_px: float64[G, 4], continuous 0-based pixels.
        ignore: bool[G], "difficult" (VOC) or "iscrowd" (COCO): neither found nor missed.
    """

    image_index: np.ndarray
    labels: np.ndarray
    boxes_xyxy_px: np.ndarray
    ignore: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def areas(self) -> np.ndarray:
        """float64[G], box area in square pixels."""
        wh = self.boxes_xyxy_px[:, 2:] - self.boxes_xyxy_px[:, :2]  # (G, 2)
        return wh[:, 0] * wh[:, 1]

    @property
    def aspect_ratios(self) -> np.ndarray:
        """float64[G], width / height."""
        wh = self.boxes_xyxy_px[:, 2:] - self.boxes_xyxy_px[:, :2]  # (G, 2)
        return np.divide(wh[:, 0], wh[:, 1], out=np.full(len(self), np.inf), where=wh[:, 1] > 0)


def flatten_ground_truth(records: list[ImageRecord]) -> FlatGroundTruth:
    """The boxes of ``records`` as one :class:`FlatGroundTruth`."""
    return FlatGroundTruth(
        image_index=np.repeat(np.arange(len(records), dtype=np.int64), np.array([r.num_boxes for r in records], np.int64)),
        labels=np.concatenate([np.zeros(0, np.int64)] + [np.asarray(r.labels, np.int64) for r in records]),
        boxes_xyxy_px=np.concatenate(
            [np.zeros((0, 4))] + [np.asarray(r.boxes_xyxy_px, np.float64).reshape(-1, 4) for r in records]
        ),
        ignore=np.concatenate(
            [np.zeros(0, bool)] + [np.asarray(r.difficult, bool) | np.asarray(r.iscrowd, bool) for r in records]
        ),
    )


@dataclass(frozen=True)
class BoxPairs:
    """Every (detection, box) pair of the same image whose boxes intersect.

    Sorted by detection, then IoU descending, then box index: the first pair of a detection that
    passes a mask is its best box under that mask, the first box on ties (as the PASCAL devkit's
    and TIDE's ``argmax``).

    Attributes:
        det: int64[P], row of the detection table.
        gt: int64[P], index into the :class:`FlatGroundTruth`.
        iou: float64[P], intersection over union, > 0.
        ioa: float64[P], intersection over the detection's area (COCO's crowd overlap).
    """

    det: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    ioa: np.ndarray

    def __len__(self) -> int:
        return int(self.det.shape[0])


def box_pairs(detections: DetectionTable, ground_truth: FlatGroundTruth) -> BoxPairs:
    """All intersecting (detection, box) pairs of the same image, vectorised over images."""
    gt_image = ground_truth.image_index
    first = np.searchsorted(gt_image, detections.image_index, side="left")  # (D,)
    count = np.searchsorted(gt_image, detections.image_index, side="right") - first  # (D,)
    pair_det = np.repeat(np.arange(len(detections), dtype=np.int64), count)  # (P0,)
    pair_gt = np.arange(int(count.sum()), dtype=np.int64) + np.repeat(first - (np.cumsum(count) - count), count)
    d_box = detections.boxes_xyxy_px[pair_det]  # (P0, 4)
    g_box = ground_truth.boxes_xyxy_px[pair_gt]  # (P0, 4)
    wh = np.clip(np.minimum(d_box[:, 2:], g_box[:, 2:]) - np.maximum(d_box[:, :2], g_box[:, :2]), 0.0, None)  # (P0, 2)
    inter = wh[:, 0] * wh[:, 1]
    d_area = (d_box[:, 2] - d_box[:, 0]) * (d_box[:, 3] - d_box[:, 1])
    g_area = (g_box[:, 2] - g_box[:, 0]) * (g_box[:, 3] - g_box[:, 1])
    union = d_area + g_area - inter
    keep = inter > 0
    pair_det, pair_gt, inter, d_area, union = pair_det[keep], pair_gt[keep], inter[keep], d_area[keep], union[keep]
    iou = inter / union
    ioa = inter / d_area
    order = np.lexsort((pair_gt, -iou, pair_det))
    return BoxPairs(det=pair_det[order], gt=pair_gt[order], iou=iou[order], ioa=ioa[order])


def best_box(pairs: BoxPairs, mask: np.ndarray, num_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the pair of highest IoU among the pairs where ``mask`` holds.

    Returns:
        ``(iou, gt)``: float64[D] (0 where no pair qualifies) and int64[D] (-1 there).
    """
    best_iou = np.zeros(num_detections)
    best_gt = np.full(num_detections, -1, np.int64)
    rows = np.flatnonzero(mask)
    dets, first = np.unique(pairs.det[rows], return_index=True)
    best_iou[dets] = pairs.iou[rows[first]]
    best_gt[dets] = pairs.gt[rows[first]]
    return best_iou, best_gt


def ranks_in_image(detections: DetectionTable) -> np.ndarray:
    """int64[D]: each detection's place in its image by score, 0 = highest; ties keep the
    order the detections were given in (a stable sort, as MATLAB's ``sort`` and Python's)."""
    order = np.argsort(-detections.scores, kind="stable")
    order = order[np.argsort(detections.image_index[order], kind="stable")]  # by image, then score
    images = detections.image_index[order]
    starts = np.searchsorted(images, images, side="left")
    rank = np.empty(len(detections), np.int64)
    rank[order] = np.arange(len(detections)) - starts
    return rank


def greedy_match(
    pairs: BoxPairs,
    mask: np.ndarray,
    threshold: float,
    rank: np.ndarray,
    num_gt: int,
    taken: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy matching in score order: each detection, highest score first within its image,
    takes the box of highest IoU among its pairs where ``mask`` holds, IoU >= ``threshold`` and
    the box is not taken yet (first box on ties). This is the rule of Hoiem et al.'s
    ``matchDetectionsWithGroundTruth``, of TIDE and of COCOeval (without crowd boxes).

    Detections of the same rank are in different images and cannot compete for a box, so all
    images advance one rank per step (a loop over ranks, not over boxes).

    Args:
        pairs: from :func:`box_pairs`.
        mask: bool[P], which pairs may match (e.g. same class).
        threshold: the lowest IoU that matches.
        rank: int64[D], from :func:`ranks_in_image`.
        num_gt: the number of ground-truth boxes.
        taken: bool[G], boxes already taken before this matching (left unchanged), or ``None``.

    Returns:
        int64[D], the box each detection took, or -1.
    """
    taken = np.zeros(num_gt, bool) if taken is None else taken.copy()
    matched = np.full(rank.shape[0], -1, np.int64)
    rows = np.flatnonzero(mask & (pairs.iou >= threshold))
    if rows.size == 0:
        return matched
    rows = rows[np.argsort(rank[pairs.det[rows]], kind="stable")]  # by rank, keeping det / IoU order
    step_of = rank[pairs.det[rows]]
    steps, bounds = np.unique(step_of, return_index=True)
    bounds = np.append(bounds, rows.size)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        step_rows = rows[start:end]
        free = step_rows[~taken[pairs.gt[step_rows]]]
        dets, first = np.unique(pairs.det[free], return_index=True)
        picks = pairs.gt[free[first]]
        matched[dets] = picks
        taken[picks] = True
    return matched
