"""The confusion matrix of a detector at one operating point: classes plus background.

Only detections with score >= the threshold (``--conf-threshold``, 0.3 by default) take part.
In each image:

1. **Same class first.** In score order, each detection takes the box of its own class with the
   highest IoU among those not taken yet with IoU >= 0.5 (first box on ties): the rule of the
   AP matching, so the diagonal holds the true positives at this threshold.
2. **Then any class.** Detections left over take, by the same rule, a box of any class left over:
   a detection of class ``p`` on an object of class ``t`` is one confusion of ``t`` as ``p``.
3. Detections still left over are background mistaken for their class (a duplicate on an
   object already found is one); boxes left over are objects missed (predicted "background").

A detection that takes a "difficult" or crowd box, and such boxes themselves, are left out.

Rows are the true class, columns the predicted class, in class-index order with background
last: ``counts[t, p]``; ``counts[-1, p]`` are false detections of ``p``, ``counts[t, -1]`` missed
objects of ``t``, and ``counts[-1, -1]`` is 0. Row-normalised, row ``t`` says what the objects of
``t`` were detected as (the background row: which classes the false detections claimed).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ssdcli.evaluation.detections import DetectionTable
from ssdcli.evaluation.pairs import BoxPairs, FlatGroundTruth, greedy_match
from ssdcli.files import atomic_write_text

IOU_THRESHOLD = 0.5
DEFAULT_CONF_THRESHOLD = 0.3


def confusion_matrix(
    detections: DetectionTable,
    ground_truth: FlatGroundTruth,
    pairs: BoxPairs,
    rank: np.ndarray,
    num_classes: int,
    conf_threshold: float = DEFAULT_CONF_THRESHOLD,
) -> np.ndarray:
    """int64[C + 1, C + 1], rows true class, columns predicted, background last (module docstring)."""
    background = num_classes  # row / column of background; class k is row k - 1
    confident = detections.scores >= conf_threshold  # (D,)
    usable = confident[pairs.det]  # (P,)
    same = detections.labels[pairs.det] == ground_truth.labels[pairs.gt]
    first = greedy_match(pairs, usable & same, IOU_THRESHOLD, rank, len(ground_truth))
    taken = np.zeros(len(ground_truth), bool)
    taken[first[first >= 0]] = True
    left = usable & (first[pairs.det] < 0)
    second = greedy_match(pairs, left, IOU_THRESHOLD, rank, len(ground_truth), taken=taken)
    matched = np.where(first >= 0, first, second)  # (D,)
    taken[second[second >= 0]] = True

    counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    hit = confident & (matched >= 0)
    hit &= ~ground_truth.ignore[np.maximum(matched, 0)] if len(ground_truth) else False
    np.add.at(counts, (ground_truth.labels[matched[hit]] - 1, detections.labels[hit] - 1), 1)
    false = confident & (matched < 0)
    np.add.at(counts, (np.full(int(false.sum()), background), detections.labels[false] - 1), 1)
    missed = ~taken & ~ground_truth.ignore
    np.add.at(counts, (ground_truth.labels[missed] - 1, np.full(int(missed.sum()), background)), 1)
    return counts


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """float64[C + 1, C + 1]: each row divided by its sum (a row of zeros stays zero)."""
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: list[str], fmt: str = "{}") -> None:
    """One header row ``true \\ predicted, <classes...>, background`` and one row per true class."""
    names = [*classes, "background"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, matrix.tolist()):
        writer.writerow([name, *(fmt.format(v) for v in row)])
    atomic_write_text(path, buffer.getvalue())
