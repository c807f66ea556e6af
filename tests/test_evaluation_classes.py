"""evaluation.classes: a dataset in another class list, a detector relabelled by name, and the
wording of counts (a literal case each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.errors import DataError
from ssdcli.evaluation.classes import RelabelledDetector, check_shared_classes, restrict_to_classes
from ssdcli.postprocess import Detections
from ssdcli.wording import plural


def record(labels: list[int]) -> ImageRecord:
    n = len(labels)
    boxes = np.array([[i, i, i + 10, i + 10] for i in range(n)], np.float32).reshape(n, 4)
    return ImageRecord(Path(f"{n}.jpg"), f"img{n}", 100, 100, boxes, np.array(labels, np.int64),
                       np.array([i == 0 for i in range(n)], bool), np.zeros(n, bool))


def test_restrict_renumbers_labels_by_name_and_drops_other_classes():
    dataset = DetectionDataset("coco", Path("d"), ["cat", "dog", "cow"], [record([1, 2, 3, 2])], category_ids=[17, 18, 21])
    restricted = restrict_to_classes(dataset, ["dog", "cat", "pig"])
    (only,) = restricted.records
    # cat (1) -> 2, dog (2) -> 1, cow (3) left out; pig gets the next id after the json's largest (21)
    assert only.labels.tolist() == [2, 1, 1]
    assert only.boxes_xyxy_px[:, 0].tolist() == [0, 1, 3]  # boxes 0, 1, 3 kept, in order
    assert only.difficult.tolist() == [True, False, False]
    assert restricted.classes == ["dog", "cat", "pig"] and restricted.category_ids == [18, 17, 22]
    assert restrict_to_classes(dataset, ["cat", "dog", "cow"]) is dataset


def test_shared_classes_warn_on_a_partial_overlap_and_refuse_none():
    dataset = DetectionDataset("voc", Path("d"), ["cat", "dog", "cow"], [record([1, 1, 3])])
    assert check_shared_classes(["cat", "pig"], dataset, "d") == [
        "d: no objects of the model's 1 class pig (no AP for them)",
        "d: 1 object of 1 class the model does not know (cow) left out of the scores",
    ]
    assert check_shared_classes(["cat", "cow"], dataset, "d") == []
    with pytest.raises(DataError, match=r"^d: the model's classes \(dog, pig\) and this dataset's \(cat, cow\) have none in common"):
        check_shared_classes(["dog", "pig"], dataset, "d")  # dog has no object: not shared


class Fixed:
    """A detector that always finds one box of each of its three classes."""

    class_names = ["cat", "dog", "cow"]
    image_size, mean, std = 64, [0.5] * 3, [0.2] * 3

    def predict(self, images, sizes, timings=None):
        boxes = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]])
        return [Detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 3])) for _ in sizes]


def test_a_relabelled_detector_follows_the_other_list_and_drops_the_rest():
    detector = RelabelledDetector(Fixed(), ["cow", "cat"])
    (found,) = detector.predict(torch.zeros(1, 3, 64, 64), [(10, 10)])
    assert found.labels.tolist() == [2, 1] and found.scores.tolist() == pytest.approx([0.9, 0.7])
    assert found.boxes_xyxy.tolist() == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert (detector.image_size, detector.class_names) == (64, ["cow", "cat"])


def test_plural():
    assert [plural(1, "class"), plural(2, "class"), plural(0, "image"), plural(1, "box"), plural(3, "box")] == [
        "1 class", "2 classes", "0 images", "1 box", "3 boxes"]
    assert plural(2, "entry", "entries") == "2 entries" and plural(1, "entry", "entries") == "1 entry"
