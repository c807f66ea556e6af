"""TIDE's dAPs: literal cases worked out by hand, and the `tidecv` package (a test reference only,
not a dependency) on random cases where it is installed."""

from __future__ import annotations

import numpy as np
import pytest

from ssdcli.evaluation.detections import DetectionTable
from ssdcli.evaluation.pairs import FlatGroundTruth, box_pairs, ranks_in_image
from ssdcli.evaluation.tide import tide_ap, tide_errors


def ground_truth(image: list, labels: list, boxes: list, ignore: list | None = None) -> FlatGroundTruth:
    return FlatGroundTruth(np.array(image, np.int64), np.array(labels, np.int64), np.array(boxes, float).reshape(-1, 4),
                           np.array(ignore if ignore is not None else [False] * len(labels), bool))


def detections(image: list, labels: list, boxes: list, scores: list) -> DetectionTable:
    return DetectionTable(np.array(image, np.int64), np.array(labels, np.int64), np.array(boxes, float).reshape(-1, 4),
                          np.array(scores, float))


def run(gt: FlatGroundTruth, dets: DetectionTable, num_classes: int, max_dets: int = 100):
    return tide_errors(dets, gt, box_pairs(dets, gt), ranks_in_image(dets), num_classes, max_dets)


def test_tide_ap_is_the_101_point_ap():
    # TP, FP, FP of 2 boxes: recall 0.5 with precision 1 -> 51 of the 101 recall steps at 1
    assert tide_ap(np.array([0.9, 0.8, 0.7]), np.array([True, False, False]), np.arange(3), 2) == pytest.approx(51 / 101)
    assert tide_ap(np.zeros(0), np.zeros(0, bool), np.zeros(0), 3) == 0.0
    assert tide_ap(np.array([0.5]), np.array([False]), np.zeros(1), 0) == 0.0  # detections, no boxes


G1, G2 = [0, 0, 40, 40], [60, 0, 100, 40]


def test_localisation_and_background_errors_by_hand():
    gt = ground_truth([0, 0], [1, 1], [G1, G2])
    dets = detections([0, 0, 0], [1, 1, 1], [G1, [60, 0, 72, 40], [150, 150, 190, 190]], [0.9, 0.8, 0.7])
    result = run(gt, dets, 1)
    # d2 has IoU 12 / 40 = 0.3 with G2: Loc; d3 touches nothing: Bkg
    assert result.counts == {"Cls": 0, "Loc": 1, "Both": 0, "Dupe": 0, "Bkg": 1, "Miss": 0}  # G2 is "usable"
    assert result.ap == pytest.approx(51 / 101)
    # fixing Loc: TP, TP, FP -> recall 1 at precision 1: AP 1
    assert result.dap["Loc"] == pytest.approx(1 - 51 / 101)
    # removing d3 or "missing" nothing changes nothing; sorting TPs first changes nothing
    assert result.dap["Bkg"] == result.dap["Miss"] == result.special["FalsePos"] == pytest.approx(0.0)
    assert result.special["FalseNeg"] == pytest.approx(1 - 51 / 101)  # 1 box left to find: AP 1


def test_duplicate_class_and_missed_errors_by_hand():
    gt = ground_truth([0, 0], [1, 1], [G1, G2])
    dets = detections([0, 0, 0], [1, 1, 2], [G1, [1, 0, 40, 40], G1], [0.9, 0.8, 0.7])
    result = run(gt, dets, 2)
    # d2 on the taken G1: Dupe; d3 is class 2 on G1: Cls (but G1 is taken: fixing removes it); G2: Miss
    assert result.counts == {"Cls": 1, "Loc": 0, "Both": 0, "Dupe": 1, "Bkg": 0, "Miss": 1}
    # class 1: TP, FP of 2 boxes -> 51/101; class 2: one FP, no boxes -> 0; mAP = 51/202
    assert result.ap == pytest.approx(51 / 202)
    assert result.dap["Cls"] == pytest.approx(51 / 101 - 51 / 202)  # class 2 disappears
    assert result.dap["Dupe"] == pytest.approx(0.0)  # class 1's AP only counts up to the first TP
    assert result.dap["Miss"] == pytest.approx((1 + 0) / 2 - 51 / 202)  # class 1 then has 1 box: AP 1


def test_both_error_and_an_image_without_boxes():
    gt = ground_truth([0], [1], [G1])
    # class 2 with IoU 0.3 with G1 (Both); a detection in image 1 that has no box (Bkg)
    dets = detections([0, 0, 1], [1, 2, 1], [G1, [0, 0, 12, 40], G1], [0.9, 0.8, 0.7])
    result = run(gt, dets, 2)
    assert result.counts == {"Cls": 0, "Loc": 0, "Both": 1, "Dupe": 0, "Bkg": 1, "Miss": 0}


def test_max_detections_per_image():
    gt = ground_truth([0], [1], [G1])
    dets = detections([0, 0], [1, 1], [[150, 150, 190, 190], G1], [0.9, 0.8])
    assert run(gt, dets, 1, max_dets=1).counts["Miss"] == 1  # the TP is the second detection: dropped
    assert run(gt, dets, 1, max_dets=2).counts["Miss"] == 0


def random_case(seed: int, images: int = 6, classes: int = 3) -> tuple[FlatGroundTruth, DetectionTable]:
    """Boxes, some crowd, and detections near them (jittered, sometimes of another class) or anywhere."""
    rng = np.random.default_rng(seed)
    image, labels, boxes, ignore = [], [], [], []
    for i in range(images):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(5, 40, 2)
            image.append(i); labels.append(rng.integers(1, classes + 1)); boxes.append([x, y, x + w, y + h])
            ignore.append(rng.random() < 0.1)
    gt = ground_truth(image, labels, boxes, ignore)
    d_image, d_labels, d_boxes, scores = [], [], [], []
    for i in range(images):
        mine = np.flatnonzero(gt.image_index == i)
        for _ in range(rng.integers(0, 12)):
            if mine.size and rng.random() < 0.7:
                box = gt.boxes_xyxy_px[rng.choice(mine)] + rng.normal(0, 6, 4)
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                label = gt.labels[rng.choice(mine)] if rng.random() < 0.8 else rng.integers(1, classes + 1)
            else:
                x, y = rng.uniform(0, 80, 2)
                w, h = rng.uniform(5, 40, 2)
                box, label = np.array([x, y, x + w, y + h]), rng.integers(1, classes + 1)
            d_image.append(i); d_labels.append(label); d_boxes.append(box); scores.append(float(rng.random()))
    return gt, detections(d_image, d_labels, d_boxes, scores)


def tidecv_result(gt: FlatGroundTruth, dets: DetectionTable, images: int, max_dets: int):
    from tidecv import TIDE, Data

    truth, predictions = Data("gt", max_dets=max_dets), Data("dets")
    for i in range(images):
        truth.add_image(i, str(i))
    for i, label, box, ignore in zip(gt.image_index, gt.labels, gt.boxes_xyxy_px, gt.ignore):
        xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        if ignore:
            truth.add_ignore_region(int(i), int(label), xywh)
        else:
            truth.add_ground_truth(int(i), int(label), xywh)
    for i, label, box, score in zip(dets.image_index, dets.labels, dets.boxes_xyxy_px, dets.scores):
        predictions.add_detection(int(i), int(label), float(score), [box[0], box[1], box[2] - box[0], box[3] - box[1]])
    tide = TIDE()
    run = tide.evaluate(truth, predictions, mode=TIDE.BOX)
    errors = tide.get_all_errors()
    counts = {error.short_name: n for error, n in run.count_errors().items()}
    return run.ap, errors["main"]["dets"], errors["special"]["dets"], counts


@pytest.mark.parametrize("max_dets", [100, 4])
def test_same_daps_as_tidecv_on_random_cases(max_dets):
    pytest.importorskip("tidecv")
    for seed in range(40):
        gt, dets = random_case(seed)
        if len(dets) == 0:
            continue
        ours = run(gt, dets, 3, max_dets)
        ap, main, special, counts = tidecv_result(gt, dets, 6, max_dets)
        assert ours.ap * 100 == pytest.approx(ap, abs=1e-9), seed
        assert {k: 100 * v for k, v in ours.dap.items()} == pytest.approx(main, abs=1e-9), seed
        assert {k: 100 * v for k, v in ours.special.items()} == pytest.approx(special, abs=1e-9), seed
        assert ours.counts == counts, seed
