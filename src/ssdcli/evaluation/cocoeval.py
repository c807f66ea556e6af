"""COCO box AP and AR: pycocotools' ``COCOeval`` (iouType ``bbox``, default parameters) in numpy.

The numbers are pycocotools' to the last bit (tests/test_cocoeval.py compares ``stats``,
``precision`` and ``recall`` with ``COCOeval`` on coco128, on VOC data and on hand-built edge
cases). It exists because ``COCOeval`` loops in Python over images x categories x area ranges x
IoU thresholds x detections x ground-truth boxes, about a second for 12,800 detections; here
each step is a numpy operation over all of them at once.

What ``COCOeval`` does (pycocotools/cocoeval.py), and where it is done here:

- ``evaluate`` / ``computeIoU``: per (image, category), detections sorted by score (stable
  mergesort) and cut to the best 100; IoU of xywh boxes as ``maskUtils.iou``, where a crowd
  box's "union" is the detection's own area: :func:`_pair_ious`.
- ``evaluateImg``: per area range and IoU threshold, each detection in score order takes the
  free ground-truth box (crowd boxes stay free) of highest IoU >= the threshold, preferring boxes
  that are not ignored (ignored: crowd, or ``area`` field outside the range), the last one on
  ties. A detection matched to an ignored box, or unmatched with its own ``w * h`` outside the
  range, is ignored: neither true nor false positive. :func:`_match`.
- ``accumulate``: per category, area range and max detections, the first ``maxDet`` detections
  of every image merged by score (stable: image order, then rank, on ties), cumulative TP / FP,
  precision made non-increasing from the right and read at the 101 recall thresholds; -1 where
  the category has no ground truth that counts. :func:`~ssdcli.evaluation.coco_accumulate.accumulate`.
- ``summarize``: the 12 means over entries that are not -1. :func:`~ssdcli.evaluation.coco_accumulate.summarize`.

Two of pycocotools' quirks are kept so that the numbers stay equal: a detection matched to a
ground-truth annotation whose ``id`` is 0 counts as unmatched (``COCOeval`` stores matches as
ids and tests them against 0), and results on images of the ground truth that are not scored
are dropped while results on images it does not have are an error (``COCO.loadRes`` asserts).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ssdcli.errors import UserError

from ssdcli.evaluation.coco_accumulate import IOU_THRESHOLDS, MAX_DETECTIONS, accumulate, summarize

# COCOeval's Params.setDetParams areaRng, in AREA_NAMES order (coco_accumulate).
AREA_RANGES = np.array([[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]])  # (A, 2), px^2, both ends inside
# evaluateImg: ``iou = min([t, 1 - 1e-10])``, so that IoU 1.0 still matches at threshold 1.0.
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # (T,)


@dataclass(frozen=True)
class CocoEvaluation:
    """What :func:`coco_evaluate` returns, laid out as ``COCOeval`` has it.

    Attributes:
        stats: float64[12], ``COCOeval.stats``: AP, AP50, AP75, AP small / medium / large, AR1,
            AR10, AR100, AR small / medium / large; -1 where there is no ground truth to score.
        precision: float64[T, R, K, A, M], ``COCOeval.eval["precision"]``: IoU thresholds
            :data:`IOU_THRESHOLDS`, recall thresholds ``coco_accumulate.RECALL_THRESHOLDS``, categories
            ``category_ids``, area ranges ``coco_accumulate.AREA_NAMES``, max detections
            :data:`MAX_DETECTIONS`; -1 for a category without (non-ignored) ground truth there.
        recall: float64[T, K, A, M], ``COCOeval.eval["recall"]``, -1 likewise.
        category_ids: the K scored category ids, sorted.
        image_ids: the scored image ids, sorted.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    category_ids: tuple
    image_ids: tuple


def coco_evaluate(
    ground_truth: dict,
    results: Sequence[dict],
    image_ids: Iterable | None = None,
    category_ids: Iterable | None = None,
) -> CocoEvaluation:
    """Score COCO results against a COCO instances dict as ``COCOeval(gt, gt.loadRes(results),
    "bbox")`` with ``evaluate(); accumulate(); summarize()`` does.

    Args:
        ground_truth: ``{"images": [{"id"}], "annotations": [{"id", "image_id", "category_id",
            "bbox": [x, y, w, h], "area", "iscrowd"}], "categories": [{"id"}]}``; ``area`` (not
            ``w * h``) decides small / medium / large, ``iscrowd`` (default 0) marks ignore regions.
        results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in pixels (xywh);
            not modified. Their area is ``w * h``.
        image_ids: the images to score (``params.imgIds``); ``None``: every image of the json.
        category_ids: the categories to score (``params.catIds``); ``None``: every category.

    Raises:
        UserError: an annotation or result lacks a field or has a malformed box, annotation ids
            repeat, or a result names an image the ground truth does not have.
    """
    known_images = [image["id"] for image in ground_truth.get("images", [])]
    image_ids = tuple(sorted(set(known_images if image_ids is None else image_ids)))
    if category_ids is None:
        category_ids = [category["id"] for category in ground_truth.get("categories", [])]
    category_ids = tuple(sorted(set(category_ids)))
    image_index = {image_id: i for i, image_id in enumerate(image_ids)}
    category_index = {category_id: k for k, category_id in enumerate(category_ids)}
    num_images, num_categories = len(image_ids), len(category_ids)

    annotations = ground_truth.get("annotations", [])
    gt_ids, gt_images, gt_categories, gt_xywh, gt_areas, gt_crowd = _read_annotations(annotations)
    if len(set(gt_ids)) != len(gt_ids):
        raise UserError("ground truth: annotation ids repeat; each annotation needs its own id (pycocotools indexes them by id)")
    det_images, det_categories, det_xywh, det_scores = _read_results(results)
    unknown = set(det_images) - set(known_images)
    if unknown:
        raise UserError(
            f"results: image_id {min(unknown, key=str)!r} is not an image of the ground truth; detections must be of its images"
        )

    # Ground truth of the scored images and categories, grouped by (category, image) and in json
    # order inside a group, as COCOeval._prepare collects it.
    gt_image = np.array([image_index.get(i, -1) for i in gt_images], dtype=np.int64)
    gt_category = np.array([category_index.get(c, -1) for c in gt_categories], dtype=np.int64)
    scored = np.flatnonzero((gt_image >= 0) & (gt_category >= 0))
    gt_group_all = gt_category[scored] * num_images + gt_image[scored]
    gt_order = scored[np.argsort(gt_group_all, kind="stable")]
    gt_category, gt_group = gt_category[gt_order], gt_category[gt_order] * num_images + gt_image[gt_order]  # (G,)
    gt_xywh, gt_areas, gt_crowd = gt_xywh[gt_order], gt_areas[gt_order], gt_crowd[gt_order]
    gt_id_nonzero = np.array([gt_ids[i] != 0 for i in gt_order.tolist()], dtype=bool)
    # evaluateImg: ignored when crowd or when the area field is outside the range (ends inside).
    gt_ignore = gt_crowd[:, None] | (gt_areas[:, None] < AREA_RANGES[:, 0]) | (gt_areas[:, None] > AREA_RANGES[:, 1])  # (G, A)

    det_group, det_category, det_xywh, det_scores, rank = _scored_detections(
        det_images, det_categories, det_xywh, det_scores, image_index, category_index
    )

    true_positive, false_positive = _outcomes(det_group, det_xywh, gt_group, gt_xywh, gt_crowd, gt_ignore, gt_id_nonzero)

    # accumulate's order: per category, by score, stable over (image, rank), which is the order
    # the detections are in now.
    order = np.lexsort((np.arange(len(det_group)), -det_scores, det_category))
    num_positive = np.stack(
        [np.bincount(gt_category[~gt_ignore[:, a]], minlength=num_categories) for a in range(len(AREA_RANGES))], axis=1
    )  # (K, A): npig, the ground truth that counts
    precision, recall = accumulate(det_category[order], rank[order], true_positive[order], false_positive[order], num_positive)
    return CocoEvaluation(
        stats=summarize(precision, recall), precision=precision, recall=recall, category_ids=category_ids, image_ids=image_ids
    )


def _scored_detections(
    det_images: list, det_categories: list, det_xywh: np.ndarray, det_scores: np.ndarray,
    image_index: dict, category_index: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The detections of the scored images and categories, per (category, image) group by score
    (stable), the best ``MAX_DETECTIONS[-1]`` of each: ``(group (D,) nondecreasing, category index,
    xywh, score, rank in its group)``."""
    num_images = len(image_index)
    det_image = np.array([image_index.get(i, -1) for i in det_images], dtype=np.int64)
    det_category = np.array([category_index.get(c, -1) for c in det_categories], dtype=np.int64)
    scored = np.flatnonzero((det_image >= 0) & (det_category >= 0))
    det_group_all = det_category[scored] * num_images + det_image[scored]
    det_order = scored[np.lexsort((scored, -det_scores[scored], det_group_all))]
    det_group = det_category[det_order] * num_images + det_image[det_order]  # (D,), nondecreasing
    rank = np.arange(len(det_group)) - np.searchsorted(det_group, det_group, side="left")
    keep = rank < MAX_DETECTIONS[-1]
    det_order, det_group, rank = det_order[keep], det_group[keep], rank[keep]
    return det_group, det_category[det_order], det_xywh[det_order], det_scores[det_order], rank


def _outcomes(
    det_group: np.ndarray, det_xywh: np.ndarray, gt_group: np.ndarray, gt_xywh: np.ndarray,
    gt_crowd: np.ndarray, gt_ignore: np.ndarray, gt_id_nonzero: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``evaluateImg``'s outcome of every detection per area range and threshold: true positive
    and false positive, bool[D, A, T] each (neither: ignored)."""
    det_gt = _match(det_group, det_xywh, gt_group, gt_xywh, gt_crowd, gt_ignore)  # (D, A, T)
    # Unmatched detections point at an extra row that is neither a match nor ignored.
    matched_gt = np.where(det_gt >= 0, det_gt, len(gt_group))  # (D, A, T)
    matched = np.append(gt_id_nonzero, False)[matched_gt]
    areas = np.arange(len(AREA_RANGES))[:, None]  # (A, 1), broadcasts over (D, A, T)
    matched_ignored = np.vstack([gt_ignore, np.zeros((1, len(AREA_RANGES)), bool)])[matched_gt, areas]
    det_areas = det_xywh[:, 2] * det_xywh[:, 3]  # COCO.loadRes: area = w * h
    det_outside = (det_areas[:, None] < AREA_RANGES[:, 0]) | (det_areas[:, None] > AREA_RANGES[:, 1])  # (D, A)
    ignored = matched_ignored | (~matched & det_outside[:, :, None])
    return matched & ~ignored, ~matched & ~ignored


def _read_annotations(annotations: list[dict]) -> tuple[list, list, list, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, image_ids, category_ids, xywh float64[G, 4], area float64[G], crowd bool[G])``."""
    try:
        ids = [a["id"] for a in annotations]
        images = [a["image_id"] for a in annotations]
        categories = [a["category_id"] for a in annotations]
        xywh = _boxes_xywh([a["bbox"] for a in annotations])
        areas = np.array([a["area"] for a in annotations], dtype=np.float64)
        # COCOeval._prepare: ignore = 'iscrowd' in gt and gt['iscrowd']
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"ground truth: every annotation needs id, image_id, category_id, bbox [x, y, w, h] and area ({exc!r})"
        ) from None
    return ids, images, categories, xywh, areas, crowd


def _read_results(results: Sequence[dict]) -> tuple[list, list, np.ndarray, np.ndarray]:
    """``(image_ids, category_ids, xywh float64[D, 4], score float64[D])``."""
    try:
        images = [r["image_id"] for r in results]
        categories = [r["category_id"] for r in results]
        xywh = _boxes_xywh([r["bbox"] for r in results])
        scores = np.array([r["score"] for r in results], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"results: every result needs image_id, category_id, bbox [x, y, w, h] and score ({exc!r})") from None
    return images, categories, xywh, scores


def _boxes_xywh(boxes: list) -> np.ndarray:
    array = np.array(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError("a bbox is not four numbers")
    return array


def _pair_ious(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes, float64[P], term by term as pycocotools' ``bbIou`` (common/maskApi.c)
    computes it so that the floats are the same; for a crowd box the union is the detection's area.

    Args:
        det_xywh, gt_xywh: float64[P, 4], xywh in pixels, row ``p`` of one paired with row ``p``
            of the other.
        gt_crowd: bool[P].
    """
    dx, dy, dw, dh = det_xywh.T
    gx, gy, gw, gh = gt_xywh.T
    w = np.fmin(dw + dx, gw + gx) - np.fmax(dx, gx)
    h = np.fmin(dh + dy, gh + gy) - np.fmax(dy, gy)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _match(
    det_group: np.ndarray,
    det_xywh: np.ndarray,
    gt_group: np.ndarray,
    gt_xywh: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
) -> np.ndarray:
    """``evaluateImg``'s greedy matching at every area range and IoU threshold.

    Args:
        det_group: int64[D], nondecreasing (category, image) group of each detection; inside a
            group detections are by score, best first.
        det_xywh: float64[D, 4], xywh in pixels.
        gt_group: int64[G], nondecreasing; inside a group boxes are in json order.
        gt_xywh: float64[G, 4]; gt_crowd: bool[G]; gt_ignore: bool[G, A].

    Returns:
        int64[D, A, T]: the index of the ground-truth box each detection took, or -1.
    """
    num_areas, num_thresholds = gt_ignore.shape[1], len(IOU_THRESHOLDS)
    det_gt = np.full((len(det_group), num_areas, num_thresholds), -1, dtype=np.int64)
    # Every (detection, box) pair of the same group, by detection then box.
    first = np.searchsorted(gt_group, det_group, side="left")
    count = np.searchsorted(gt_group, det_group, side="right") - first
    pair_det = np.repeat(np.arange(len(det_group)), count)
    pair_gt = np.arange(count.sum()) + np.repeat(first - (np.cumsum(count) - count), count)
    ious = _pair_ious(det_xywh[pair_det], gt_xywh[pair_gt], gt_crowd[pair_gt])
    # A pair below the lowest threshold never matches: drop it (most pairs).
    keep = ious >= _MATCH_THRESHOLDS.min()
    pair_det, pair_gt, ious = pair_det[keep], pair_gt[keep], ious[keep]
    if not len(pair_det):
        return det_gt

    # A detection depends only on the detections before it in its group, so the s-th detection
    # (with any pair left) of every group is matched at step s, all groups at once.
    new_det = np.r_[True, pair_det[1:] != pair_det[:-1]]
    candidates = pair_det[new_det]
    step = np.arange(len(candidates)) - np.searchsorted(det_group[candidates], det_group[candidates], side="left")
    pair_step = step[np.cumsum(new_det) - 1]
    by_step = np.argsort(pair_step, kind="stable")
    pair_det, pair_gt, ious, pair_step = pair_det[by_step], pair_gt[by_step], ious[by_step], pair_step[by_step]
    bounds = np.searchsorted(pair_step, np.arange(step.max() + 2), side="left")

    taken = np.zeros((len(gt_group), num_areas, num_thresholds), dtype=bool)
    for s in range(step.max() + 1):
        dets, gts, iou = (a[bounds[s] : bounds[s + 1]] for a in (pair_det, pair_gt, ious))
        new = np.r_[True, dets[1:] != dets[:-1]]
        starts, segment = np.flatnonzero(new), np.cumsum(new) - 1
        # A box already taken is skipped unless it is crowd (evaluateImg's first test).
        free = ~taken[gts] | gt_crowd[gts][:, None, None]  # (P, A, T)
        eligible = free & (iou[:, None, None] >= _MATCH_THRESHOLDS)  # (P, A, T)
        regular = ~gt_ignore[gts][:, :, None]  # (P, A, 1)
        # Regular boxes come first and a match among them stops the search before the ignored.
        pick = _best_pick(eligible & regular, iou, gts, starts, segment)
        pick = np.where(pick >= 0, pick, _best_pick(eligible & ~regular, iou, gts, starts, segment))  # (S, A, T)
        det_gt[dets[starts]] = pick
        d, a, t = np.nonzero(pick >= 0)
        taken[pick[d, a, t], a, t] = True
    return det_gt


def _best_pick(candidate: np.ndarray, iou: np.ndarray, gts: np.ndarray, starts: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Per detection (a segment of pairs), the box of highest IoU among ``candidate`` pairs, the
    last in json order on ties (evaluateImg replaces its match when ``iou >= best``), or -1.

    Args:
        candidate: bool[P, A, T]; iou: float64[P]; gts: int64[P], box index of each pair;
        starts: int64[S], first pair of each detection; segment: int64[P], detection of each pair.

    Returns:
        int64[S, A, T].
    """
    candidate_iou = np.where(candidate, iou[:, None, None], -1.0)  # (P, A, T)
    best = np.maximum.reduceat(candidate_iou, starts, axis=0)  # (S, A, T)
    tie = candidate & (candidate_iou == best[segment])
    return np.maximum.reduceat(np.where(tie, gts[:, None, None], -1), starts, axis=0)
