"""PASCAL VOC average precision at IoU 0.5: VOC2007 11-point and VOC2010+ all-point.

The algorithm is the devkit's (``VOCevaldet.m``; its Python port ``voc_eval.py`` from
py-faster-rcnn, also used by detectron2 and mmdetection), per class:

1. detections sorted by score, descending. Ties keep the order the detections were given in (a
   stable sort, like MATLAB's ``sort`` in the devkit; ``voc_eval.py``'s ``np.argsort`` is not
   stable, so its order among equal scores is unspecified);
2. each detection takes the ground-truth box *of its class in its image* with the highest IoU,
   whether or not that box was already taken (first box on ties);
3. IoU > 0.5 (strictly: ``ovmax > ovthresh``) with a non-difficult box not yet taken: true
   positive, and the box is taken; with a box already taken: false positive (a duplicate); with a
   difficult box: neither; IoU <= 0.5 or no box of that class: false positive;
4. recall = TP / (non-difficult boxes), precision = TP / (TP + FP), cumulated in score order.

Boxes are continuous 0-based pixels, ``(xmin - 1, ymin - 1, xmax, ymax)`` for VOC's 1-based
inclusive corners, so plain continuous IoU equals the devkit's "+1" IoU
(``iw = min(xmax) - max(xmin) + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdcli.data.records import ImageRecord
from ssdcli.evaluation.detections import DetectionTable

IOU_THRESHOLD = 0.5

# voc_eval.py: `for t in np.arange(0., 1.1, 0.1)`. Kept bit for bit (3 * 0.1 is
# 0.30000000000000004, so a recall of exactly 0.3 does not reach that threshold), so that our
# VOC07 numbers equal those of voc_eval.py, detectron2 and mmdetection.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


@dataclass(frozen=True)
class PrecisionRecall:
    """One class's precision-recall curve, one point per detection of the class in score order.

    Attributes:
        precision: float64[D_k], TP / (TP + FP) after each detection.
        recall: float64[D_k], TP / num_gt after each detection.
        scores: float64[D_k], the detection scores, descending.
        num_gt: non-difficult ground-truth boxes of the class (the recall denominator).
        num_tp, num_fp: true and false positives over all detections of the class (detections
            on difficult boxes count as neither).
    """

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    num_gt: int
    num_tp: int
    num_fp: int


def iou_matrix_xyxy(boxes1_xyxy: np.ndarray, boxes2_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise continuous IoU. ``float64[N, 4]``, ``float64[M, 4]`` xyxy px -> ``float64[N, M]``.

    0 where the union is empty (two zero-size boxes).
    """
    top_left = np.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])  # (N, M, 2)
    wh = np.clip(bottom_right - top_left, 0.0, None)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    area1 = (boxes1_xyxy[:, 2] - boxes1_xyxy[:, 0]) * (boxes1_xyxy[:, 3] - boxes1_xyxy[:, 1])
    area2 = (boxes2_xyxy[:, 2] - boxes2_xyxy[:, 0]) * (boxes2_xyxy[:, 3] - boxes2_xyxy[:, 1])
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_gt_per_detection(
    records: list[ImageRecord], detections: DetectionTable
) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, the ground-truth box of its class in its image with the highest IoU.

    This choice does not depend on which boxes earlier detections took (devkit step 2), so it is
    computed for all detections at once, one IoU matrix per image.

    Returns:
        ``(best_iou, best_gt)``: float64[D] and int64[D]. ``best_gt`` indexes a flat list of every
        record's boxes in record order (record ``r``'s box ``j`` is ``offsets[r] + j``); ``-1``
        with ``best_iou = -inf`` where the image holds no box of the detection's class.
    """
    num_det = len(detections)
    best_iou = np.full(num_det, -np.inf)
    best_gt = np.full(num_det, -1, np.int64)
    offsets = np.cumsum([0] + [record.num_boxes for record in records])
    order = np.argsort(detections.image_index, kind="stable")
    image_ids, starts = np.unique(detections.image_index[order], return_index=True)
    ends = np.append(starts[1:], num_det)
    for image, start, end in zip(image_ids.tolist(), starts.tolist(), ends.tolist()):
        record = records[image]
        if record.num_boxes == 0:
            continue
        rows = order[start:end]
        iou = iou_matrix_xyxy(detections.boxes_xyxy_px[rows], record.boxes_xyxy_px.astype(np.float64))  # (d, g)
        same_class = detections.labels[rows, None] == record.labels[None, :]  # (d, g)
        iou = np.where(same_class, iou, -np.inf)
        column = iou.argmax(axis=1)  # first box on ties, as the devkit's max()
        best_iou[rows] = iou[np.arange(rows.size), column]
        best_gt[rows] = np.where(np.isfinite(best_iou[rows]), offsets[image] + column, -1)
    return best_iou, best_gt


def precision_recall(
    records: list[ImageRecord], detections: DetectionTable, num_classes: int
) -> list[PrecisionRecall]:
    """The devkit's precision-recall curve of every class (index ``k - 1`` for label ``k``).

    The sequential "taken" sweep of the devkit reduces to: a detection whose best box is a
    non-difficult box with IoU > 0.5 is a true positive exactly when it is the first detection,
    in score order, whose best box is that box; later ones are duplicates (false positives).
    """
    gt_labels = np.concatenate([np.zeros(0, np.int64)] + [r.labels for r in records])
    gt_difficult = np.concatenate([np.zeros(0, bool)] + [np.asarray(r.difficult, bool) for r in records])
    best_iou, best_gt = best_gt_per_detection(records, detections)
    hit = best_iou > IOU_THRESHOLD  # devkit: ovmax > ovthresh; False where best_gt is -1
    on_difficult = np.zeros_like(hit)
    on_difficult[hit] = gt_difficult[best_gt[hit]]

    # One stable sort by score, then a stable sort by class: each class's detections end up
    # contiguous, by score descending, ties in the order given.
    order = np.argsort(-detections.scores, kind="stable")
    order = order[np.argsort(detections.labels[order], kind="stable")]
    bounds = np.searchsorted(detections.labels[order], np.arange(1, num_classes + 2))  # (C + 1,)
    curves = []
    for label in range(1, num_classes + 1):
        num_gt = int(np.count_nonzero((gt_labels == label) & ~gt_difficult))
        mine = order[bounds[label - 1] : bounds[label]]  # this class's detections, score descending
        matched = mine[hit[mine] & ~on_difficult[mine]]  # candidates for TP, in score order
        _, first = np.unique(best_gt[matched], return_index=True)
        tp_rows = matched[first]  # the first detection to reach each box takes it
        tp = np.isin(mine, tp_rows)
        fp = ~tp & ~on_difficult[mine]
        tp_cum = np.cumsum(tp, dtype=np.float64)
        fp_cum = np.cumsum(fp, dtype=np.float64)
        recall = tp_cum / num_gt if num_gt > 0 else np.full(mine.size, np.nan)
        # voc_eval.py: avoid a division by zero when the first detections are all on difficult boxes
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        curves.append(
            PrecisionRecall(
                precision=precision,
                recall=recall,
                scores=detections.scores[mine],
                num_gt=num_gt,
                num_tp=int(tp.sum()),
                num_fp=int(fp.sum()),
            )
        )
    return curves


def precision_envelope(precision: np.ndarray) -> np.ndarray:
    """``envelope[i] = max(precision[i:])``: the monotone (interpolated) precision. float64[D]."""
    return np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision


def average_precision_voc07(curve: PrecisionRecall) -> float | None:
    """VOC2007 11-point interpolated AP: the mean over ``t`` in 0, 0.1, ..., 1 of the highest
    precision at recall >= t (0 where that recall is never reached). ``None`` without ground truth.
    """
    if curve.num_gt == 0:
        return None
    if curve.recall.size == 0:
        return 0.0
    envelope = precision_envelope(curve.precision)
    # recall only grows along the curve, so the envelope at the first point with recall >= t is
    # max(prec[rec >= t])
    first = np.searchsorted(curve.recall, VOC07_RECALL_THRESHOLDS, side="left")  # (11,)
    reached = first < curve.recall.size
    at_threshold = np.where(reached, envelope[np.minimum(first, curve.recall.size - 1)], 0.0)  # (11,)
    return float(at_threshold.sum() / VOC07_RECALL_THRESHOLDS.size)


def average_precision_voc12(curve: PrecisionRecall) -> float | None:
    """All-point AP (VOC2010 onwards): the area under the precision envelope as a function of
    recall, summed where recall changes (voc_eval.py ``use_07_metric=False``). ``None`` without
    ground truth.
    """
    if curve.num_gt == 0:
        return None
    recall = np.concatenate(([0.0], curve.recall, [1.0]))
    precision = precision_envelope(np.concatenate(([0.0], curve.precision, [0.0])))
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
