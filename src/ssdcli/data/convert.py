"""``ssd data convert``: write a read dataset in another layout, losslessly.

Reading the output gives the same images (linked, or copied), the same classes in the same order
and the same boxes: VOC corners are written as ``(x1 + 1, y1 + 1, x2, y2)`` with up to 4
decimals (exact for the integer corners VOC files hold), COCO ``bbox`` as the float values, YOLO
as centres and sizes with 6 decimals (off by at most ``0.5e-6 x`` the image size, about 1e-3 px at
2000 px). What a layout cannot hold is said in :attr:`ConvertResult.notes`:

- class order: VOC folders sort class names, so a ``classes.txt`` beside ``Annotations/`` keeps
  the source's order (the reader honours it);
- VOC ``difficult``: YOLO has no flag, so the data.yaml lists the difficult lines under the
  ``difficult`` key (ultralytics ignores keys it does not know); COCO annotations get
  ``"difficult": 1``;
- COCO ``iscrowd`` regions have no VOC or YOLO form; they are written as difficult boxes, which
  training and the VOC metrics treat the same way (never a target, ignored when scoring).

Nothing in ``output`` is ever overwritten: every file to write is checked first and the
conversion refused if one exists.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import numpy as np
import yaml

from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.data.voc import ProgressFn
from ssdcli.data.yolo_layout import DIFFICULT_KEY
from ssdcli.errors import DataError
from ssdcli.files import atomic_write_json, atomic_write_text

TargetFormat = Literal["voc", "coco", "yolo"]
FORMATS: tuple[str, ...] = ("voc", "coco", "yolo")


@dataclass
class ConvertResult:
    """What :func:`convert_dataset` wrote."""

    output: Path
    format: str
    num_images: int
    num_boxes: int
    link: str  # "symlink", "hardlink" or "copy"
    split: str | None = None  # the split name the output files its images under
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """Every file to write, checked before anything is written."""

    images: list[tuple[Path, Path]] = field(default_factory=list)  # (source image, target)
    texts: list[tuple[Path, str]] = field(default_factory=list)  # (target, content)
    jsons: list[tuple[Path, dict]] = field(default_factory=list)

    def targets(self) -> list[Path]:
        return [t for _, t in self.images] + [t for t, _ in self.texts] + [t for t, _ in self.jsons]


def _number(value: float) -> str:
    """A coordinate with up to 4 decimals, no trailing zeros (``48``, ``47.5``)."""
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


def _ignored(record: ImageRecord) -> np.ndarray:
    """bool[N]: difficult or crowd (neither is a training target)."""
    return np.asarray(record.difficult, bool) | np.asarray(record.iscrowd, bool)


def _voc_xml(record: ImageRecord, image_name: str, classes: list[str]) -> str:
    objects = []
    for box, label, flag in zip(record.boxes_xyxy_px.astype(np.float64), record.labels, _ignored(record)):
        xmin, ymin, xmax, ymax = box[0] + 1, box[1] + 1, box[2], box[3]  # continuous -> VOC 1-based inclusive
        objects.append(
            f"  <object>\n    <name>{escape(classes[label - 1])}</name>\n    <difficult>{int(flag)}</difficult>\n"
            f"    <bndbox><xmin>{_number(xmin)}</xmin><ymin>{_number(ymin)}</ymin>"
            f"<xmax>{_number(xmax)}</xmax><ymax>{_number(ymax)}</ymax></bndbox>\n  </object>\n"
        )
    return (f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(image_name)}</filename>\n"
            f"  <size><width>{record.width}</width><height>{record.height}</height><depth>3</depth></size>\n"
            f"{''.join(objects)}</annotation>\n")


def _plan_voc(dataset: DetectionDataset, output: Path, split: str | None, names: list[str]) -> _Plan:
    plan = _Plan()
    for record, name in zip(dataset.records, names):
        plan.images.append((record.image_path, output / "JPEGImages" / name))
        plan.texts.append((output / "Annotations" / f"{Path(name).stem}.xml", _voc_xml(record, name, dataset.classes)))
    plan.texts.append((output / "classes.txt", "".join(f"{c}\n" for c in dataset.classes)))
    if split is not None:
        ids = "".join(f"{Path(n).stem}\n" for n in names)
        plan.texts.append((output / "ImageSets" / "Main" / f"{split}.txt", ids))
    return plan


def coco_instances(dataset: DetectionDataset, names: list[str]) -> dict:
    """The records as a COCO instances dict: COCO data keeps its ids, other data gets image ids
    ``1..N`` and category ids ``1..C`` in class order. ``file_name`` is ``names[i]``."""
    keep_ids = dataset.format == "coco" and dataset.category_ids is not None
    category_ids = list(dataset.category_ids) if keep_ids else list(range(1, dataset.num_classes + 1))  # type: ignore[arg-type]
    images, annotations = [], []
    for index, (record, name) in enumerate(zip(dataset.records, names)):
        image_id = record.image_id if keep_ids else index + 1
        images.append({"id": image_id, "file_name": name, "width": record.width, "height": record.height})
        boxes = record.boxes_xyxy_px.astype(np.float64)
        sizes = boxes[:, 2:] - boxes[:, :2]  # (N, 2) width, height
        for j in range(record.num_boxes):
            annotation = {
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[record.labels[j] - 1],
                "bbox": [float(boxes[j, 0]), float(boxes[j, 1]), float(sizes[j, 0]), float(sizes[j, 1])],
                "area": float(sizes[j, 0] * sizes[j, 1]), "iscrowd": int(record.iscrowd[j]),
            }
            if record.difficult[j]:
                annotation["difficult"] = 1
            annotations.append(annotation)
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(category_ids, dataset.classes)]
    return {"info": {"description": f"written by ssd data convert from {dataset.root}"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def _plan_coco(dataset: DetectionDataset, output: Path, split: str | None, names: list[str]) -> _Plan:
    plan = _Plan()
    plan.images = [(r.image_path, output / "images" / n) for r, n in zip(dataset.records, names)]
    plan.jsons.append((output / "annotations" / f"instances_{split or 'all'}.json", coco_instances(dataset, names)))
    return plan


def yolo_lines(record: ImageRecord) -> str:
    """The label file of ``record``: ``class cx cy w h`` normalised, 6 decimals, 0-based class."""
    boxes = record.boxes_xyxy_px.astype(np.float64)
    size = np.array([record.width, record.height], dtype=np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / size  # (N, 2)
    extent = (boxes[:, 2:] - boxes[:, :2]) / size  # (N, 2)
    return "".join(f"{label - 1} {c[0]:.6f} {c[1]:.6f} {e[0]:.6f} {e[1]:.6f}\n"
                   for label, c, e in zip(record.labels, centre, extent))


def _plan_yolo(dataset: DetectionDataset, output: Path, split: str | None, names: list[str]) -> _Plan:
    plan = _Plan()
    sub = Path(split) if split is not None else Path()
    difficult = {}
    for record, name in zip(dataset.records, names):
        label = Path("labels") / sub / f"{Path(name).stem}.txt"
        plan.images.append((record.image_path, output / "images" / sub / name))
        plan.texts.append((output / label, yolo_lines(record)))
        lines = [int(j) + 1 for j in np.flatnonzero(_ignored(record))]
        if lines:
            difficult[label.as_posix()] = lines
    data: dict = {split or "train": (Path("images") / sub).as_posix(), "nc": dataset.num_classes,
                  "names": dict(enumerate(dataset.classes))}
    source = str(dataset.root).replace("\n", " ")
    text = f"# written by ssd data convert from {source}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if difficult:
        text += ("# ssdcli's VOC-difficult lines per label file (ultralytics ignores this key)\n"
                 + yaml.safe_dump({DIFFICULT_KEY: difficult}, default_flow_style=None, allow_unicode=True))
    plan.texts.append((output / "data.yaml", text))
    return plan


def _image_names(dataset: DetectionDataset) -> list[str]:
    """Each image's file name in the output; refused when two images share one."""
    names = [r.image_path.name for r in dataset.records]
    stems: dict[str, Path] = {}
    for record, name in zip(dataset.records, names):
        key = Path(name).stem.lower()
        if key in stems:
            raise DataError(f"{record.image_path} and {stems[key]} would both be {name} in the output; rename one")
        stems[key] = record.image_path
    return names


def _link(source: Path, target: Path, copy: bool) -> str:
    """Copy, or link ``target`` to ``source`` (a symlink, else a hardlink); the way it was done."""
    if copy:
        shutil.copy2(source, target)
        return "copy"
    try:
        os.symlink(source.resolve(), target)
        return "symlink"
    except OSError:
        pass
    try:
        os.link(source.resolve(), target)
        return "hardlink"
    except OSError as exc:
        raise DataError(f"cannot link {target} to {source} ({exc}); give --copy to copy the images") from None


def convert_dataset(
    dataset: DetectionDataset,
    to: TargetFormat,
    output: Path,
    split: str | None = None,
    copy: bool = False,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Write ``dataset`` to ``output`` in layout ``to`` (see the module docstring).

    Args:
        dataset: the read dataset (every record is written, negatives included).
        to: ``voc`` (Annotations/ + JPEGImages/ + classes.txt), ``coco``
            (annotations/instances_<split or all>.json + images/) or ``yolo`` (images/ + labels/ +
            data.yaml).
        output: the folder to write into; created if missing.
        split: the name the written images are filed under (VOC ``ImageSets/Main/<split>.txt``,
            YOLO ``images/<split>/`` and the yaml key, COCO ``instances_<split>.json``); characters
            other than letters, digits, ``.``, ``-`` and ``_`` become ``_`` (``07+12`` -> ``07_12``:
            ``+`` joins splits when reading). The name used is :attr:`ConvertResult.split`.
        copy: copy the images instead of linking them.
        progress: called as ``progress(done, total)`` over the files.

    Raises:
        DataError: ``to`` is unknown, two images share a file name, a file to write exists
            already, or images cannot be linked.
    """
    if to not in FORMATS:
        raise DataError(f"--to {to}: choose one of {', '.join(FORMATS)}")
    output = Path(output)
    split = re.sub(r"[^\w.-]", "_", split) if split is not None else None
    names = _image_names(dataset)
    plan = {"voc": _plan_voc, "coco": _plan_coco, "yolo": _plan_yolo}[to](dataset, output, split, names)
    existing = [t for t in plan.targets() if os.path.lexists(t)]
    if existing:
        raise DataError(f"{existing[0]} exists ({len(existing)} of the files to write do); ssd data convert never "
                        "overwrites: give a new or empty OUT folder")
    for folder in sorted({t.parent for t in plan.targets()}):
        folder.mkdir(parents=True, exist_ok=True)
    total, link = len(plan.targets()), "copy" if copy else "symlink"
    for done, (source, target) in enumerate(plan.images, start=1):
        link = _link(source, target, copy)
        if progress is not None:
            progress(done, total)
    for target, text in plan.texts:
        atomic_write_text(target, text)
    for target, data in plan.jsons:
        atomic_write_json(target, data)
    if progress is not None:
        progress(total, total)
    return ConvertResult(output, to, len(dataset.records), sum(r.num_boxes for r in dataset.records), link,
                         split, _notes(dataset, to))


def _notes(dataset: DetectionDataset, to: str) -> list[str]:
    crowd = int(sum(r.iscrowd.sum() for r in dataset.records))
    notes = []
    if crowd and to != "coco":
        notes.append(f"{crowd} COCO crowd regions written as difficult boxes ({to.upper()} has no crowd flag)")
    return notes
