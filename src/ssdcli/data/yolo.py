"""YOLO (ultralytics / darknet) text labels -> :class:`ImageRecord` s.

Each line of a label file is ``class cx cy w h``: a 0-based class index and the box centre and
size normalised by the image's width and height. Records hold continuous 0-based pixel corners
``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)``, the space the VOC reader's
``(xmin - 1, ymin - 1, xmax, ymax)`` is in, so a VOC box written as YOLO reads back as itself
(within the 6 decimals YOLO files usually keep). A line of more numbers is a segmentation
polygon ``class x1 y1 x2 y2 ...`` and becomes its bounding box; pose data (``kpt_shape`` in the
yaml) has keypoints after the box, which are ignored.

An image without a label file, or with an empty one, is a negative: background only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ssdcli.data.check import usable_box_problems
from ssdcli.data.labelfiles import class_mapping, make_record, measure_image, unique_stems
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem
from ssdcli.data.voc import ProgressFn
from ssdcli.data.yolo_layout import NOT_LABELS, YoloLayout, label_path
from ssdcli.errors import DataError

# Normalised coordinates may overshoot [0, 1] by float rounding in the tool that wrote them.
NORM_TOLERANCE = 1e-6


@dataclass
class LabelFile:
    """The usable lines of one label file.

    Attributes:
        class_index: int64[N], 0-based index into the yaml's ``names``.
        boxes_xyxy_norm: float64[N, 4], corners normalised by the image size, as written
            (not clipped yet).
        lines: the 1-based line number of each box.
        polygons: how many of the lines were segmentation polygons.
        problems: lines that could not be used (skipped) or were repeated (dropped).
    """

    class_index: np.ndarray
    boxes_xyxy_norm: np.ndarray
    lines: list[int]
    polygons: int = 0
    empty: bool = False
    problems: list[Problem] = field(default_factory=list)


def _parse_line(fields: list[str], num_classes: int, keypoints: bool) -> tuple[int, list[float], bool]:
    """``(class index, [x1, y1, x2, y2] normalised, is_polygon)``; ValueError says what is wrong."""
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not _is_float(f))
        raise ValueError(f"'{bad}' is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite value in {' '.join(fields)}")
    count = len(values) - 1
    polygon = not keypoints and count > 4
    if count < 4 or (polygon and (count % 2 or count < 6)):
        raise ValueError(f"expected 5 numbers (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), "
                         f"got {len(values)}")
    if values[0] != int(values[0]) or not 0 <= values[0] < num_classes:
        raise ValueError(f"class index {fields[0]} is not one of 0..{num_classes - 1} ({num_classes} names)")
    if polygon:
        xs, ys = values[1::2], values[2::2]
        return int(values[0]), [min(xs), min(ys), max(xs), max(ys)], True
    cx, cy, w, h = values[1:5]
    return int(values[0]), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], False


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_label_file(path: Path, num_classes: int, keypoints: bool = False) -> LabelFile:
    """Read one label file; each bad line is a problem naming the file and line.

    Raises:
        DataError: the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read label file ({exc})") from None
    classes, boxes, lines, problems = [], [], [], []
    polygons, seen = 0, {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            index, box, polygon = _parse_line(fields, num_classes, keypoints)
        except ValueError as exc:
            problems.append(Problem(str(path), "error", f"line {number}: {exc}; line skipped"))
            continue
        key = (index, *box)
        if key in seen:
            problems.append(Problem(str(path), "warning", f"line {number}: same box as line {seen[key]}; dropped"))
            continue
        seen[key] = number
        classes.append(index)
        boxes.append(box)
        lines.append(number)
        polygons += polygon
    return LabelFile(
        class_index=np.array(classes, dtype=np.int64),
        boxes_xyxy_norm=np.array(boxes, dtype=np.float64).reshape(-1, 4),  # (N, 4)
        lines=lines,
        polygons=polygons,
        empty=not text.strip(),
        problems=problems,
    )


def _clip_norm(labels: LabelFile, names: list[str], path: Path, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to [0, 1] (a warning per clipped line) and which still have an area."""
    boxes = labels.boxes_xyxy_norm
    clipped = boxes.clip(0.0, 1.0)
    outside = (np.abs(clipped - boxes) > NORM_TOLERANCE).any(axis=1)  # (N,)
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    vanished = ~inverted & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    for i in np.flatnonzero(outside & ~inverted):
        what = f"line {labels.lines[i]} '{names[labels.class_index[i]]}'"
        corners = ", ".join(f"{v:.4g}" for v in boxes[i])
        if vanished[i]:
            problems.append(Problem(str(path), "warning", f"{what}: box lies outside the image (corners {corners}); dropped"))
        else:
            problems.append(Problem(str(path), "warning", f"{what}: coordinates outside [0, 1] (corners {corners}); clipped"))
    return clipped, ~vanished


def _image_record(
    image: Path, labels: LabelFile, layout: YoloLayout, label_of: dict[str, int], unknown: str,
    size: tuple[int, int], problems: list[Problem],
) -> ImageRecord:
    """One image's record from its parsed label file."""
    label = label_path(image)
    width, height = size
    boxes_norm, keep = _clip_norm(labels, layout.names, label, problems)
    names = [layout.names[i] for i in labels.class_index]
    for i in np.flatnonzero(keep):
        if names[i] not in label_of:
            problems.append(Problem(str(label), unknown, f"line {labels.lines[i]}: class '{names[i]}' is not in "  # type: ignore[arg-type]
                                    "the class list; box dropped"))
            keep[i] = False
    index = np.flatnonzero(keep)
    boxes_xyxy_px = boxes_norm[index] * np.array([width, height, width, height], dtype=np.float64)  # (N, 4)
    difficult_lines = layout.difficult.get(label, frozenset())
    return make_record(
        image, width, height, boxes_xyxy_px,
        labels=np.array([label_of[names[i]] for i in index], dtype=np.int64),
        difficult=np.array([labels.lines[i] in difficult_lines for i in index], dtype=bool),
        source=str(label),
        descriptions=[f"line {labels.lines[i]} '{names[i]}'" for i in index],
        problems=problems,
    )


def read_yolo(
    layout: YoloLayout,
    classes: list[str] | None = None,
    unknown_classes: Literal["warning", "error"] = "warning",
    check_images: bool = True,
    verify_pixels: bool = False,
    progress: ProgressFn | None = None,
) -> DetectionDataset:
    """Read the images of ``layout`` and their label files.

    Args:
        layout: the located split (:mod:`ssdcli.data.yolo_layout`).
        classes: the class list to use (``--classes`` or a model's); boxes of other classes are
            dropped with a problem of severity ``unknown_classes``. None: the yaml's ``names``.
        check_images: ignored beyond reading each header: YOLO boxes are relative to the image
            size, so it is always read.
        verify_pixels: also decode every image to find truncated files.
        progress: called as ``progress(done, total)``.

    Returns:
        The dataset (format ``yolo``); image ids are file stems.
    """
    problems: list[Problem] = list(layout.problems)
    class_list, label_of = class_mapping(layout.names, classes)
    records, no_file, empty, polygons, source_of = [], [], 0, 0, {}
    for done, image in enumerate(layout.images, start=1):
        if progress is not None:
            progress(done, len(layout.images))
        label = label_path(image)
        try:
            # Normalised boxes need the true size: the header is always read.
            width, height, _ = measure_image(image, None, True, verify_pixels, str(image))
            if label.is_file():
                labels = parse_label_file(label, len(layout.names), layout.keypoints)
            else:
                labels = LabelFile(np.zeros(0, np.int64), np.zeros((0, 4)), [], empty=True)
                no_file.append(label)
        except DataError as exc:
            problems.append(Problem(str(image), "warning", f"{exc}; image skipped"))
            continue
        problems += labels.problems
        empty += labels.empty and label.is_file()
        polygons += labels.polygons
        source_of[image] = str(label)
        records.append(_image_record(image, labels, layout, label_of, unknown_classes, (width, height), problems))
    problems += _summary_problems(layout, no_file, empty, polygons)
    dataset = DetectionDataset("yolo", layout.source, class_list, unique_stems(records, source_of, problems), problems)
    dataset.problems += usable_box_problems(dataset)
    return dataset


def _summary_problems(layout: YoloLayout, no_file: list[Path], empty: int, polygons: int) -> list[Problem]:
    """One warning each for negatives, polygons, and a warning per label file with no image."""
    problems = []
    source = str(layout.source)
    if no_file or empty:
        example = f" (e.g. {no_file[0]})" if no_file else ""
        problems.append(Problem(source, "warning", f"{len(no_file)} images have no label file{example} and {empty} "
                                "an empty one: read as negatives (background only)"))
    if polygons:
        problems.append(Problem(source, "warning", f"{polygons} segmentation polygons read as their bounding boxes"))
    expected = {label_path(image) for image in layout.images}  # skipped images' labels are no orphans
    for folder in dict.fromkeys(layout.label_dirs):
        if not folder.is_dir():
            continue
        for txt in sorted(folder.rglob("*.txt")):
            if txt not in expected and txt.name.lower() not in NOT_LABELS:
                problems.append(Problem(str(txt), "warning", "label file with no image; not read"))
    return problems

