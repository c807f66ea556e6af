"""The check of a lower-precision model: its VOC07 mAP change against fp32 on annotated images.

Raw outputs of an int8 model differ from fp32 by design (and bf16's by about 1 % of their
magnitude), so ``ssd export --format openvino --precision bf16|int8`` does not compare them
element-wise: it runs the fp32 model and the lowered one over the same annotated images, scores
both with the PASCAL VOC07 metric (:func:`ssdcli.evaluation.evaluate`) and fails when the mAP
falls by more than ``--max-map-drop`` points.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ssdcli.errors import UserError

CHECK_IMAGES = 500
"""Most images the check runs on (evenly spaced over the dataset), so a large test set stays quick."""
DEFAULT_MAX_MAP_DROP = 1.0
"""``--max-map-drop`` default, in VOC07 mAP points (percent)."""


@dataclass(frozen=True)
class AccuracyCheck:
    """fp32 and lowered-precision VOC07 mAP on the same images.

    Attributes:
        precision: the lowered precision (``bf16`` / ``int8``).
        data: the annotated images' path.
        images: how many images were scored.
        fp32_map, map: VOC07 mAP as fractions in [0, 1].
        max_drop: the largest allowed fall, in mAP points.
    """

    precision: str
    data: Path
    images: int
    fp32_map: float
    map: float
    max_drop: float

    @property
    def change_points(self) -> float:
        """``map - fp32_map`` in mAP points (negative: worse than fp32)."""
        return 100.0 * (self.map - self.fp32_map)

    @property
    def passed(self) -> bool:
        return -self.change_points <= self.max_drop + 1e-9


def check_dataset(path: str | os.PathLike[str], class_names: list[str], limit: int = CHECK_IMAGES):
    """The annotated images of ``path`` in the model's class order, at most ``limit`` of them.

    Raises:
        UserError: not a dataset the readers know, or no image with annotations.
    """
    from ssdcli.data.reader import load_dataset
    from ssdcli.errors import DataError

    try:
        dataset = load_dataset(Path(path), classes=list(class_names))
    except DataError as exc:
        raise UserError(f"{path}: the mAP check needs annotated images ({exc})") from exc
    records = [r for r in dataset.records if r.num_boxes > 0]
    if not records:
        raise UserError(f"{path}: no annotated image of the model's classes ({', '.join(class_names)}) for the mAP check")
    if len(records) > limit:
        step = len(records) / limit
        records = [records[int(i * step)] for i in range(limit)]
    return dataclasses.replace(dataset, records=records)


def voc07_map(detector, dataset, batch_size: int = 8) -> float:
    """VOC07 mAP of ``detector`` (a :class:`ssdcli.inference.Detector`) on ``dataset``."""
    from ssdcli.evaluation import evaluate
    from ssdcli.inference import detect_dataset

    detections = detect_dataset(detector, dataset, batch_size=batch_size, workers=0)
    result = evaluate(dataset, detections, metrics=["voc07"]).voc07_map
    if result is None:
        raise UserError("the mAP check found no ground truth to score against")
    return float(result)


def map_change(reference, candidate, dataset, precision: str, max_drop: float, data: Path) -> AccuracyCheck:
    """Score the fp32 ``reference`` and the lowered ``candidate`` detector on ``dataset``."""
    return AccuracyCheck(
        precision=precision,
        data=Path(data),
        images=len(dataset.records),
        fp32_map=voc07_map(reference, dataset),
        map=voc07_map(candidate, dataset),
        max_drop=max_drop,
    )
