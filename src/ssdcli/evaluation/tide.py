"""TIDE error analysis (Bolya et al., ECCV 2020): how much AP each kind of error costs.

The definitions are those of the ``tidecv`` package (``quantify.py``, ``errors/main_errors.py``,
``ap.py``), which the tests use as the reference where it installs:

- **Matching**: per image, the top ``max_dets`` (100) detections by score (ties in the order
  given); in score order each takes the box of its class with the highest IoU among the boxes
  not taken yet, if that IoU >= 0.5 (foreground threshold; first box on ties): a true positive.
  Difficult (VOC) and crowd (COCO) boxes are TIDE's ignore regions: a detection left unmatched
  whose intersection covers more than 0.5 of its own area inside an ignore region of its class
  is left out of the AP (its error is still classified, as TIDE does).
- **Errors** of every other detection, first rule that holds; IoUs with the regular boxes of
  the image only, 0.1 the background threshold: no box in the image -> **Bkg**; 0.1 <= IoU <= 0.5
  with the best box of its class -> **Loc**; IoU >= 0.5 with a box of another class -> **Cls**;
  IoU >= 0.5 with a box of its class already taken -> **Dupe**; IoU <= 0.1 with every box ->
  **Bkg**; otherwise -> **Both** (wrong class and poorly localised). A box nobody took and no
  Loc / Cls error points at -> **Miss**.
- **dAP**: the AP after fixing all errors of one type, minus the AP, floored at 0. Fixing a Loc
  or Cls error makes the highest-scoring such detection of its (untaken) box a true positive
  (of the box's class) and removes the others; fixing Dupe, Bkg or Both removes those
  detections; fixing Miss removes the missed boxes from the object count. The special errors:
  **FalsePos** scores every true positive above every false one, **FalseNeg** removes every
  unmatched box from the count (not floored).
- **AP**: TIDE's own (COCO-style) 101-point AP at IoU 0.5: the interpolated precision at recall
  0, 0.01, ..., 1 averaged; a class with detections but no boxes has AP 0; the mean is over the
  classes with boxes or detections. Equal scores rank in the order TIDE pushes them (image
  order, then score order; after a fix, the error detections before the true positives).

All values are fractions (TIDE prints them x 100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdcli.evaluation.detections import DetectionTable
from ssdcli.evaluation.pairs import BoxPairs, FlatGroundTruth, best_box, greedy_match

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETECTIONS = 100
RECALL_STEPS = np.array([x / 100 for x in range(101)])  # tidecv's x_range, float for float


@dataclass(frozen=True)
class TideResult:
    """Attributes:
        ap: TIDE's mAP at IoU 0.5, ``None`` without boxes or detections.
        dap: ``{error: dAP}`` for :data:`MAIN_ERRORS`, fractions.
        special: ``{error: dAP}`` for :data:`SPECIAL_ERRORS`.
        counts: ``{error: how many}`` for :data:`MAIN_ERRORS`.
    """

    ap: float | None
    dap: dict[str, float]
    special: dict[str, float]
    counts: dict[str, int]

    def to_json(self) -> dict:
        return {"ap50": self.ap, "dap": self.dap, "special_dap": self.special, "counts": self.counts}


@dataclass(frozen=True)
class _Points:
    """The detections an AP is computed from: class, score, true or false, push order."""

    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    order: np.ndarray


def tide_ap(score: np.ndarray, tp: np.ndarray, order: np.ndarray, num_gt: int) -> float:
    """One class's TIDE AP (``APDataObject.get_ap`` / 100)."""
    if num_gt <= 0:
        return 0.0
    ranked = np.lexsort((order, -score))
    hits = tp[ranked]
    true = np.cumsum(hits, dtype=np.float64)
    false = np.cumsum(~hits, dtype=np.float64)
    precision = np.maximum.accumulate((true / (true + false))[::-1])[::-1] if hits.size else true
    recall = true / num_gt
    at = np.searchsorted(recall, RECALL_STEPS, side="left")  # (101,)
    values = np.where(at < hits.size, precision[np.minimum(at, max(hits.size - 1, 0))] if hits.size else 0.0, 0.0)
    return float(values.sum() / RECALL_STEPS.size)


def _mean_ap(points: _Points, num_gt: np.ndarray) -> float | None:
    """The mean TIDE AP over classes with boxes or points (``ClassedAPDataObject.get_mAP``)."""
    per_class = np.bincount(points.label, minlength=num_gt.size)
    aps = []
    for k in np.flatnonzero((num_gt > 0) | (per_class > 0)).tolist():
        mine = points.label == k
        aps.append(tide_ap(points.score[mine], points.tp[mine], points.order[mine], int(num_gt[k])))
    return float(np.mean(aps)) if aps else None


def _classify(
    detections: DetectionTable, ground_truth: FlatGroundTruth, pairs: BoxPairs, rank: np.ndarray, max_dets: int
) -> dict[str, np.ndarray]:
    """Matching and the error of every unmatched detection (bool masks over detections)."""
    num, num_gt = len(detections), len(ground_truth)
    kept = rank < max_dets
    regular = ~ground_truth.ignore
    same = detections.labels[pairs.det] == ground_truth.labels[pairs.gt]  # (P,)
    live = kept[pairs.det] & regular[pairs.gt]  # (P,)
    matched = greedy_match(pairs, live & same, FOREGROUND_IOU, rank, num_gt)
    tp = matched >= 0
    used = np.zeros(num_gt, bool)
    used[matched[tp]] = True
    crowd = kept[pairs.det] & ~regular[pairs.gt] & same & (pairs.ioa > FOREGROUND_IOU)
    ignored = np.zeros(num, bool)
    ignored[pairs.det[crowd]] = True
    ignored &= ~tp
    images_with_boxes = np.zeros(int(detections.image_index.max(initial=-1)) + 1, bool)
    inside = ground_truth.image_index[regular]
    images_with_boxes[inside[inside < images_with_boxes.size]] = True
    negative = kept & ~tp
    empty = negative & ~images_with_boxes[detections.image_index]
    box_iou, box_gt = best_box(pairs, live & same, num)
    cls_iou, cls_gt = best_box(pairs, live & ~same, num)
    dup_iou, _ = best_box(pairs, live & same & used[pairs.gt], num)
    any_iou, _ = best_box(pairs, live, num)
    rest = negative & ~empty
    loc = rest & (box_iou >= BACKGROUND_IOU) & (box_iou <= FOREGROUND_IOU)
    cls = rest & ~loc & (cls_iou >= FOREGROUND_IOU)
    dupe = rest & ~loc & ~cls & (dup_iou >= FOREGROUND_IOU)
    bkg = empty | (rest & ~loc & ~cls & ~dupe & (any_iou <= BACKGROUND_IOU))
    both = rest & ~loc & ~cls & ~dupe & ~bkg
    target = np.where(loc, box_gt, np.where(cls, cls_gt, -1))  # the box a fix would give
    return {
        "kept": kept, "tp": tp, "ignored": ignored, "used": used, "target": target,
        "Loc": loc, "Cls": cls, "Dupe": dupe, "Bkg": bkg, "Both": both,
    }


def _fixable(found: dict[str, np.ndarray], rank: np.ndarray, num_gt: int) -> np.ndarray:
    """bool[D]: the Loc / Cls detections a fix turns into true positives: per untaken target
    box, the highest-scoring one (TIDE's ``BestGTMatch``; score order is rank order)."""
    candidate = (found["Loc"] | found["Cls"]) & (found["target"] >= 0)
    candidate &= ~found["used"][np.maximum(found["target"], 0)] if num_gt else False
    rows = np.flatnonzero(candidate)
    rows = rows[np.lexsort((rank[rows], found["target"][rows]))]
    _, first = np.unique(found["target"][rows], return_index=True)
    best = np.zeros(candidate.size, bool)
    best[rows[first]] = True
    return best


def tide_errors(
    detections: DetectionTable,
    ground_truth: FlatGroundTruth,
    pairs: BoxPairs,
    rank: np.ndarray,
    num_classes: int,
    max_dets: int = MAX_DETECTIONS,
) -> TideResult:
    """TIDE's AP, the dAP of each error type and the error counts (module docstring)."""
    found = _classify(detections, ground_truth, pairs, rank, max_dets)
    best = _fixable(found, rank, len(ground_truth))
    regular = ~ground_truth.ignore
    usable = np.zeros(len(ground_truth), bool)
    usable[found["target"][(found["Loc"] | found["Cls"]) & (found["target"] >= 0)]] = True
    missed = regular & ~found["used"] & ~usable
    num_gt = np.bincount(ground_truth.labels[regular], minlength=num_classes + 1)
    labels, scores = detections.labels, detections.scores
    # push order: base = (image, rank); after a fix the errors first, then the true positives
    base_order = detections.image_index * (int(rank.max(initial=0)) + 1) + rank
    fixed_order = base_order + np.where(found["tp"], base_order.max(initial=0) + 1, 0)

    def points(keep: np.ndarray, label: np.ndarray = labels, tp: np.ndarray = found["tp"], order=fixed_order, score=scores) -> _Points:
        return _Points(label=label[keep], score=score[keep], tp=tp[keep], order=order[keep])

    counted = found["kept"] & ~found["ignored"]
    base = _mean_ap(points(counted, order=base_order), num_gt)
    fixed = {}
    for error in ("Cls", "Loc"):
        fix = found[error] & best  # become true positives of the target's class
        keep = (counted & ~found[error]) | fix
        label = np.where(fix, ground_truth.labels[np.maximum(found["target"], 0)] if len(ground_truth) else labels, labels)
        fixed[error] = _mean_ap(points(keep, label=label, tp=found["tp"] | fix), num_gt)
    for error in ("Both", "Dupe", "Bkg"):
        fixed[error] = _mean_ap(points(counted & ~found[error]), num_gt)
    fixed["Miss"] = _mean_ap(points(counted), num_gt - np.bincount(ground_truth.labels[missed], minlength=num_classes + 1))
    false_pos = _mean_ap(points(counted, score=found["tp"].astype(np.float64)), num_gt)
    used_per_class = np.bincount(ground_truth.labels[found["used"]], minlength=num_classes + 1)
    false_neg = _mean_ap(points(counted), used_per_class)

    def delta(value: float | None, floor: bool) -> float:
        if value is None or base is None:
            return 0.0
        return max(value - base, 0.0) if floor else value - base

    counts = {error: int(found[error].sum()) for error in MAIN_ERRORS if error != "Miss"}
    counts["Miss"] = int(missed.sum())
    return TideResult(
        ap=base,
        dap={error: delta(fixed[error], True) for error in MAIN_ERRORS},
        special={"FalsePos": delta(false_pos, False), "FalseNeg": delta(false_neg, False)},
        counts={error: counts[error] for error in MAIN_ERRORS},
    )
