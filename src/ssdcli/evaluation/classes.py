"""A model's classes against a dataset's, for ``ssd eval --weights``: which are shared, the
ground truth in the class list being scored, and a detector whose labels follow that list.

Without ``--classes`` the model's classes are scored (the dataset's objects of other classes are
left out, with a warning); with ``--classes FILE`` the listed classes are, each of which the
model must know. A model that shares no class with the data is an error naming both lists: it
used to score zero detections as an empty result, exit 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ssdcli.data.records import DetectionDataset
from ssdcli.errors import DataError, UserError
from ssdcli.postprocess import Detections
from ssdcli.wording import plural

MAX_NAMES_SHOWN = 12
"""Class names listed in a message before "... (N more)" (COCO has 80)."""


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f", ... ({len(names) - MAX_NAMES_SHOWN} more)" if len(names) > MAX_NAMES_SHOWN else "")


def objects_per_class(dataset: DetectionDataset) -> np.ndarray:
    """int64[C]: objects of each class of ``dataset`` (``[k - 1]`` for label ``k``), difficult included."""
    labels = [record.labels for record in dataset.records]
    every = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return np.bincount(every, minlength=dataset.num_classes + 1)[1:]


def check_shared_classes(model_classes: Sequence[str], dataset: DetectionDataset, data_name: str) -> list[str]:
    """Check that ``dataset`` (read with its own class list) has objects of the model's classes.

    Returns:
        Warnings for a partial overlap: the model's classes without objects, and the objects of
        classes the model does not know (left out of the scores).

    Raises:
        DataError: the dataset has no object of any of the model's classes (naming both lists).
    """
    counts = objects_per_class(dataset)
    present = [name for name, count in zip(dataset.classes, counts.tolist()) if count > 0]
    model = list(model_classes)
    shared = [name for name in model if name in present]
    if not present:
        raise DataError(f"{data_name}: holds no objects to score a model against; run `ssd data check {data_name}`")
    if not shared:
        raise DataError(
            f"{data_name}: the model's classes ({_names(model)}) and this dataset's ({_names(present)}) have none in "
            "common, so nothing can be scored; evaluate on data annotated with the model's class names"
        )
    warnings = []
    absent = [name for name in model if name not in present]
    if absent:
        warnings.append(f"{data_name}: no objects of the model's {plural(len(absent), 'class')} {_names(absent)} "
                        "(no AP for them)")
    unknown = [name for name in present if name not in model]
    if unknown:
        left_out = int(sum(count for name, count in zip(dataset.classes, counts.tolist()) if name in unknown))
        warnings.append(f"{data_name}: {plural(left_out, 'object')} of {plural(len(unknown), 'class')} "
                        f"the model does not know ({_names(unknown)}) left out of the scores")
    return warnings


def restrict_to_classes(dataset: DetectionDataset, classes: Sequence[str]) -> DetectionDataset:
    """``dataset`` with ``classes`` as its class list: labels renumbered by name, objects of other
    classes left out. COCO category ids follow the names (a class the json lacks gets a new id
    above the json's, as the COCO reader gives it)."""
    classes = list(classes)
    if classes == dataset.classes:
        return dataset
    index = {name: k for k, name in enumerate(classes, start=1)}
    lookup = np.array([0] + [index.get(name, 0) for name in dataset.classes], dtype=np.int64)  # old -> new label
    records = []
    for record in dataset.records:
        labels = lookup[record.labels]
        keep = labels > 0
        records.append(replace(record, boxes_xyxy_px=record.boxes_xyxy_px[keep], labels=labels[keep],
                               difficult=record.difficult[keep], iscrowd=record.iscrowd[keep]))
    category_ids = None
    if dataset.category_ids is not None:
        id_of = dict(zip(dataset.classes, dataset.category_ids))
        next_id = max(id_of.values(), default=0) + 1
        category_ids = []
        for name in classes:
            if name not in id_of:
                id_of[name], next_id = next_id, next_id + 1
            category_ids.append(id_of[name])
    return DetectionDataset(dataset.format, dataset.root, classes, records, list(dataset.problems), category_ids,
                            dataset.annotation_file)


class RelabelledDetector:
    """A :class:`~ssdcli.inference.Detector` whose labels index ``class_names`` instead of the
    wrapped detector's classes (matched by name); detections of other classes are dropped."""

    def __init__(self, detector, class_names: Sequence[str]) -> None:
        self.detector = detector
        self.class_names = list(class_names)
        index = {name: k for k, name in enumerate(self.class_names, start=1)}
        self.lookup: Tensor = torch.tensor([0] + [index.get(n, 0) for n in detector.class_names], dtype=torch.int64)

    def __getattr__(self, name: str):  # image_size, mean, std, ... of the wrapped detector
        return getattr(self.detector, name)

    def predict(self, images: Tensor, sizes, timings=None) -> list[Detections]:
        results = []
        for found in self.detector.predict(images, sizes, timings):
            labels = self.lookup[found.labels]  # (K,)
            keep = labels > 0
            results.append(Detections(found.boxes_xyxy[keep], found.scores[keep], labels[keep]))
        return results


def check_listed_classes(listed: Sequence[str], model_classes: Sequence[str]) -> None:
    """Raise :class:`UserError` unless every ``--classes`` name is one of the model's classes."""
    unknown = [name for name in listed if name not in model_classes]
    if unknown:
        raise UserError(f"--classes: {_names(unknown)} not among the model's classes: {_names(list(model_classes))}")


def align_classes(detector, dataset: DetectionDataset, data_name: str, listed: bool):
    """The detector and ground truth of ``ssd eval --weights``, in the class list to score.

    Args:
        detector: the model's :class:`~ssdcli.inference.Detector`.
        dataset: the ground truth read with its own class list, or with ``--classes`` (``listed``).
        data_name: ``--data`` as the user gave it, for messages.
        listed: ``--classes`` was given: score the dataset's (the file's) classes, which the model
            must all know; else score the model's classes.

    Returns:
        ``(detector, dataset, warnings)``: both with the scored class list.

    Raises:
        UserError: a listed class the model does not know.
        DataError: the data has no object of any class to score (:func:`check_shared_classes`).
    """
    ignored = set(getattr(detector, "ignored_labels", ()))  # outputs that are no class (imported COCO models)
    model = [name for label, name in enumerate(detector.class_names, start=1) if label not in ignored]
    if listed:
        check_listed_classes(dataset.classes, model)
    warnings = check_shared_classes(dataset.classes if listed else model, dataset, data_name)
    scored = dataset.classes if listed else model
    if scored != list(detector.class_names):
        detector = RelabelledDetector(detector, scored)
    return detector, restrict_to_classes(dataset, scored), warnings
