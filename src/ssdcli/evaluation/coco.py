"""COCO box metrics (``COCOeval``, iouType ``bbox``, default parameters), for COCO and VOC data.

Three backends give the same numbers: ``ssdcli`` (the default), pycocotools' algorithm in
vectorised numpy (:mod:`ssdcli.evaluation.cocoeval`, much faster than pycocotools: README
Benchmarks, ``eval_metrics``); ``pycocotools`` itself; and the optional ``faster-coco-eval`` package (the
same algorithm in C++). The last two are the references the tests compare ours with.

COCO data is scored against its own annotation json when it is given (its ids, its ``area``
field, which is the segmentation area and decides small / medium / large, and its crowd
regions), so the numbers equal pycocotools run directly on that json. Otherwise, and for
VOC-style data, the ground truth is built in memory from the records:

- images get ids ``1..N`` in record order (VOC file stems are strings, pycocotools wants ints);
- categories are the 1-based class indices, so a detection's ``category_id`` is used as it is;
- each box becomes ``bbox = [x, y, w, h]`` with ``area = w * h``;
- a VOC ``difficult`` box becomes ``iscrowd = 1``. pycocotools treats crowd boxes as "ignore"
  regions: a detection that matches no regular box but overlaps a crowd box by
  intersection / detection area above the threshold is ignored, neither a true nor a false
  positive, and crowd boxes never count as missed. That is the VOC rule for difficult objects,
  with the overlap measured against the detection instead of the union.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError
from ssdcli.evaluation.cocoeval import coco_evaluate

Backend = Literal["auto", "ssdcli", "pycocotools", "faster_coco_eval"]

# COCOeval.summarize() stats, in its order.
STAT_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl", "ar1", "ar10", "ar100", "ars", "arm", "arl")


@dataclass(frozen=True)
class CocoMetrics:
    """``COCOeval``'s summary and per-class AP.

    Attributes:
        stats: ``STAT_NAMES`` -> value in [0, 1], or ``None`` where pycocotools has no ground truth
            to score (its -1), e.g. ``aps`` without small objects.
        per_class_ap: AP@[.5:.95] of each class (index ``k - 1`` for label ``k``), ``None`` for a
            class without (non-crowd) ground truth.
    """

    stats: dict[str, float | None]
    per_class_ap: list[float | None]


def coco_ground_truth(dataset: DetectionDataset) -> dict:
    """The records as a COCO instances dict (see the module docstring for the conventions).

    COCO data keeps its image and category ids; VOC-style data gets image ids ``1..N`` in record
    order and category ids ``1..C``.
    """
    coco_data = dataset.format == "coco" and dataset.category_ids is not None
    category_ids = list(dataset.category_ids) if coco_data else list(range(1, dataset.num_classes + 1))
    images, annotations = [], []
    for index, record in enumerate(dataset.records):
        image_id = record.image_id if coco_data else index + 1
        images.append({"id": image_id, "width": record.width, "height": record.height, "file_name": record.image_path.name})
        boxes = record.boxes_xyxy_px.astype(np.float64)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ignore = np.asarray(record.difficult, bool) | np.asarray(record.iscrowd, bool)
        for j in range(record.num_boxes):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[int(record.labels[j]) - 1],
                    "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), float(widths[j]), float(heights[j])],
                    "area": float(widths[j] * heights[j]),
                    "iscrowd": int(ignore[j]),
                }
            )
    categories = [{"id": cat_id, "name": name} for cat_id, name in zip(category_ids, dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(dataset: DetectionDataset, detections: list[dict]) -> list[dict]:
    """Detections (checked by :func:`~ssdcli.evaluation.detections.parse_detections`) with the
    image ids :func:`coco_ground_truth` uses; new dicts, the input is not modified."""
    if dataset.format == "coco":
        return [dict(d) for d in detections]
    image_id_of = {record.image_id: index + 1 for index, record in enumerate(dataset.records)}
    return [{**d, "image_id": image_id_of[d["image_id"]]} for d in detections]


def coco_backend(name: Backend = "auto") -> Backend:
    """The COCO implementation to use: ``auto`` is ``ssdcli``
    (:func:`~ssdcli.evaluation.cocoeval.coco_evaluate`); ``pycocotools`` and ``faster_coco_eval``
    (a C++ port of the same algorithm, optional) are the references, same numbers.

    Raises:
        UserError: ``faster_coco_eval`` was asked for and is not installed.
    """
    if name == "faster_coco_eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            raise UserError("faster_coco_eval is not installed; `pip install faster-coco-eval` or use the default backend") from None
    return "ssdcli" if name == "auto" else name


def _coco_classes(backend: Backend):
    """``(COCO, COCOeval)`` of a backend; both share pycocotools' API."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _coco_from_dict(coco_class, data: dict):
    coco = coco_class()
    coco.dataset = data
    coco.createIndex()
    return coco


def evaluate_coco(
    dataset: DetectionDataset,
    detections: list[dict],
    ground_truth: dict | None = None,
    backend: Backend = "auto",
) -> CocoMetrics:
    """Score detections as pycocotools' ``COCOeval`` (bbox, its default parameters) does.

    Args:
        dataset: the ground truth; its records choose the images scored.
        detections: COCO results dicts, checked against ``dataset``.
        ground_truth: for COCO data, the annotation json as loaded (its own ``area`` and crowd
            regions); ``None`` builds it from the records (:func:`coco_ground_truth`).
        backend: ``ssdcli``, ``pycocotools``, ``faster_coco_eval`` or ``auto`` (:func:`coco_backend`).
    """
    backend = coco_backend(backend)
    if ground_truth is None:
        ground_truth = coco_ground_truth(dataset)
    image_ids = category_ids = None
    if dataset.format == "coco":
        # The json may hold more images and categories than the dataset read from it (a split,
        # a --classes subset): score only those.
        image_ids = sorted(record.image_id for record in dataset.records)
        category_ids = sorted(set(dataset.category_ids) & {category["id"] for category in ground_truth["categories"]})
    if backend == "ssdcli":
        # coco_evaluate does not modify the results, so COCO data's detections need no copy.
        results = detections if dataset.format == "coco" else coco_results(dataset, detections)
        evaluation = coco_evaluate(ground_truth, results, image_ids, category_ids)
        stats, precision, scored_categories = evaluation.stats, evaluation.precision, evaluation.category_ids
    else:
        results = coco_results(dataset, detections)
        stats, precision, scored_categories = _run_cocoeval(backend, ground_truth, results, image_ids, category_ids)

    stats = {name: (float(value) if value >= 0 else None) for name, value in zip(STAT_NAMES, stats)}
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max dets];
    # area "all", 100 detections, as summarize() does for AP; -1 marks "no ground truth".
    precision = precision[:, :, :, 0, -1]  # (T, R, K)
    column_of = {cat_id: k for k, cat_id in enumerate(scored_categories)}
    dataset_categories = dataset.category_ids if dataset.format == "coco" else range(1, dataset.num_classes + 1)
    per_class: list[float | None] = []
    for cat_id in dataset_categories:
        values = precision[:, :, column_of[cat_id]] if cat_id in column_of else np.zeros(0)
        values = values[values > -1]
        per_class.append(float(values.mean()) if values.size else None)
    return CocoMetrics(stats=stats, per_class_ap=per_class)


def _run_cocoeval(
    backend: Backend, ground_truth: dict, results: list[dict], image_ids: list | None, category_ids: list | None
) -> tuple[np.ndarray, np.ndarray, list]:
    """pycocotools' or faster_coco_eval's ``COCOeval``: ``(stats float64[12], precision
    float64[T, R, K, A, M], the K category ids)``. Their progress prints are captured and dropped."""
    coco_class, eval_class = _coco_classes(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from_dict(coco_class, ground_truth)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # loadRes cannot take an empty list (it looks at anns[0]); an empty result set scores 0
            coco_dt = _coco_from_dict(coco_class, {**ground_truth, "annotations": []})
        evaluator = eval_class(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
            evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats), evaluator.eval["precision"], list(evaluator.params.catIds)
