"""The worst images of an analysis: most false positives + missed objects, drawn.

At the score threshold of the confusion matrix, with the IoU 0.5 matching of
:mod:`~ssdcli.evaluation.analysis`: a false positive is a detection that took no box, a missed
object a non-difficult box no such detection took. Images are ranked by the sum (ties: dataset
order); images without an error are not drawn. Each is written with the ground truth dashed
(missed objects in red) and the detections solid, a false positive's caption naming its type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.errors import UserError
from ssdcli.evaluation.analysis import TYPES, DetectionTypes
from ssdcli.evaluation.detections import DetectionTable
from ssdcli.evaluation.pairs import FlatGroundTruth


@dataclass(frozen=True)
class WorstImage:
    """One image to draw.

    Attributes:
        record: index into the dataset's records.
        false_positives, missed: its counts at the threshold.
        detections: int64[k], rows of the detection table at or above the threshold.
        missed_boxes: bool[n], per box of the record, whether it was missed.
    """

    record: int
    image_id: str | int
    false_positives: int
    missed: int
    detections: np.ndarray
    missed_boxes: np.ndarray

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "false_positives": self.false_positives, "missed": self.missed}


def find_worst_images(
    records: list[ImageRecord],
    detections: DetectionTable,
    ground_truth: FlatGroundTruth,
    types: DetectionTypes,
    conf_threshold: float,
    count: int,
) -> list[WorstImage]:
    """The ``count`` images with the most false positives + missed objects (module docstring)."""
    confident = detections.scores >= conf_threshold
    false = confident & (types.strong == -1)
    found = np.zeros(len(ground_truth), bool)
    found[types.strong_gt[confident & (types.strong_gt >= 0)]] = True
    missed = ~found & ~ground_truth.ignore
    fp_per_image = np.bincount(detections.image_index[false], minlength=len(records))
    missed_per_image = np.bincount(ground_truth.image_index[missed], minlength=len(records))
    errors = fp_per_image + missed_per_image
    order = np.argsort(-errors, kind="stable")
    order = order[errors[order] > 0][:count]
    starts = np.searchsorted(ground_truth.image_index, order)
    return [
        WorstImage(
            record=int(r),
            image_id=records[r].image_id,
            false_positives=int(fp_per_image[r]),
            missed=int(missed_per_image[r]),
            detections=np.flatnonzero(confident & (detections.image_index == r)),
            missed_boxes=missed[start : start + records[r].num_boxes],
        )
        for r, start in zip(order.tolist(), starts.tolist())
    ]


def _captions(rows: np.ndarray, detections: DetectionTable, types: DetectionTypes, classes: list[str]) -> list[str]:
    captions = []
    for row in rows.tolist():
        label = int(detections.labels[row])
        text = f"{classes[label - 1]} {detections.scores[row]:.2f}"
        kind = int(types.kind[row])
        captions.append(text if types.strong[row] >= 0 else f"{text} {TYPES[kind]}")
    return captions


def safe_name(image_id: str | int) -> str:
    """A file-system safe form of an image id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(image_id)).strip("._") or "image"


def write_worst_images(
    directory: Path,
    worst: list[WorstImage],
    dataset: DetectionDataset,
    detections: DetectionTable,
    types: DetectionTypes,
) -> list[Path]:
    """Draw every worst image into ``directory`` as ``NN_<image>.jpg``; images that cannot be
    read are left out. Returns the files written."""
    from ssdcli.data.images import read_image_rgb
    from ssdcli.render import draw_detections, draw_ground_truth, write_image

    written = []
    for place, item in enumerate(worst, start=1):
        record = dataset.records[item.record]
        try:
            image = read_image_rgb(record.image_path)[..., ::-1]  # RGB -> BGR
        except (UserError, OSError):
            continue
        canvas = draw_ground_truth(image, record.boxes_xyxy_px, record.labels, dataset.classes, item.missed_boxes)
        rows = item.detections
        canvas = draw_detections(canvas, detections.boxes_xyxy_px[rows], detections.labels[rows], detections.scores[rows],
                                 dataset.classes, captions=_captions(rows, detections, types, dataset.classes))
        path = Path(directory) / f"{place:02d}_{safe_name(record.image_id)}.jpg"
        write_image(path, canvas)
        written.append(path)
    return written
