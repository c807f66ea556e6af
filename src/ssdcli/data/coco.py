"""COCO instances json -> :class:`ImageRecord` s.

Boxes: COCO ``bbox`` is ``[x, y, w, h]`` (xywh) in continuous 0-based pixels; records hold xyxy
``(x, y, x + w, y + h)``. Classes are the json's categories in id order (SPEC.md), and
``DetectionDataset.category_ids`` keeps each class's json id so detections can be written back
with the json's own ids. ``iscrowd`` boxes are kept, flagged, for evaluation to ignore.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import numpy as np

from ssdcli.data.check import sanitize_boxes_xyxy_px, usable_box_problems
from ssdcli.data.coco_checks import describe, is_finite_number, validate_coco
from ssdcli.data.images import TRUNCATED_JPEG, read_image_size, verify_image
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem
from ssdcli.data.voc import ProgressFn
from ssdcli.errors import DataError


def load_coco_json(path: Path, evaluation: bool = False) -> dict:
    """The parsed json, checked to be COCO instances with entries of the right types
    (:func:`ssdcli.data.coco_checks.validate_coco`).

    Args:
        evaluation: also require what COCO metrics read (each annotation's ``id`` and ``area``).

    Raises:
        DataError: naming the file (and the entry and field) when it is not valid json, not
            COCO instances, or an entry has a field of the wrong type.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read; not a COCO instances file") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: JSON value that cannot be read ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    validate_coco(data, Path(path), evaluation=evaluation)
    return data


def safe_file_name(file_name: str) -> bool:
    """True when ``file_name`` names a file inside the image folder: relative, and no ``..``
    that climbs out of it. Checked on the text (symbolic links inside the dataset are followed
    as whoever made them meant)."""
    name = file_name.replace("\\", "/")
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(file_name).drive:
        return False
    return not posixpath.normpath(name).startswith("..")


def find_image_folder(json_path: Path, file_names: Sequence[str]) -> Path:
    """Where the images of ``json_path`` are: for ``annotations/instances_val2017.json``, the
    sibling ``val2017/`` (COCO's layout), else ``images/``, else the json's own folder(s).
    The first folder holding the first image listed wins."""
    json_path = Path(json_path)
    base = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    split = json_path.stem.removeprefix("instances_")
    candidates = [base / split, base / "images", base, json_path.parent]
    probe = next((name for name in file_names if safe_file_name(name)), None)
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
        DataError: the json is malformed, not COCO instances, or has an entry with a field of the
            wrong type (:func:`load_coco_json`).
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path)
    source = str(json_path)
    problems: list[Problem] = []
    class_list, category_ids, label_of_id, name_of_id = _classes(data["categories"], classes, source, problems)

    images = _unique_images(data["images"], source, problems)
    annotations_of = _annotations_by_image(data.get("annotations", []), {image["id"] for image in images},
                                           {img["id"] for img in data["images"] if "id" in img}, source, problems)
    folder = Path(image_dir) if image_dir is not None else find_image_folder(json_path, [i["file_name"] for i in images])

    records: list[ImageRecord] = []
    for done, image in enumerate(images, start=1):
        if progress is not None:
            progress(done, len(images))
        if not safe_file_name(image["file_name"]):
            problems.append(Problem(source, "error", f"image {image['id']}: file_name {describe(image['file_name'])} "
                                    f"points outside the image folder {folder}; image skipped"))
            continue
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
    dataset = DetectionDataset(
        "coco", json_path, class_list, records, problems, category_ids=category_ids, annotation_file=json_path
    )
    dataset.problems += usable_box_problems(dataset)
    return dataset


def _classes(
    categories: list[dict], classes: list[str] | None, source: str, problems: list[Problem]
) -> tuple[list[str], list[int], dict[int, int], dict[int, str]]:
    """``(class list, its category ids, label of each kept category id, name of each id)``.

    Categories sharing a name are an error (two classes nobody can tell apart) unless a
    ``classes`` list says what the name means: then every id of that name is that class, and
    detections are written with the lowest.
    """
    categories = sorted(categories, key=lambda c: c["id"])
    name_of_id: dict[int, str] = {}
    for category in categories:
        if category["id"] in name_of_id:
            problems.append(Problem(source, "error", f"category id {category['id']} is defined twice; "
                                    "the second definition is ignored"))
            continue
        name_of_id[category["id"]] = str(category.get("name", category["id"]))
    ids_of_name: dict[str, list[int]] = {}
    for cid, name in name_of_id.items():
        ids_of_name.setdefault(name, []).append(cid)
    for name, ids in ids_of_name.items():
        if len(ids) > 1:
            listed = ", ".join(str(i) for i in ids)
            if classes is None:
                problems.append(Problem(source, "error", f"categories {listed} are all named '{name}'; rename them, "
                                        "or give --classes to read every category of one name as one class"))
            elif name in classes:
                problems.append(Problem(source, "warning", f"categories {listed} are all named '{name}'; read as the "
                                        f"one class '{name}' of --classes (detections written with id {ids[0]})"))
    if classes is None:
        class_list = [name_of_id[cid] for cid in name_of_id]
        category_ids = list(name_of_id)
        return class_list, category_ids, {cid: k for k, cid in enumerate(category_ids, start=1)}, name_of_id
    class_list, category_ids = list(classes), []
    next_id = max(name_of_id, default=0) + 1
    for name in class_list:
        if name not in ids_of_name:
            problems.append(Problem(source, "warning", f"class '{name}' is not a category of this json; "
                                    f"it gets the new category id {next_id}"))
            ids_of_name[name], next_id = [next_id], next_id + 1
        category_ids.append(ids_of_name[name][0])
    label_of_id = {cid: k for k, name in enumerate(class_list, start=1) for cid in ids_of_name[name] if cid in name_of_id}
    return class_list, category_ids, label_of_id, name_of_id


def _unique_images(entries: list[dict], source: str, problems: list[Problem]) -> list[dict]:
    """The image entries with an ``id`` and a ``file_name``, the first of each id; reports the
    rest (a repeated id is an error: its annotations cannot say which image they are on)."""
    images = [img for img in entries if "id" in img and "file_name" in img]
    if len(images) < len(entries):
        problems.append(Problem(source, "error", f"{len(entries) - len(images)} image entries lack "
                                "'id' or 'file_name'; skipped"))
    first: dict[int, dict] = {}
    for image in images:
        if image["id"] in first:
            problems.append(Problem(source, "error", f"image id {image['id']} is used by '{first[image['id']]['file_name']}' "
                                    f"and '{image['file_name']}'; its annotations cannot tell them apart, "
                                    "the second is skipped"))
        else:
            first[image["id"]] = image
    return list(first.values())


def _annotations_by_image(
    annotations: list[dict], read_ids: set[int], listed_ids: set[int], source: str, problems: list[Problem]
) -> dict[int, list[dict]]:
    """Annotations grouped by ``image_id``; those on no listed image are counted in a warning."""
    annotations_of: dict[int, list[dict]] = {}
    orphans: list[int] = []
    for ann in annotations:
        if ann["image_id"] in read_ids:
            annotations_of.setdefault(ann["image_id"], []).append(ann)
        elif ann["image_id"] not in listed_ids:
            orphans.append(ann["image_id"])
    if orphans:
        examples = ", ".join(describe(i) for i in sorted(set(orphans))[:5])
        problems.append(Problem(source, "warning", f"{len(orphans)} annotations refer to image ids that are not in "
                                f"'images' (e.g. {examples}); dropped"))
    return annotations_of


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
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            problems.append(Problem(source, "error", f"{what}: bbox must be [x, y, w, h] finite numbers, got "
                                    f"{describe(bbox, 80)}; annotation dropped"))
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
        difficult=np.array([bool(ann.get("difficult", 0)) for ann in kept], dtype=bool),  # ssd data convert's VOC flag
        iscrowd=np.array([bool(ann.get("iscrowd", 0)) for ann in kept], dtype=bool),
    )
