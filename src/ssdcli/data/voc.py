"""Pascal VOC XML annotations -> :class:`ImageRecord` s.

Coordinates: VOC XML stores 1-based inclusive pixel corners ``(xmin, ymin, xmax, ymax)``; records
hold continuous 0-based pixels ``(xmin - 1, ymin - 1, xmax, ymax)`` (SPEC.md), so a box covering
pixels 1..10 is 10 wide, as in the devkit's ``xmax - xmin + 1``.

Annotation files are untrusted input: they are parsed with defusedxml, which refuses entity
declarations at once (a "billion laughs" file fails before anything is expanded).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import defusedxml
import defusedxml.ElementTree as SafeElementTree
import numpy as np

from ssdcli.data.check import sanitize_boxes_xyxy_px, usable_box_problems
from ssdcli.data.images import TRUNCATED_JPEG, read_image_size, verify_image
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem
from ssdcli.errors import DataError

# The 20 PASCAL VOC classes in the devkit's order (VOCdevkit/VOCcode/VOCinit.m); label k is
# VOC_CLASSES[k - 1].
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while files are read."""


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: its class name, 1-based inclusive corners as written, difficult flag."""

    name: str
    box_voc: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class VocAnnotation:
    """One parsed XML file. ``width`` / ``height`` are 0 when the file gives none; ``problems``
    are objects that could not be read (they are left out of ``objects``)."""

    xml_path: Path
    filename: str | None
    width: int
    height: int
    objects: list[VocObject]
    problems: list[Problem]


@dataclass(frozen=True)
class VocItem:
    """An annotation file to read and the folders its image may be in, in search order."""

    xml_path: Path
    image_dirs: tuple[Path, ...]


def _text(element: ElementTree.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _int_or_zero(text: str | None) -> int:
    try:
        return int(float(text)) if text is not None else 0
    except ValueError:
        return 0


def parse_voc_xml(path: Path) -> VocAnnotation:
    """Read one VOC annotation file.

    Only direct ``object/name`` children are class names: a ``<name>`` in ``<owner>`` or in a
    ``<part>`` of a person layout is not an object. The ``truncated`` flag is ignored (it does not
    change training or the VOC metrics).

    Raises:
        DataError: naming the file, when it is not well-formed XML, declares entities, or is not
            a VOC ``<annotation>``.
    """
    try:
        root = SafeElementTree.parse(path).getroot()
    except defusedxml.DefusedXmlException as exc:
        raise DataError(f"{path}: XML refused, it declares entities or a DTD ({type(exc).__name__}); "
                        "VOC annotations never need them") from None
    except ElementTree.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: not a Pascal VOC annotation (root element <{root.tag}>, expected <annotation>)")

    objects: list[VocObject] = []
    problems: list[Problem] = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj.find("name"))
        if name is None:
            problems.append(Problem(str(path), "error", f"object {index} has no <name>; object skipped"))
            continue
        corners = [_text(obj.find(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(value) for value in corners)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problems.append(
                Problem(str(path), "error", f"object {index} '{name}': <bndbox> needs numeric xmin, ymin, "
                        f"xmax, ymax, got {corners}; object skipped")
            )
            continue
        difficult = _int_or_zero(_text(obj.find("difficult"))) != 0
        objects.append(VocObject(name, (xmin, ymin, xmax, ymax), difficult))

    return VocAnnotation(
        xml_path=Path(path),
        filename=_text(root.find("filename")),
        width=_int_or_zero(_text(root.find("size/width"))),
        height=_int_or_zero(_text(root.find("size/height"))),
        objects=objects,
        problems=problems,
    )


def default_class_order(names: set[str]) -> list[str]:
    """SPEC.md class order: the 20 VOC classes in devkit order when every name is one of them,
    else the sorted names."""
    if names and names <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(names)


class _ImageIndex:
    """Finds image files by name, case-insensitively, listing each folder once."""

    def __init__(self) -> None:
        self._folders: dict[Path, dict[str, Path]] = {}

    def _listing(self, folder: Path) -> dict[str, Path]:
        if folder not in self._folders:
            files = folder.iterdir() if folder.is_dir() else ()
            self._folders[folder] = {f.name.lower(): f for f in files if f.suffix.lower() in IMAGE_SUFFIXES}
        return self._folders[folder]

    def find(self, folders: Sequence[Path], filename: str | None, stem: str) -> Path | None:
        """The image named by ``<filename>`` (its base name), else ``stem`` + an image suffix."""
        wanted = []
        if filename:
            wanted.append(Path(filename.replace("\\", "/")).name.lower())
        wanted += [(stem + suffix).lower() for suffix in IMAGE_SUFFIXES]
        for name in wanted:
            for folder in folders:
                found = self._listing(folder).get(name)
                if found is not None:
                    return found
        return None


def _describe(index: int, obj: VocObject) -> str:
    xmin, ymin, xmax, ymax = (f"{v:g}" for v in obj.box_voc)
    return f"object {index} '{obj.name}' (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax})"


def _image_size(
    annotation: VocAnnotation, image_path: Path, check_images: bool, verify_pixels: bool
) -> tuple[int, int, list[Problem]]:
    """Image size to use (the image's own when read) and warnings; raises DataError if unreadable."""
    xml = str(annotation.xml_path)
    if not check_images and annotation.width > 0 and annotation.height > 0:
        return annotation.width, annotation.height, []
    problems = []
    if verify_pixels and verify_image(image_path):
        problems.append(Problem(str(image_path), "warning", TRUNCATED_JPEG))
    width, height = read_image_size(image_path)
    if (annotation.width, annotation.height) != (width, height):
        problems.append(
            Problem(xml, "warning", f"<size> says {annotation.width}x{annotation.height} but {image_path.name} "
                    f"is {width}x{height}; using the image's size")
        )
    return width, height, problems


def read_voc(
    root: Path,
    items: Sequence[VocItem],
    classes: list[str] | None = None,
    unknown_classes: Literal["warning", "error"] = "warning",
    check_images: bool = True,
    verify_pixels: bool = False,
    progress: ProgressFn | None = None,
) -> DetectionDataset:
    """Read VOC annotation files and pair each with its image.

    Args:
        root: the folder the user named (for the dataset and messages).
        items: annotation files and where their images may be.
        classes: the class list to use (a ``--classes`` file or a model's classes); None for the
            SPEC.md default order over the names found.
        unknown_classes: severity for objects whose class is not in ``classes``; they are dropped
            either way. ``warning`` when ``classes`` lists what the user wants to keep.
        check_images: read each image's header for its true size (and to find unreadable
            files); when False the XML's ``<size>`` is trusted where it is given.
        verify_pixels: also decode each image to find truncated files (slower).
        progress: called as ``progress(done, total)``.

    Returns:
        The dataset; unreadable annotations and images are left out and listed in ``problems``.
    """
    problems: list[Problem] = []
    index = _ImageIndex()
    found: list[tuple[VocAnnotation, Path, int, int]] = []
    for done, item in enumerate(items, start=1):
        try:
            annotation = parse_voc_xml(item.xml_path)
        except DataError as exc:
            problems.append(Problem(str(item.xml_path), "error", f"{exc}; image skipped"))
            continue
        finally:
            if progress is not None:
                progress(done, len(items))
        problems += annotation.problems
        image_path = index.find(item.image_dirs, annotation.filename, item.xml_path.stem)
        if image_path is None:
            named = annotation.filename or item.xml_path.stem
            folders = ", ".join(str(f) for f in item.image_dirs)
            problems.append(Problem(str(item.xml_path), "warning", f"image '{named}' not found in {folders}; skipped"))
            continue
        try:
            width, height, size_problems = _image_size(annotation, image_path, check_images, verify_pixels)
        except DataError as exc:
            problems.append(Problem(str(image_path), "warning", f"{exc}; image skipped"))
            continue
        problems += size_problems
        found.append((annotation, image_path, width, height))

    names_found = {obj.name for annotation, *_ in found for obj in annotation.objects}
    class_list = list(classes) if classes is not None else default_class_order(names_found)
    label_of = {name: k for k, name in enumerate(class_list, start=1)}

    records: list[ImageRecord] = []
    seen_ids: dict[str, Path] = {}
    for annotation, image_path, width, height in found:
        xml = str(annotation.xml_path)
        image_id = image_path.stem
        if image_id in seen_ids:
            problems.append(Problem(xml, "warning", f"image id '{image_id}' already used by {seen_ids[image_id]}; skipped"))
            continue
        seen_ids[image_id] = image_path
        records.append(_record(annotation, image_path, width, height, label_of, unknown_classes, problems))
    dataset = DetectionDataset("voc", Path(root), class_list, records, problems)
    dataset.problems += usable_box_problems(dataset)
    return dataset


def _record(
    annotation: VocAnnotation,
    image_path: Path,
    width: int,
    height: int,
    label_of: dict[str, int],
    unknown_classes: Literal["warning", "error"],
    problems: list[Problem],
) -> ImageRecord:
    """Labels and sanitised boxes of one annotation; appends what was dropped to ``problems``."""
    xml = str(annotation.xml_path)
    objects = []
    for number, obj in enumerate(annotation.objects, start=1):
        xmin, ymin, xmax, ymax = obj.box_voc
        if obj.name not in label_of:
            problems.append(Problem(xml, unknown_classes, f"{_describe(number, obj)}: class '{obj.name}' is not "
                                    "in the class list; object dropped"))
        elif xmax < xmin or ymax < ymin:
            problems.append(Problem(xml, "warning", f"{_describe(number, obj)}: inverted box (xmax < xmin or "
                                    "ymax < ymin); box dropped"))
        else:
            if xmax == xmin or ymax == ymin:
                # Inclusive corners that coincide are one pixel column / row (the devkit's
                # xmax - xmin + 1): kept, as the devkit counts them, but often a click without a drag.
                problems.append(Problem(xml, "warning", f"{_describe(number, obj)}: 1-pixel wide or high box "
                                        "(xmin == xmax or ymin == ymax); kept, as the VOC devkit counts it"))
            objects.append((number, obj))

    boxes_xyxy_px = np.array(
        [[o.box_voc[0] - 1, o.box_voc[1] - 1, o.box_voc[2], o.box_voc[3]] for _, o in objects], dtype=np.float64
    ).reshape(-1, 4)  # (N, 4) 1-based inclusive -> continuous 0-based
    keep, boxes_xyxy_px, box_problems = sanitize_boxes_xyxy_px(
        boxes_xyxy_px, width, height, xml, [_describe(number, obj) for number, obj in objects]
    )
    problems += box_problems
    kept = [obj for (_, obj), k in zip(objects, keep) if k]
    return ImageRecord(
        image_path=image_path,
        image_id=image_path.stem,
        width=width,
        height=height,
        boxes_xyxy_px=boxes_xyxy_px[keep].reshape(-1, 4),  # (N, 4)
        labels=np.array([label_of[obj.name] for obj in kept], dtype=np.int64),
        difficult=np.array([obj.difficult for obj in kept], dtype=bool),
        iscrowd=np.zeros(len(kept), dtype=bool),
    )
