"""Detection metrics of SPEC "ssd eval": VOC07 11-point AP, VOC all-point AP, COCO box AP.

One entry point, :func:`evaluate`, scores a list of COCO-results detections against a
:class:`~ssdcli.data.records.DetectionDataset` with any of the three metrics, all from the same
detections:

- ``voc07`` / ``voc12``: :mod:`ssdcli.evaluation.voc`, the PASCAL devkit's algorithm at IoU 0.5;
- ``coco``: :mod:`ssdcli.evaluation.coco`, pycocotools' ``COCOeval`` numbers, computed by
  :mod:`ssdcli.evaluation.cocoeval` (pycocotools itself on request).

The modules: :mod:`~ssdcli.evaluation.detections` (reading and checking detections),
:mod:`~ssdcli.evaluation.voc`, :mod:`~ssdcli.evaluation.coco`, :mod:`~ssdcli.evaluation.cocoeval` and
:mod:`~ssdcli.evaluation.plots` (precision-recall curves, matplotlib). The error analysis of
``ssd eval --analysis`` is :mod:`~ssdcli.evaluation.analysis_report` and the modules it names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ssdcli.data.records import DetectionDataset
from ssdcli.evaluation.coco import Backend, CocoMetrics, evaluate_coco
from ssdcli.evaluation.detections import DetectionTable, load_detections, parse_detections, save_detections
from ssdcli.evaluation.voc import (
    PrecisionRecall,
    average_precision_voc07,
    average_precision_voc12,
    precision_recall,
)

__all__ = [
    "ClassResult",
    "DetectionTable",
    "EvalResult",
    "Metric",
    "evaluate",
    "load_detections",
    "parse_detections",
    "save_detections",
]


class Metric(str, Enum):
    """The metrics :func:`evaluate` computes."""

    voc07 = "voc07"
    voc12 = "voc12"
    coco = "coco"


@dataclass(frozen=True)
class ClassResult:
    """One class's results. An AP is ``None`` when that metric was not computed or the class has
    no ground truth for it (no non-difficult box for VOC, no non-crowd box for COCO).

    Attributes:
        name: the class name.
        num_gt: non-difficult ground-truth boxes (the VOC recall denominator).
        num_detections: detections of this class.
        curve: the VOC precision-recall curve (for plots), or ``None`` without a VOC metric.
    """

    name: str
    num_gt: int
    num_detections: int
    voc07_ap: float | None
    voc12_ap: float | None
    coco_ap: float | None
    curve: PrecisionRecall | None


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        classes: one entry per class of the dataset, in class-index order.
        voc07_map, voc12_map: mean AP over classes with at least one non-difficult box, or
            ``None`` when not computed (or no class has such a box).
        coco: pycocotools' summary (``ap``, ``ap50``, ``ap75``, ``aps``, ``apm``, ``apl``,
            ``ar1``, ``ar10``, ``ar100``, ``ars``, ``arm``, ``arl``), or ``None`` when not computed.
        num_images, num_detections: what was scored.
    """

    classes: list[ClassResult]
    voc07_map: float | None
    voc12_map: float | None
    coco: dict[str, float | None] | None
    num_images: int
    num_detections: int

    def to_json(self) -> dict:
        """The SPEC ``--json`` object: ``voc07_map``, ``voc12_map``, ``coco_ap``, ``coco_ap50``,
        ``coco_ap75``, ``coco_aps``, ``coco_apm``, ``coco_apl``, ``per_class: {name: {voc07_ap,
        voc12_ap, coco_ap}}``, ``num_images``, ``num_detections``; fractions in [0, 1]; a metric
        that was not computed (or is undefined for lack of ground truth) is absent."""
        payload: dict = {"voc07_map": self.voc07_map, "voc12_map": self.voc12_map}
        if self.coco is not None:
            payload.update({f"coco_{name}": self.coco[name] for name in ("ap", "ap50", "ap75", "aps", "apm", "apl")})
        payload = {key: value for key, value in payload.items() if value is not None}
        payload["per_class"] = {
            c.name: {
                key: value
                for key, value in (("voc07_ap", c.voc07_ap), ("voc12_ap", c.voc12_ap), ("coco_ap", c.coco_ap))
                if value is not None
            }
            for c in self.classes
        }
        payload["num_images"] = self.num_images
        payload["num_detections"] = self.num_detections
        return payload


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def evaluate(
    dataset: DetectionDataset,
    detections: list[dict],
    metrics: Iterable[Metric | str] = (Metric.voc07, Metric.voc12, Metric.coco),
    coco_ground_truth: dict | None = None,
    coco_backend: Backend = "auto",
) -> EvalResult:
    """Score detections against a dataset's ground truth.

    Args:
        dataset: the ground truth: records with boxes in continuous 0-based pixels, labels 1-based.
        detections: COCO results dicts ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` in original-image pixels; for VOC-style data ``image_id`` is the file stem
            and ``category_id`` the 1-based class index, for COCO data the json's own ids.
        metrics: any of ``voc07``, ``voc12``, ``coco``.
        coco_ground_truth: COCO data only: the annotation json as loaded, so that COCO numbers
            use its own areas and crowd regions (equal to pycocotools run on that file); ``None``
            builds the COCO ground truth from the records.
        coco_backend: ``auto`` / ``ssdcli`` (:mod:`~ssdcli.evaluation.cocoeval`), or the
            references ``pycocotools`` and ``faster_coco_eval``; all give the same numbers.

    Raises:
        UserError: a detection does not fit the dataset (see :func:`parse_detections`).
    """
    wanted = {Metric(m) for m in metrics}
    table = parse_detections(detections, dataset)
    num_classes = dataset.num_classes
    num_gt = [0] * num_classes
    curves: list[PrecisionRecall | None] = [None] * num_classes
    voc07: list[float | None] = [None] * num_classes
    voc12: list[float | None] = [None] * num_classes
    if wanted & {Metric.voc07, Metric.voc12}:
        curves = list(precision_recall(dataset.records, table, num_classes))
        num_gt = [curve.num_gt for curve in curves]
        if Metric.voc07 in wanted:
            voc07 = [average_precision_voc07(curve) for curve in curves]
        if Metric.voc12 in wanted:
            voc12 = [average_precision_voc12(curve) for curve in curves]
    else:
        for record in dataset.records:
            keep = ~np.asarray(record.difficult, bool)
            for label in record.labels[keep].tolist():
                num_gt[label - 1] += 1

    coco: CocoMetrics | None = None
    if Metric.coco in wanted:
        coco = evaluate_coco(dataset, detections, coco_ground_truth, coco_backend)

    detections_per_class = np.bincount(table.labels, minlength=num_classes + 1)[1:]
    classes = [
        ClassResult(
            name=name,
            num_gt=num_gt[k],
            num_detections=int(detections_per_class[k]),
            voc07_ap=voc07[k],
            voc12_ap=voc12[k],
            coco_ap=coco.per_class_ap[k] if coco is not None else None,
            curve=curves[k],
        )
        for k, name in enumerate(dataset.classes)
    ]
    return EvalResult(
        classes=classes,
        voc07_map=_mean(voc07),
        voc12_map=_mean(voc12),
        coco=coco.stats if coco is not None else None,
        num_images=len(dataset.records),
        num_detections=len(table),
    )
