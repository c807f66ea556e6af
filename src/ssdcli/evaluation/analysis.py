"""False-positive analysis of the SSD paper's Fig. 3, after Hoiem et al. (ECCV 2012, sec. 3).

Every detection of class ``c`` gets exactly one type. The rules are those of Hoiem's released
MATLAB toolkit (``analyzeFalsePositives.m``, ``matchDetectionsWithGroundTruth.m``,
``displayDetectionTrend2.m``), with the differences listed at the end:

- **Cor**: in score order (ties: the order given), each detection of ``c`` takes the box of
  ``c`` in its image with the highest IoU among the boxes not taken yet with IoU >= 0.5 (first
  box on ties). A detection that takes a box is Cor; one that takes a "difficult" / crowd box is
  Cor too (Hoiem: ``label >= 0``) but is neither a true nor a false positive for recall.
- **Loc** (poor localisation): not Cor, and IoU >= 0.1 with some box of ``c`` -- a box it
  overlaps too little, or one already taken (a duplicate detection).
- **Sim**: none of the above, and IoU >= 0.1 with a box of a class similar to ``c``.
- **Oth**: none of the above, and IoU >= 0.1 with a box of any other class.
- **BG**: the rest.

Similar classes: for the PASCAL VOC class list (every class name is a VOC name), Hoiem's sets:
{bird, cat, cow, dog, horse, person, sheep}, {aeroplane, boat, bus, car, train, bicycle,
motorbike}, {bicycle, motorbike}, {chair, diningtable, sofa}, {aeroplane, bird}; two classes are
similar when one set holds both. The summary groups are the paper's: animals (bird, cat, cow,
dog, horse, sheep), vehicles (aeroplane, bicycle, boat, bus, car, motorbike, train), furniture
(chair, diningtable, sofa), plus all classes. Other data: no class is similar to another unless
``--similar FILE`` names sets (one per line; those sets are also summary groups), and every class
is its own group besides "all classes".

**Trend** (the paper's top row, x axis "total detections (x N)"): for a class with ``N``
non-difficult objects and tic ``t`` in 1/8, 1/4, ..., 8, the types of its first ``ceil(t N)``
detections, as fractions (no value when the class has fewer detections); recall at IoU 0.5
("strong") and 0.1 ("weak": a greedy matching at IoU 0.1 whose duplicates are moved to the end,
Hoiem's ``fixloc``) after ``round(t N)`` detections. A group averages the counts and recalls of
its classes that have objects, and ``N`` is their mean object count (rounded).

**Top-ranked false positives** (the paper's pies): for each class its first ``N`` false
positives (``N`` = its non-difficult objects), counted by type; a group sums its classes.

Differences from the toolkit, on purpose: Sim takes priority over Oth and a duplicate on another
class's object counts for Sim/Oth in every figure (the toolkit's pie picks the class of highest
overlap and its trend ignores such duplicates; the two disagree with each other); the trend's
total counts every detection once (the toolkit's ``displayDetectionTrend.m`` counted BG twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdcli.errors import UserError
from ssdcli.evaluation.detections import DetectionTable
from ssdcli.evaluation.pairs import BoxPairs, FlatGroundTruth, best_box, greedy_match

TYPES = ("Cor", "Loc", "Sim", "Oth", "BG")
COR, LOC, SIM, OTH, BG = range(5)
STRONG_IOU = 0.5
WEAK_IOU = 0.1
TICS = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)  # multiples of the object count (Hoiem's script)

VOC_SIMILAR = (
    ("bird", "cat", "cow", "dog", "horse", "person", "sheep"),
    ("aeroplane", "boat", "bus", "car", "train", "bicycle", "motorbike"),
    ("bicycle", "motorbike"),
    ("chair", "diningtable", "sofa"),
    ("aeroplane", "bird"),
)
VOC_GROUPS = (
    ("animals", ("bird", "cat", "cow", "dog", "horse", "sheep")),
    ("vehicles", ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train")),
    ("furniture", ("chair", "diningtable", "sofa")),
)


@dataclass(frozen=True)
class ClassGroups:
    """Which classes are similar and which groups get summary figures.

    Attributes:
        similar: sets of class names; two classes are similar when a set holds both.
        groups: ``(name, labels)`` summary groups, 1-based labels.
    """

    similar: tuple[tuple[str, ...], ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]

    def similar_matrix(self, classes: list[str]) -> np.ndarray:
        """bool[C + 1, C + 1] indexed by label: ``m[a, b]`` when classes a != b are similar."""
        index = {name: k + 1 for k, name in enumerate(classes)}
        matrix = np.zeros((len(classes) + 1, len(classes) + 1), bool)
        for names in self.similar:
            labels = [index[n] for n in names if n in index]
            matrix[np.ix_(labels, labels)] = True
        np.fill_diagonal(matrix, False)
        return matrix


def read_similar_file(path: Path, classes: list[str]) -> list[tuple[str | None, tuple[str, ...]]]:
    """Sets of similar classes from a text file: one set per line, names separated by commas
    (or by white space when the line has no comma), an optional ``name:`` in front; blank lines
    and lines starting with ``#`` are skipped.

    Raises:
        UserError: the file cannot be read, or names a class the dataset does not have.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--similar {path}: cannot read it ({exc}); give a text file, one group of class names per line") from None
    sets = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, members = line.rpartition(":") if ":" in line else ("", "", line)
        names = [n.strip() for n in (members.split(",") if "," in members else members.split()) if n.strip()]
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserError(
                f"--similar {path}, line {number}: {unknown[0]!r} is not a class of the dataset "
                f"(classes: {', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})"
            )
        if names:
            sets.append((name.strip() or None, tuple(names)))
    return sets


def class_groups(classes: list[str], similar_file: Path | None = None) -> ClassGroups:
    """The similar sets and summary groups for a class list (see the module docstring)."""
    index = {name: k + 1 for k, name in enumerate(classes)}
    from ssdcli.data.voc import VOC_CLASSES

    similar: list[tuple[str, ...]] = []
    groups: list[tuple[str, tuple[int, ...]]] = []
    if classes and set(classes) <= set(VOC_CLASSES):
        similar.extend(VOC_SIMILAR)
        for name, members in VOC_GROUPS:
            labels = tuple(index[m] for m in members if m in index)
            if labels:
                groups.append((name, labels))
    if similar_file is not None:
        for number, (name, members) in enumerate(read_similar_file(similar_file, classes), start=1):
            similar.append(members)
            groups.append((name or f"similar set {number}", tuple(index[m] for m in members)))
    groups.append(("all classes", tuple(range(1, len(classes) + 1))))
    return ClassGroups(similar=tuple(similar), groups=tuple(groups))


@dataclass(frozen=True)
class DetectionTypes:
    """Each detection's type and matches.

    Attributes:
        kind: int64[D], index into :data:`TYPES`.
        strong: int8[D], IoU 0.5 matching: 1 took a box, 0 took a difficult / crowd box, -1 none.
        strong_gt: int64[D], the box taken at IoU 0.5, or -1.
        weak: int8[D], the same at IoU 0.1.
        weak_duplicate: bool[D], no box left at IoU 0.1 but one taken with IoU >= 0.1.
    """

    kind: np.ndarray
    strong: np.ndarray
    strong_gt: np.ndarray
    weak: np.ndarray
    weak_duplicate: np.ndarray


def _labelled(matched: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    safe = np.maximum(matched, 0)
    return np.where(matched < 0, -1, np.where(ignore[safe] if ignore.size else False, 0, 1)).astype(np.int8)


def classify_detections(
    detections: DetectionTable, ground_truth: FlatGroundTruth, pairs: BoxPairs, rank: np.ndarray, similar: np.ndarray
) -> DetectionTypes:
    """Every detection's Cor / Loc / Sim / Oth / BG type (module docstring), vectorised.

    Args:
        similar: bool[C + 1, C + 1] from :meth:`ClassGroups.similar_matrix`.
    """
    num = len(detections)
    det_label = detections.labels[pairs.det]
    gt_label = ground_truth.labels[pairs.gt]
    same = det_label == gt_label  # (P,)
    alike = similar[det_label, gt_label]  # (P,)
    strong_gt = greedy_match(pairs, same, STRONG_IOU, rank, len(ground_truth))
    weak_gt = greedy_match(pairs, same, WEAK_IOU, rank, len(ground_truth))
    same_iou, _ = best_box(pairs, same, num)
    similar_iou, _ = best_box(pairs, alike, num)
    other_iou, _ = best_box(pairs, ~same & ~alike, num)
    strong = _labelled(strong_gt, ground_truth.ignore)
    kind = np.full(num, BG, np.int64)
    kind[other_iou >= WEAK_IOU] = OTH
    kind[similar_iou >= WEAK_IOU] = SIM
    kind[same_iou >= WEAK_IOU] = LOC
    kind[strong >= 0] = COR
    return DetectionTypes(
        kind=kind,
        strong=strong,
        strong_gt=strong_gt,
        weak=_labelled(weak_gt, ground_truth.ignore),
        weak_duplicate=(weak_gt < 0) & (same_iou >= WEAK_IOU),
    )


def class_order(detections: DetectionTable, label: int) -> np.ndarray:
    """int64[n]: the rows of class ``label``, by score descending, ties in the order given."""
    rows = np.flatnonzero(detections.labels == label)
    return rows[np.argsort(-detections.scores[rows], kind="stable")]


def round_half_away(x: float) -> int:
    """MATLAB's ``round``: halves away from zero (Python's ``round`` goes to even)."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


@dataclass(frozen=True)
class Breakdown:
    """The false-positive analysis of one class or group.

    Attributes:
        name: class or group name.
        num_objects: non-difficult objects (a group: the rounded mean over its classes).
        num_detections: detections (a group: the sum).
        type_counts: int64[5], all detections by type.
        top_fp_counts: int64[4], Loc / Sim / Oth / BG among the top-ranked false positives.
        trend_counts: float64[T, 5], detections of each type at each tic (a group: the mean).
        recall_strong, recall_weak: float64[T], recall at IoU 0.5 / 0.1 at each tic.
    """

    name: str
    num_objects: int
    num_detections: int
    type_counts: np.ndarray
    top_fp_counts: np.ndarray
    trend_counts: np.ndarray
    recall_strong: np.ndarray
    recall_weak: np.ndarray

    @property
    def trend_fractions(self) -> np.ndarray:
        """float64[T, 5]: each type's share of the detections at each tic; NaN where none."""
        total = self.trend_counts.sum(axis=1, keepdims=True)  # (T, 1)
        return np.divide(self.trend_counts, total, out=np.full_like(self.trend_counts, np.nan), where=total > 0)

    def to_json(self) -> dict:
        def clean(values: np.ndarray) -> list:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in values]

        fractions = self.trend_fractions
        return {
            "name": self.name,
            "num_objects": self.num_objects,
            "num_detections": self.num_detections,
            "types": dict(zip(TYPES, self.type_counts.tolist())),
            "top_false_positives": dict(zip(TYPES[1:], self.top_fp_counts.tolist())),
            "trend": {
                "detections_per_object": list(TICS),
                **{name: clean(fractions[:, k]) for k, name in enumerate(TYPES)},
                "recall_iou_0.5": clean(self.recall_strong),
                "recall_iou_0.1": clean(self.recall_weak),
            },
        }


def class_breakdown(name: str, rows: np.ndarray, types: DetectionTypes, num_objects: int) -> Breakdown:
    """The breakdown of one class from its detections ``rows`` in score order."""
    kind = types.kind[rows]
    cumulative = np.cumsum(np.eye(len(TYPES), dtype=np.int64)[kind], axis=0)  # (n, 5)
    n = rows.size
    counts = np.zeros((len(TICS), len(TYPES)))
    strong, weak = np.zeros(len(TICS)), np.zeros(len(TICS))
    if num_objects > 0 and n > 0:
        recall = np.cumsum(types.strong[rows] == 1) / num_objects  # (n,)
        dup = types.weak_duplicate[rows]
        weak_rows = np.concatenate([rows[~dup], rows[dup]])  # duplicates last (Hoiem's fixloc)
        weak_recall = np.cumsum(types.weak[weak_rows] == 1) / num_objects  # (n,)
        for t, tic in enumerate(TICS):
            first = max(1, math.ceil(tic * num_objects))  # detections needed to reach tic * N
            if first <= n:
                counts[t] = cumulative[first - 1]
            at = min(max(1, round_half_away(tic * num_objects)), n) - 1
            strong[t], weak[t] = recall[at], weak_recall[at]
    false_positives = kind[types.strong[rows] == -1][:num_objects]
    return Breakdown(
        name=name,
        num_objects=num_objects,
        num_detections=int(n),
        type_counts=np.bincount(kind, minlength=len(TYPES)),
        top_fp_counts=np.bincount(false_positives, minlength=len(TYPES))[1:],
        trend_counts=counts,
        recall_strong=strong,
        recall_weak=weak,
    )


def group_breakdown(name: str, members: list[Breakdown]) -> Breakdown:
    """Average the trend counts and recalls of the members that have objects (Hoiem's
    ``displayDetectionTrend2``); sum their counts."""
    counted = [m for m in members if m.num_objects > 0]
    zeros = np.zeros(len(TICS))
    return Breakdown(
        name=name,
        num_objects=round_half_away(float(np.mean([m.num_objects for m in counted]))) if counted else 0,
        num_detections=sum(m.num_detections for m in members),
        type_counts=np.sum([m.type_counts for m in members], axis=0) if members else np.zeros(5, np.int64),
        top_fp_counts=np.sum([m.top_fp_counts for m in members], axis=0) if members else np.zeros(4, np.int64),
        trend_counts=np.mean([m.trend_counts for m in counted], axis=0) if counted else np.zeros((len(TICS), 5)),
        recall_strong=np.mean([m.recall_strong for m in counted], axis=0) if counted else zeros,
        recall_weak=np.mean([m.recall_weak for m in counted], axis=0) if counted else zeros,
    )


def num_objects_per_class(ground_truth: FlatGroundTruth, num_classes: int) -> np.ndarray:
    """int64[C]: non-difficult, non-crowd objects of each class (index ``k - 1`` for label ``k``)."""
    return np.bincount(ground_truth.labels[~ground_truth.ignore], minlength=num_classes + 1)[1:]


def false_positive_analysis(
    detections: DetectionTable, ground_truth: FlatGroundTruth, types: DetectionTypes, classes: list[str], groups: ClassGroups
) -> tuple[list[Breakdown], list[Breakdown]]:
    """Per-class breakdowns (class-index order) and the summary groups' breakdowns."""
    objects = num_objects_per_class(ground_truth, len(classes))
    per_class = [
        class_breakdown(name, class_order(detections, k + 1), types, int(objects[k])) for k, name in enumerate(classes)
    ]
    summary = [group_breakdown(name, [per_class[label - 1] for label in labels]) for name, labels in groups.groups]
    return per_class, summary
