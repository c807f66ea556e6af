"""COCO instances json -> :class:`ImageRecord` s.

Boxes: COCO ``bbox`` is ``[x, y, w, h]`` (xywh) in continuous 0-based pixels; records hold xyxy
``(x, y, x + w, y + h)``. Classes are the json's categories in id order (SPEC.md), and
``DetectionDataset.category_ids`` keeps each class's json id so detections can be written back
with the json's own ids. ``iscrowd`` boxes are kept, flagged, for evaluation to ignore.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ssdcli.data.check import sanitize_boxes_xyxy_px
from ssdcli.data.images import TRUNCATED_JPEG, read_image_size, verify_image
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem
from ssdcli.data.voc import ProgressFn
from ssdcli.errors import DataError


def load_coco_json(path: Path) -> dict:
    """The parsed json, checked to have the ``images`` / ``annotations`` / ``categories`` lists.

    Raises:
        DataError: naming the file when it is not valid json or not COCO instances.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def find_image_folder(json_path: Path, file_names: Sequence[str]) -> Path:
    """Where the images of ``json_path`` are: for ``annotations/instances_val2017.json``, the
    sibling ``val2017/`` (COCO's layout), else ``images/``, else the json's own folder(s).
    The first folder holding the first image listed wins."""
    json_path = Path(json_path)
    base = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    split = json_path.stem.removeprefix("instances_")
    candidates = [base / split, base / "images", base, json_path.parent]
    probe = next(iter(file_names), None)
    if probe is not None:
        for folder in candidates:
            if (folder / probe).is_file():
                return folder
    return next((folder for folder in candidates if folder.is_dir() and folder != json_path.parent), base)


def read_coco(
    json_path: Path,
    image_dir: Path | None = None,
    classes: list[str] | None = None,
    unknown_classes: Literal["warning", "error"] = "warning",
    check_images: bool = True,
    verify_pixels: bool = False,
    progress: ProgressFn | None = None,
) -> DetectionDataset:
    """Read a COCO instances json.

    Args:
        json_path: the instances json.
        image_dir: the image folder; found next to the json when None (:func:`find_image_folder`).
        classes: category names to keep, in this order; annotations of other categories are
            dropped with a problem of severity ``unknown_classes``. None: every category, id order.
        check_images: read each image's header for its true size and to find missing files;
            when False the json's width / height are trusted.
        verify_pixels: also decode each image to find truncated files (slower).
        progress: called as ``progress(done, total)`` over the images.

    Raises:
        DataError: the json is malformed or not COCO instances.
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path)
    source = str(json_path)
    problems: list[Problem] = []

    categories = sorted((c for c in data["categories"] if isinstance(c, dict) and "id" in c), key=lambda c: c["id"])
    name_of_id = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    if classes is None:
        class_list = [name_of_id[c["id"]] for c in categories]
        category_ids = [c["id"] for c in categories]
    else:
        id_of_name = {name: cid for cid, name in name_of_id.items()}
        class_list = list(classes)
        next_id = max(id_of_name.values(), default=0) + 1
        category_ids = []
        for name in class_list:
            if name not in id_of_name:
                problems.append(Problem(source, "warning", f"class '{name}' is not a category of this json; "
                                        f"it gets the new category id {next_id}"))
                id_of_name[name], next_id = next_id, next_id + 1
            category_ids.append(id_of_name[name])
    label_of_id = {cid: k for k, cid in enumerate(category_ids, start=1) if name_of_id.get(cid) in class_list}

    annotations_of: dict[object, list[dict]] = {}
    for ann in data.get("annotations", []):
        if isinstance(ann, dict):
            annotations_of.setdefault(ann.get("image_id"), []).append(ann)

    images = [img for img in data["images"] if isinstance(img, dict) and "id" in img and "file_name" in img]
    if len(images) < len(data["images"]):
        problems.append(Problem(source, "error", f"{len(data['images']) - len(images)} image entries lack "
                                "'id' or 'file_name'; skipped"))
    folder = Path(image_dir) if image_dir is not None else find_image_folder(json_path, [i["file_name"] for i in images])

    records: list[ImageRecord] = []
    for done, image in enumerate(images, start=1):
        if progress is not None:
            progress(done, len(images))
        image_path = folder / image["file_name"]
        try:
            width, height = _image_size(image, image_path, source, check_images, verify_pixels, problems)
        except DataError as exc:
            problems.append(Problem(str(image_path), "warning", f"{exc}; image skipped"))
            continue
        anns = annotations_of.get(image["id"], [])
        records.append(
            _record(image, image_path, width, height, anns, label_of_id, name_of_id, unknown_classes, source, problems)
        )
    return DetectionDataset(
        "coco", json_path, class_list, records, problems, category_ids=category_ids, annotation_file=json_path
    )


def _image_size(
    image: dict, image_path: Path, source: str, check_images: bool, verify_pixels: bool, problems: list[Problem]
) -> tuple[int, int]:
    json_size = (image.get("width"), image.get("height"))
    if not check_images and all(isinstance(v, int) and v > 0 for v in json_size):
        return json_size[0], json_size[1]  # type: ignore[return-value]
    if verify_pixels and verify_image(image_path):
        problems.append(Problem(str(image_path), "warning", TRUNCATED_JPEG))
    width, height = read_image_size(image_path)
    if json_size != (width, height):
        problems.append(Problem(source, "warning", f"image {image['id']} ({image['file_name']}): json says "
                                f"{json_size[0]}x{json_size[1]} but the file is {width}x{height}; using the file's size"))
    return width, height


def _record(
    image: dict,
    image_path: Path,
    width: int,
    height: int,
    anns: list[dict],
    label_of_id: dict[int, int],
    name_of_id: dict[int, str],
    unknown_classes: Literal["warning", "error"],
    source: str,
    problems: list[Problem],
) -> ImageRecord:
    """One image's labels and sanitised boxes; appends what was dropped to ``problems``."""
    usable, descriptions = [], []
    for ann in anns:
        what = f"annotation {ann.get('id')} of image {image['id']} ({image['file_name']})"
        category = ann.get("category_id")
        bbox = ann.get("bbox")
        if category not in name_of_id:
            problems.append(Problem(source, "error", f"{what}: category_id {category!r} is not defined in "
                                    "'categories'; annotation dropped"))
        elif category not in label_of_id:
            problems.append(Problem(source, unknown_classes, f"{what}: class '{name_of_id[category]}' is not in "
                                    "the class list; annotation dropped"))
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problems.append(Problem(source, "error", f"{what}: bbox must be [x, y, w, h] numbers, got {bbox!r}; "
                                    "annotation dropped"))
        else:
            usable.append(ann)
            descriptions.append(f"{what} '{name_of_id[category]}' bbox {bbox}")

    bbox_xywh = np.array([ann["bbox"] for ann in usable], dtype=np.float64).reshape(-1, 4)  # (N, 4)
    boxes_xyxy_px = np.concatenate([bbox_xywh[:, :2], bbox_xywh[:, :2] + bbox_xywh[:, 2:]], axis=1)  # (N, 4)
    keep, boxes_xyxy_px, box_problems = sanitize_boxes_xyxy_px(boxes_xyxy_px, width, height, source, descriptions)
    problems += box_problems
    kept = [ann for ann, k in zip(usable, keep) if k]
    return ImageRecord(
        image_path=image_path,
        image_id=image["id"],
        width=width,
        height=height,
        boxes_xyxy_px=boxes_xyxy_px[keep].reshape(-1, 4),  # (N, 4)
        labels=np.array([label_of_id[ann["category_id"]] for ann in kept], dtype=np.int64),
        difficult=np.zeros(len(kept), dtype=bool),
        iscrowd=np.array([bool(ann.get("iscrowd", 0)) for ann in kept], dtype=bool),
    )
