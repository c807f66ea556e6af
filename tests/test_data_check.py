"""Box sanitising rules and the `ssd data check` summary numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssdcli.data.check import box_stats, sanitize_boxes_xyxy_px, summarize
from ssdcli.data.records import DetectionDataset, ImageRecord, Problem


def record(boxes: list[list[float]], labels: list[int], width: int = 100, height: int = 80) -> ImageRecord:
    n = len(labels)
    return ImageRecord(Path("x.jpg"), "x", width, height, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(labels, np.int64), np.zeros(n, bool), np.zeros(n, bool))


def test_sanitize_keeps_clips_and_drops() -> None:
    boxes = np.array([
        [10, 10, 20, 20],        # inside: kept as is
        [-0.5, 0, 100.8, 80],    # within the 1 px tolerance: clipped silently
        [-30, 10, 50, 90],       # out left and bottom: clipped to (0, 10, 50, 80) with a warning
        [120, 10, 130, 20],      # entirely right of a 100 px wide image: dropped
        [30, 30, 30, 40],        # zero width: dropped
        [40, 40, 35, 50],        # inverted: dropped
        [np.nan, 0, 10, 10],     # not finite: dropped
    ], dtype=np.float64)
    names = [f"box {i}" for i in range(len(boxes))]
    keep, clipped, problems = sanitize_boxes_xyxy_px(boxes, 100, 80, "a.xml", names)
    assert keep.tolist() == [True, True, True, False, False, False, False]
    np.testing.assert_array_equal(clipped[keep], [[10, 10, 20, 20], [0, 0, 100, 80], [0, 10, 50, 80]])
    messages = [p.message for p in problems]
    assert [m.split(":")[0] for m in messages] == ["box 2", "box 3", "box 4", "box 5", "box 6"]
    assert "clipped to [0, 10, 50, 80]" in messages[0]
    assert "outside the 100x80 image" in messages[1]
    assert "zero-area or inverted" in messages[2] and "zero-area or inverted" in messages[3]
    assert "not a finite number" in messages[4]
    assert all(p.file == "a.xml" and p.severity == "warning" for p in problems)


def test_sanitize_empty() -> None:
    keep, clipped, problems = sanitize_boxes_xyxy_px(np.zeros((0, 4)), 10, 10, "f", [])
    assert keep.shape == (0,) and clipped.shape == (0, 4) and problems == []


def test_box_stats_and_coco_size_bins() -> None:
    boxes = np.array([[0, 0, 10, 20], [0, 0, 32, 32], [0, 0, 96, 96], [0, 0, 50, 40]], np.float64)
    stats = box_stats(boxes)
    assert stats.width == (10, 41, 96)   # median of 10, 32, 50, 96 = (32 + 50) / 2
    assert stats.height == (20, 36, 96)  # median of 20, 32, 40, 96
    assert stats.area == (200, 1512, 9216)  # areas 200, 1024, 2000, 9216: median (1024 + 2000) / 2
    # 32^2 = 1024 is medium (small is < 32^2), 96^2 = 9216 is large
    assert (stats.small, stats.medium, stats.large) == (1, 2, 1)
    assert box_stats(np.zeros((0, 4))) is None


def test_summarize_counts_and_json_keys() -> None:
    dataset = DetectionDataset(
        "voc", Path("d"), ["cat", "dog", "owl"],
        [record([[0, 0, 10, 10], [5, 5, 20, 30]], [2, 2]), record([], []), record([[1, 1, 2, 2]], [1])],
        [Problem("a.xml", "warning", "fixed")],
    )
    summary = summarize(dataset)
    assert (summary.num_images, summary.num_boxes, summary.images_without_boxes) == (3, 3, 1)
    assert summary.boxes_per_class == {"cat": 1, "dog": 2, "owl": 0}
    assert summary.trainable
    payload = summary.to_json()
    assert list(payload) == ["format", "classes", "num_images", "num_boxes", "boxes_per_class", "box_sizes", "problems"]
    assert payload["problems"] == [{"file": "a.xml", "severity": "warning", "message": "fixed"}]
    # boxes 10x10, 15x25, 1x1: the numbers of the size table
    assert payload["box_sizes"] == {
        "width": {"min": 1.0, "median": 10.0, "max": 15.0},
        "height": {"min": 1.0, "median": 10.0, "max": 25.0},
        "area": {"min": 1.0, "median": 100.0, "max": 375.0},
        "small": 3, "medium": 0, "large": 0,  # areas 100, 375, 1 are all below 32^2 = 1024
    }


def test_summarize_not_trainable() -> None:
    with_error = DetectionDataset("voc", Path("d"), ["cat"], [record([], [])], [Problem("b.xml", "error", "bad")])
    assert not summarize(with_error).trainable
    empty = summarize(DetectionDataset("coco", Path("d.json"), ["cat"], []))
    assert not empty.trainable and empty.num_errors == 1 and "no usable images" in empty.problems[0].message
    assert empty.box_stats is None


def test_usable_box_rule() -> None:
    from ssdcli.data.check import usable_box_problems

    def dataset(difficult: list[bool], crowd: list[bool]) -> DetectionDataset:
        n = len(difficult)
        rec = ImageRecord(Path("x.jpg"), "x", 100, 80, np.tile(np.array([[1, 1, 9, 9]], np.float32), (n, 1)),
                          np.ones(n, np.int64), np.array(difficult, bool), np.array(crowd, bool))
        return DetectionDataset("voc", Path("d"), ["a"], [rec])

    assert usable_box_problems(dataset([False, True], [False, False])) == []
    assert usable_box_problems(DetectionDataset("voc", Path("d"), ["a"], [])) == []  # summarize says "no images"
    (none,) = usable_box_problems(dataset([], []))  # images, not one box
    assert none.severity == "error" and "no usable box" in none.message
    (crowd,) = usable_box_problems(dataset([False, False], [True, True]))
    assert crowd.severity == "error" and "its 2 boxes are all iscrowd" in crowd.message
    (hard,) = usable_box_problems(dataset([True, True], [False, True]))
    assert hard.severity == "warning" and "all 1 boxes are 'difficult'" in hard.message
