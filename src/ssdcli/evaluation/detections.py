"""Detections to score: the COCO results format of SPEC "ssd eval", read and checked.

On disk and in memory a detection is one dict ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` in original-image pixels (``xywh``, the COCO boundary). For VOC-style data ``image_id``
is the image's file stem (a string) and ``category_id`` the 1-based class index; for COCO data
both are the json's own ids. :func:`parse_detections` turns such a list into a
:class:`DetectionTable` of arrays, with boxes converted once to continuous ``xyxy`` pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

from ssdcli.data.coco_checks import describe
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError

REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass(frozen=True)
class DetectionTable:
    """Detections as parallel arrays, rows in the order they were given.

    Attributes:
        image_index: int64[D], index into ``dataset.records``.
        labels: int64[D], 1-based class index into ``dataset.classes``.
        boxes_xyxy_px: float64[D, 4], continuous 0-based pixels (``x + w``, ``y + h``), so IoU
            with the records' ground truth is the PASCAL devkit's "+1" IoU.
        scores: float64[D].
    """

    image_index: np.ndarray
    labels: np.ndarray
    boxes_xyxy_px: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _id_hint(dataset: DetectionDataset) -> str:
    if dataset.format != "coco":  # VOC, YOLO and CSV data name images by stem, classes by index
        return (
            f"for {dataset.format.upper()} data image_id is the image file stem as a string (e.g. \"000005\") and "
            f"category_id the 1-based class index (1..{dataset.num_classes}, see `ssd data check`)"
        )
    return "for COCO data image_id and category_id are the annotation json's own ids"


def _is_number(value: object) -> bool:
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def _lookups(dataset: DetectionDataset) -> tuple[dict, dict]:
    """``image_id -> record index`` and ``category_id -> 1-based label`` for ``dataset``."""
    image_index_of = {record.image_id: index for index, record in enumerate(dataset.records)}
    if dataset.format == "coco":
        if dataset.category_ids is None:
            raise UserError(f"{dataset.root}: COCO dataset without category ids; read it with ssdcli's reader")
        label_of = {cat_id: k + 1 for k, cat_id in enumerate(dataset.category_ids)}
    else:
        label_of = {k: k for k in range(1, dataset.num_classes + 1)}
    return image_index_of, label_of


def _convert(entries: list, image_index_of: dict, label_of: dict) -> DetectionTable | None:
    """The fast path: columns pulled out with comprehensions and checked as arrays (README "CPU
    speed notes"). ``None`` when anything is off; :func:`_first_problem` then says what."""
    try:
        image_ids = [entry["image_id"] for entry in entries]
        category_ids = [entry["category_id"] for entry in entries]
        bboxes = [entry["bbox"] for entry in entries]
        scores = [entry["score"] for entry in entries]
    except (TypeError, KeyError):
        return None
    # type() and not isinstance(): bool is an int, and True == 1 would match image or class 1.
    index = [image_index_of.get(x) if type(x) in (str, int) else None for x in image_ids]
    labels = [label_of.get(x) if type(x) is int else None for x in category_ids]
    if None in index or None in labels:
        return None
    try:
        boxes_xywh = np.array(bboxes) if bboxes else np.zeros((0, 4))  # (D, 4) when well formed
        score_array = np.array(scores) if scores else np.zeros(0)  # (D,)
    except ValueError:  # ragged lists
        return None
    if boxes_xywh.dtype.kind not in "iuf" or boxes_xywh.shape != (len(entries), 4) or score_array.dtype.kind not in "iuf":
        return None
    boxes_xywh, score_array = boxes_xywh.astype(np.float64), score_array.astype(np.float64)
    if not (np.isfinite(boxes_xywh).all() and np.isfinite(score_array).all() and (boxes_xywh[:, 2:] >= 0).all()):
        return None
    # xywh -> xyxy: the one conversion at the COCO boundary.
    boxes_xyxy = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], axis=1)  # (D, 4)
    return DetectionTable(
        image_index=np.array(index, np.int64),
        labels=np.array(labels, np.int64),
        boxes_xyxy_px=boxes_xyxy,
        scores=score_array,
    )


def _first_problem(entries: list, image_index_of: dict, label_of: dict, dataset: DetectionDataset, source: str) -> str:
    """The message for the first entry that is not a valid detection, checked one at a time."""
    for i, entry in enumerate(entries):
        where = f"{source}: detection {i}"
        if not isinstance(entry, dict):
            return f"{where} is a json {type(entry).__name__}, not an object with {', '.join(REQUIRED_KEYS)}"
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        if missing:
            return f"{where} lacks {', '.join(missing)}; every detection needs {', '.join(REQUIRED_KEYS)}"
        image_id, category_id, bbox, score = (entry[key] for key in REQUIRED_KEYS)
        if type(image_id) not in (str, int) or image_id not in image_index_of:
            return f"{where}: image_id {describe(image_id)} is not an image of {dataset.root}; {_id_hint(dataset)}"
        if type(category_id) is not int or category_id not in label_of:
            return f"{where}: category_id {describe(category_id)} is not a class of {dataset.root}; {_id_hint(dataset)}"
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            return f"{where}: bbox {describe(bbox, 80)} is not four finite numbers [x, y, w, h] in pixels"
        if bbox[2] < 0 or bbox[3] < 0:
            return f"{where}: bbox {describe(bbox, 80)} has a negative width or height; bbox is [x, y, w, h], not corners"
        if not _is_number(score):
            return f"{where}: score {describe(score)} is not a finite number"
    return f"{source}: detections in a form that cannot be read; write the COCO results format"


def parse_detections(entries: object, dataset: DetectionDataset, source: str = "detections") -> DetectionTable:
    """Check a list of COCO-results dicts against ``dataset`` and convert it to arrays.

    Args:
        entries: the parsed json: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}``, ``bbox`` in original-image pixels (``xywh``), ``w, h >= 0``.
        dataset: the ground truth the ids refer to.
        source: the file name (or a description) used in error messages.

    Raises:
        UserError: naming ``source``, the entry index and what to do, for anything that is not
            such a list, an unknown image or category id, a bbox that is not four finite numbers
            or has a negative size, or a score that is not a finite number.
    """
    if not isinstance(entries, list):
        raise UserError(
            f"{source}: expected a json list of detections ({{\"image_id\", \"category_id\", \"bbox\", "
            f"\"score\"}}), found a json {type(entries).__name__}; write the COCO results format"
        )
    image_index_of, label_of = _lookups(dataset)
    table = _convert(entries, image_index_of, label_of)
    if table is None:
        raise UserError(_first_problem(entries, image_index_of, label_of, dataset, source))
    return table


def load_detections(path: Path, dataset: DetectionDataset) -> list[dict]:
    """Read and check a COCO-results json file of detections for ``dataset``.

    Returns:
        The list of detection dicts, as stored (checked by :func:`parse_detections`).

    Raises:
        UserError: the file is missing, not json, or not valid detections for ``dataset``; the
            message names the file and, for a bad entry, its index.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: detections file not found; pass the COCO results json written by `ssd detect --coco-json`")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read; expected a list of COCO results detections") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise UserError(f"{path}: not a json file ({exc}); expected a list of COCO results detections") from None
    parse_detections(entries, dataset, source=str(path))
    return entries


def save_detections(path: Path, detections: list[dict]) -> None:
    """Write detections as a COCO-results json list (the format :func:`load_detections` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps(detections) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the detections there ({exc.strerror})") from None
