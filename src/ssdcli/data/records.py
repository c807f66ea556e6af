"""What every reader produces: one :class:`ImageRecord` per image, boxes in pixels.

These plain records are the single interface between the readers (VOC, COCO, YOLO, CSV) and everything that
consumes annotations: training datasets, ``ssd data check``, prior coverage and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np


MAX_BOXES_PER_IMAGE = 10_000
"""More boxes than this on one image is refused (the image is skipped with an error): matching,
evaluation and prior coverage compare every box with every default box or detection, so 3 million
boxes on one image asked a training step for some 270 GB."""


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes:
        image_path: the image file.
        image_id: the id detections refer to: the file stem (str) for VOC-style data, the json's
            integer id for COCO (SPEC "detections file"); YOLO and CSV use the stem as VOC does.
        width, height: image size in pixels, as read from the image (not the annotation) when
            they disagree.
        boxes_xyxy_px: float32[N, 4], continuous 0-based pixels, ``0 <= x1 < x2 <= width`` and
            ``0 <= y1 < y2 <= height`` (VOC's 1-based inclusive ``(xmin, ymin, xmax, ymax)``
            becomes ``(xmin - 1, ymin - 1, xmax, ymax)``).
        labels: int64[N], 1-based index into the dataset's class list (0 is background).
        difficult: bool[N], VOC ``difficult`` flag; left out of training targets by default and
            ignored by evaluation.
        iscrowd: bool[N], COCO ``iscrowd``; never a training target, "ignore" in COCO eval.
    """

    image_path: Path
    image_id: str | int
    width: int
    height: int
    boxes_xyxy_px: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray

    @property
    def num_boxes(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Problem:
    """Something wrong in a dataset. ``severity`` is ``error`` when training cannot use the data as
    it is, ``warning`` when the reader fixed or skipped it (and said how)."""

    file: str
    severity: Literal["error", "warning"]
    message: str

    def to_dict(self) -> dict:
        return {"file": self.file, "severity": self.severity, "message": self.message}


@dataclass
class DetectionDataset:
    """A read dataset: its records, class list and every problem found while reading.

    Attributes:
        format: ``voc``, ``coco``, ``yolo`` or ``csv``. Every format but ``coco`` identifies
            images by file stem and classes by 1-based index (SPEC "detections file").
        root: the folder (or file) the user named.
        classes: class names in index order; ``classes[k - 1]`` is the name of label ``k``.
        records: usable images, in a stable order.
        problems: everything found wrong; readers skip or fix what they can and record it here.
        category_ids: COCO only: the json's category id of each class (same order as
            ``classes``), to write detections with the json's own ids.
        annotation_file: COCO only: the instances json read, so COCO metrics can use it as is
            (its own areas and crowd regions) even when the user named the folder.
    """

    format: Literal["voc", "coco", "yolo", "csv"]
    root: Path
    classes: list[str]
    records: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)
    category_ids: list[int] | None = None
    annotation_file: Path | None = None

    def __post_init__(self) -> None:
        # Every reader builds its dataset through here, so the cap holds whatever the format.
        crowded = [r for r in self.records if r.num_boxes > MAX_BOXES_PER_IMAGE]
        if crowded:
            self.records[:] = [r for r in self.records if r.num_boxes <= MAX_BOXES_PER_IMAGE]
            self.problems.extend(
                Problem(str(r.image_path), "error", f"{r.num_boxes:,} boxes on one image, more than the "
                        f"{MAX_BOXES_PER_IMAGE:,} ssdcli handles (its IoU matrices would not fit in memory); image skipped")
                for r in crowded
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)
