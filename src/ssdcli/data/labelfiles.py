"""What the YOLO and CSV readers share: listing image files, reading an image's size, building a
record from boxes already in continuous pixels, and split list files.

Both formats name images by file and identify them by file stem (``image_id``), as VOC does, so
evaluation and ``ssd detect --coco-json`` use the stem and the 1-based class index for them too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ssdcli.data.check import sanitize_boxes_xyxy_px
from ssdcli.data.images import TRUNCATED_JPEG, read_image_size, verify_image
from ssdcli.data.records import ImageRecord, Problem
from ssdcli.data.voc import IMAGE_SUFFIXES
from ssdcli.errors import DataError


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden folders skipped), sorted."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(current, f) for f in files if is_image_file(Path(f))]
    return sorted(found)


def measure_image(
    image_path: Path,
    annotated: tuple[int, int] | None,
    check_images: bool,
    verify_pixels: bool,
    source: str,
) -> tuple[int, int, list[Problem]]:
    """The image size to use and a warning when the annotation's size disagrees.

    Args:
        image_path: the image file.
        annotated: ``(width, height)`` written in the annotation (CSV ``width`` / ``height``
            columns), None when it gives none.
        check_images: read the header (True) or trust ``annotated`` where given (False).
        verify_pixels: also decode the whole file to find truncation.
        source: the annotation file, for the warning.

    Raises:
        DataError: the image is missing or unreadable.
    """
    if not check_images and annotated is not None and min(annotated) > 0:
        return annotated[0], annotated[1], []
    problems = []
    if verify_pixels and verify_image(image_path):
        problems.append(Problem(str(image_path), "warning", TRUNCATED_JPEG))
    width, height = read_image_size(image_path)
    if annotated is not None and annotated != (width, height):
        problems.append(Problem(source, "warning", f"{image_path.name}: the annotation says {annotated[0]}x"
                                f"{annotated[1]} but the image is {width}x{height}; using the image's size"))
    return width, height, problems


def make_record(
    image_path: Path,
    width: int,
    height: int,
    boxes_xyxy_px: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
    source: str,
    descriptions: list[str],
    problems: list[Problem],
) -> ImageRecord:
    """An :class:`ImageRecord` of boxes clipped and checked by the shared rule
    (:func:`~ssdcli.data.check.sanitize_boxes_xyxy_px`); what is dropped goes to ``problems``.

    Args:
        boxes_xyxy_px: float[N, 4], xyxy, continuous 0-based pixels.
        labels: int[N], 1-based class indices.
        difficult: bool[N].
    """
    keep, boxes, box_problems = sanitize_boxes_xyxy_px(boxes_xyxy_px, width, height, source, descriptions)
    problems += box_problems
    return ImageRecord(
        image_path=image_path,
        image_id=image_path.stem,
        width=width,
        height=height,
        boxes_xyxy_px=boxes[keep].reshape(-1, 4),  # (N, 4)
        labels=np.asarray(labels, dtype=np.int64)[keep],
        difficult=np.asarray(difficult, dtype=bool)[keep],
        iscrowd=np.zeros(int(keep.sum()), dtype=bool),
    )


def unique_stems(records: Iterable[ImageRecord], source_of: dict[Path, str], problems: list[Problem]) -> list[ImageRecord]:
    """``records`` without a second image of an already used stem (the stem is the image id)."""
    seen: dict[str, Path] = {}
    kept = []
    for record in records:
        if record.image_id in seen:
            problems.append(Problem(source_of.get(record.image_path, str(record.image_path)), "warning",
                                    f"image id '{record.image_id}' ({record.image_path}) already used by "
                                    f"{seen[record.image_id]}; skipped"))
            continue
        seen[str(record.image_id)] = record.image_path
        kept.append(record)
    return kept


def read_list_file(path: Path) -> list[str]:
    """The non-empty lines of a split list file (``splits/train.txt``), stripped.

    Raises:
        DataError: the file cannot be read.
    """
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split list ({exc})") from None


def class_mapping(
    names: list[str], classes: list[str] | None
) -> tuple[list[str], dict[str, int]]:
    """The class list to use (``classes`` when given, else ``names``) and ``name -> 1-based label``."""
    class_list = list(classes) if classes is not None else list(names)
    return class_list, {name: k for k, name in enumerate(class_list, start=1)}


def escapes(relative: str) -> bool:
    """Whether a relative path from an annotation leaves the folder it is relative to
    (``../x.jpg``, ``a/../../x.jpg``) or is absolute."""
    path = Path(relative.replace("\\", "/"))
    if path.is_absolute():
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False
