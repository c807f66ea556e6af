"""COCOeval's ``accumulate`` and ``summarize`` over the per-detection outcomes that
:func:`ssdcli.evaluation.cocoeval.coco_evaluate` computes: precision at the 101 recall
thresholds, recall, and the 12 stats, in numpy and equal to pycocotools to the last bit
(tests/test_cocoeval.py)."""

from __future__ import annotations

import numpy as np

# COCOeval's Params.setDetParams: the defaults for iouType "bbox".
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # (R,)
MAX_DETECTIONS = (1, 10, 100)  # (M,), per image and category
AREA_NAMES = ("all", "small", "medium", "large")


def accumulate(
    category: np.ndarray, rank: np.ndarray, true_positive: np.ndarray, false_positive: np.ndarray, num_positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``COCOeval.accumulate``: precision float64[T, R, K, A, M] and recall float64[T, K, A, M].

    Args:
        category: int64[D], category index of each detection, nondecreasing; inside a category
            detections are by score, best first (stable over image, then rank).
        rank: int64[D], place of each detection in its (image, category) by score.
        true_positive, false_positive: bool[D, A, T].
        num_positive: int64[K, A], ground-truth boxes that count (``npig``).
    """
    num_categories, num_areas = num_positive.shape
    num_thresholds, num_recalls = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((num_thresholds, num_recalls, num_categories, num_areas, len(MAX_DETECTIONS)))
    recall = -np.ones((num_thresholds, num_categories, num_areas, len(MAX_DETECTIONS)))
    for m, max_detections in enumerate(MAX_DETECTIONS):
        kept = rank < max_detections
        kept_category = category[kept]
        length = np.bincount(kept_category, minlength=num_categories)  # (K,)
        kept_tp = np.ascontiguousarray(true_positive[kept].transpose(1, 2, 0))  # (A, T, N)
        kept_fp = np.ascontiguousarray(false_positive[kept].transpose(1, 2, 0))  # (A, T, N)
        for a in range(num_areas):
            counted = num_positive[:, a] > 0
            if counted.any():
                columns = np.repeat(counted, length)  # (N,), detections of those categories
                precision[:, :, counted, a, m], recall[:, counted, a, m] = _curves(
                    length[counted], kept_tp[a][:, columns], kept_fp[a][:, columns], num_positive[counted, a]
                )
    return precision, recall


def _curves(
    length: np.ndarray, true_positive: np.ndarray, false_positive: np.ndarray, num_positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One area range and max-detections setting of ``accumulate``, for every threshold and every
    category with ground truth.

    Args:
        length: int64[K], detections of each category.
        true_positive, false_positive: bool[T, N], detections in accumulate order, category after
            category, ``N = length.sum()``.
        num_positive: int64[K], > 0, ground-truth boxes that count (``npig``).

    Returns:
        precision float64[T, R, K] at the recall thresholds, recall float64[T, K].
    """
    num_thresholds, num = true_positive.shape
    num_categories, num_recalls = len(length), len(RECALL_THRESHOLDS)
    precision = np.zeros((num_thresholds, num_categories, num_recalls))
    recall = np.zeros((num_thresholds, num_categories))
    present = np.flatnonzero(length > 0)
    if num == 0:
        return precision.transpose(0, 2, 1), recall
    start, length = (np.cumsum(length) - length)[present], length[present]  # (K',)
    end = start + length - 1
    # Cumulative counts per category: one cumsum per row, less the total before the category.
    tp_row = np.cumsum(true_positive, axis=1)  # (T, N)
    fp_row = np.cumsum(false_positive, axis=1)
    tp_before = np.concatenate([np.zeros((num_thresholds, 1), np.int64), tp_row], axis=1)[:, start]  # (T, K')
    fp_before = np.concatenate([np.zeros((num_thresholds, 1), np.int64), fp_row], axis=1)[:, start]
    tp = (tp_row - np.repeat(tp_before, length, axis=1)).astype(np.float64)
    fp = (fp_row - np.repeat(fp_before, length, axis=1)).astype(np.float64)
    points = tp / (fp + tp + np.spacing(1))  # (T, N): accumulate's pr

    # accumulate's searchsorted(rc, recThrs, "left") with rc = tp / npig: rc >= v exactly when
    # tp >= need, the fewest true positives whose float quotient reaches v, so the index is
    # where the need-th true positive of the (threshold, category) is (0 for need 0; not found
    # when there are fewer). The true positives' flat positions, in order, are grouped by
    # (threshold, category).
    need = _true_positives_needed(num_positive[present])[None]  # (1, K', R)
    found = tp[:, end][:, :, None]  # (T, K', 1), true positives of each category
    positions = np.append(np.flatnonzero(true_positive), 0)  # (TP + 1,)
    row_before = np.cumsum(tp_row[:, -1]) - tp_row[:, -1]  # (T,)
    first = (row_before[:, None] + tp_before)[:, :, None]  # (T, K', 1), index of the first into positions
    offset = (np.arange(num_thresholds)[:, None] * num + start)[:, :, None]  # (T, K', 1)
    nth = positions[first + np.clip(need - 1, 0, np.maximum(found - 1, 0)).astype(np.int64)] - offset
    index = np.where(need == 0, 0, np.where(need <= found, nth, length[:, None]))  # (T, K', R)

    # Precision made non-increasing from the right, read at those indices: the max of each run
    # between consecutive indices (one reduceat), then a running max from the right over the R
    # runs of each row (precision from an index on = max of its run and the runs after it).
    last = length[:, None] - 1
    run_starts = np.concatenate([offset + np.minimum(index, last), offset + last + 1], axis=2)  # (T, K', R + 1)
    runs = np.maximum.reduceat(np.append(points.ravel(), 0.0), run_starts.ravel())
    runs = runs.reshape(run_starts.shape)[:, :, :num_recalls]  # (T, K', R)
    envelope = np.maximum.accumulate(runs[:, :, ::-1], axis=2)[:, :, ::-1]
    precision[:, present] = np.where(index < length[:, None], envelope, 0.0)
    recall[:, present] = tp[:, end] / num_positive[present]
    return precision.transpose(0, 2, 1), recall  # (T, R, K), (T, K)


def _true_positives_needed(num_positive: np.ndarray) -> np.ndarray:
    """int64[K, R]: per category the least ``j`` in ``0..npig`` with ``j / npig >= recThr`` in
    float64, as ``rc = tp / npig`` compares in ``accumulate``. ``ceil(recThr * npig)`` is within 1
    of it; the loop corrects the rounding."""
    total = num_positive[:, None].astype(np.float64)  # (K, 1)
    need = np.ceil(RECALL_THRESHOLDS * total).astype(np.int64)  # (K, R)
    while True:
        lower = (need > 0) & ((need - 1) / total >= RECALL_THRESHOLDS)
        higher = need / total < RECALL_THRESHOLDS
        if not (lower.any() or higher.any()):
            return need
        need += higher.astype(np.int64) - lower.astype(np.int64)


def summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``COCOeval.summarize``'s 12 stats, float64[12], with its indexing and means (so its float
    sums) unchanged; -1 where every entry is -1."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    def average_precision(iou: float | None = None, area: str = "all", max_detections: int = 100) -> float:
        values = precision if iou is None else precision[np.where(iou == IOU_THRESHOLDS)[0]]
        return mean(values[:, :, :, [AREA_NAMES.index(area)], [MAX_DETECTIONS.index(max_detections)]])

    def average_recall(area: str = "all", max_detections: int = 100) -> float:
        return mean(recall[:, :, [AREA_NAMES.index(area)], [MAX_DETECTIONS.index(max_detections)]])

    return np.array(
        [
            average_precision(),
            average_precision(iou=0.5),
            average_precision(iou=0.75),
            average_precision(area="small"),
            average_precision(area="medium"),
            average_precision(area="large"),
            average_recall(max_detections=1),
            average_recall(max_detections=10),
            average_recall(),
            average_recall(area="small"),
            average_recall(area="medium"),
            average_recall(area="large"),
        ]
    )
