"""Checking annotations: the box rules every reader applies, and the summary `ssd data check` shows.

Readers call :func:`sanitize_boxes_xyxy_px` so that no record ever holds a box that could make a
NaN later (zero width, inverted corners, outside the image); :func:`summarize` turns a read
:class:`DetectionDataset` into the numbers and the JSON of SPEC.md ``ssd data check``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdcli.data.records import DetectionDataset, Problem

# A box may poke out of the image by this much before clipping it is worth a warning: float
# rounding in COCO json, and tools that write 0-based corners into VOC's 1-based XML (xmin = 0).
CLIP_TOLERANCE_PX = 1.0

# COCO's object-size bins (cocoapi cocoeval.py, areaRng): small < 32^2 <= medium < 96^2 <= large.
SMALL_AREA_PX = 32**2
LARGE_AREA_PX = 96**2


def sanitize_boxes_xyxy_px(
    boxes_xyxy_px: np.ndarray,
    width: int,
    height: int,
    file: str,
    descriptions: list[str],
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Clip boxes to the image and drop the ones that cannot be trained on.

    Args:
        boxes_xyxy_px: float[N, 4], xyxy, continuous 0-based pixels, as annotated (converted).
        width, height: the image size in pixels.
        file: the annotation file, for the messages.
        descriptions: N strings naming each box for the messages (e.g. "object 3 'dog'
            (xmin=1, ymin=2, xmax=3, ymax=4)").

    Returns:
        ``(keep, boxes)``: keep bool[N] (False for dropped boxes), boxes float32[N, 4] clipped to
        ``[0, width] x [0, height]`` (meaningful where ``keep``), with ``0 <= x1 < x2 <= width``
        and ``0 <= y1 < y2 <= height`` for every kept box; and one warning per dropped or
        noticeably clipped box.
    """
    boxes = np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    finite = np.isfinite(boxes).all(axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    degenerate = finite & ((safe[:, 2] <= safe[:, 0]) | (safe[:, 3] <= safe[:, 1]))
    limits = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(safe, 0.0, limits)  # each coordinate into [0, W] or [0, H]
    moved = np.abs(clipped - safe).max(axis=1, initial=0.0) > CLIP_TOLERANCE_PX
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    outside = finite & ~degenerate & empty
    keep = finite & ~degenerate & ~empty

    problems = []
    size = f"{width}x{height}"
    for index in np.flatnonzero(~keep | moved):
        what = descriptions[index]
        if not finite[index]:
            text = f"{what}: coordinate is not a finite number; box dropped"
        elif degenerate[index]:
            text = f"{what}: zero-area or inverted box; box dropped"
        elif outside[index]:
            text = f"{what}: box lies outside the {size} image; box dropped"
        else:
            x1, y1, x2, y2 = (round(float(v), 1) for v in clipped[index])
            text = f"{what}: box extends outside the {size} image; clipped to [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        problems.append(Problem(file, "warning", text))
    return keep, clipped.astype(np.float32), problems


def usable_box_problems(dataset: DetectionDataset) -> list[Problem]:
    """The dataset-level rule every reader applies last: images but not one box to train on.

    Every box dropped, only ``iscrowd`` boxes (never targets) or none annotated: training would
    run with a loss of 0 and learn nothing, so that is an error. Only ``difficult`` boxes (left
    out of targets unless ``--use-difficult``) is a warning. A dataset without any usable image
    is reported by :func:`summarize` and training instead.
    """
    records = dataset.records
    if not records:
        return []
    crowd = sum(int(r.iscrowd.sum()) for r in records)
    targets = sum(int((~r.iscrowd).sum()) for r in records)
    if targets == 0:
        held = f"its {crowd} boxes are all iscrowd (never training targets)" if crowd else "it has no usable box"
        dropped = " and the reader dropped the others" if any("dropped" in p.message for p in dataset.problems) else ""
        return [Problem(str(dataset.root), "error", f"nothing to train on: {held}{dropped} in {len(records)} image{'s' if len(records) != 1 else ''}; "
                        "training would learn nothing (loss 0)")]
    if all(bool(r.difficult[~r.iscrowd].all()) for r in records if r.num_boxes):
        return [Problem(str(dataset.root), "warning", f"all {targets} boxes are 'difficult': training leaves them out "
                        "unless --use-difficult is given")]
    return []


@dataclass(frozen=True)
class BoxStats:
    """Box-size statistics over a dataset, in original-image pixels (min / median / max)."""

    width: tuple[float, float, float]
    height: tuple[float, float, float]
    area: tuple[float, float, float]
    small: int
    medium: int
    large: int

    def to_json(self) -> dict:
        """``{"width" | "height" | "area": {"min", "median", "max"}, "small", "medium", "large"}``."""
        spreads = {name: dict(zip(("min", "median", "max"), getattr(self, name))) for name in ("width", "height", "area")}
        return {**spreads, "small": self.small, "medium": self.medium, "large": self.large}


@dataclass(frozen=True)
class DatasetSummary:
    """What ``ssd data check`` reports about a read dataset."""

    format: str
    root: str
    classes: list[str]
    num_images: int
    num_boxes: int
    num_difficult: int
    num_crowd: int
    images_without_boxes: int
    boxes_per_class: dict[str, int]
    box_stats: BoxStats | None
    problems: list[Problem]

    @property
    def num_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def num_warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    @property
    def trainable(self) -> bool:
        """True when training could proceed on this data: no error-level problem, and at least
        one usable image."""
        return self.num_errors == 0 and self.num_images > 0

    def to_json(self) -> dict:
        """The SPEC.md ``ssd data check --json`` object, plus ``box_sizes``: the size table's
        numbers (``None`` without boxes; README "File formats")."""
        return {
            "format": self.format,
            "classes": list(self.classes),
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "boxes_per_class": dict(self.boxes_per_class),
            "box_sizes": self.box_stats.to_json() if self.box_stats is not None else None,
            "problems": [p.to_dict() for p in self.problems],
        }


def box_stats(boxes_xyxy_px: np.ndarray) -> BoxStats | None:
    """Size statistics of ``boxes_xyxy_px: float[N, 4]`` (xyxy, pixels); None when N == 0."""
    if boxes_xyxy_px.shape[0] == 0:
        return None
    widths = boxes_xyxy_px[:, 2] - boxes_xyxy_px[:, 0]
    heights = boxes_xyxy_px[:, 3] - boxes_xyxy_px[:, 1]
    areas = widths * heights

    def spread(values: np.ndarray) -> tuple[float, float, float]:
        return float(values.min()), float(np.median(values)), float(values.max())

    small = int((areas < SMALL_AREA_PX).sum())
    large = int((areas >= LARGE_AREA_PX).sum())
    return BoxStats(spread(widths), spread(heights), spread(areas), small, len(areas) - small - large, large)


def summarize(dataset: DetectionDataset) -> DatasetSummary:
    """Counts, boxes per class (every box, difficult and crowd included), size statistics."""
    records = dataset.records
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, np.int64)
    boxes = np.concatenate([r.boxes_xyxy_px for r in records]) if records else np.zeros((0, 4), np.float32)
    counts = np.bincount(labels, minlength=dataset.num_classes + 1)  # index 0 = background, unused
    problems = list(dataset.problems)
    if not records and not dataset.has_errors:
        problems.append(Problem(str(dataset.root), "error", "no usable images: nothing to train on"))
    return DatasetSummary(
        format=dataset.format,
        root=str(dataset.root),
        classes=list(dataset.classes),
        num_images=len(records),
        num_boxes=int(labels.shape[0]),
        num_difficult=int(sum(r.difficult.sum() for r in records)),
        num_crowd=int(sum(r.iscrowd.sum() for r in records)),
        images_without_boxes=sum(r.num_boxes == 0 for r in records),
        boxes_per_class={name: int(counts[k + 1]) for k, name in enumerate(dataset.classes)},
        box_stats=box_stats(boxes.astype(np.float64)),
        problems=problems,
    )
