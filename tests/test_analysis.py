"""Error analysis on literal cases: Hoiem's false-positive types, size / aspect bins with
normalised AP, the confusion matrix, and perfect detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.data.voc import VOC_CLASSES
from ssdcli.errors import UserError
from ssdcli.evaluation.analysis import class_groups, read_similar_file, round_half_away
from ssdcli.evaluation.analysis_report import AnalysisSettings, analyse
from ssdcli.evaluation.confusion import row_normalised
from ssdcli.evaluation.pairs import box_pairs, flatten_ground_truth, greedy_match, ranks_in_image
from ssdcli.evaluation.sensitivity import normalised_ap, percentile_bins

VOC = list(VOC_CLASSES)


def record(stem: str, boxes: list, labels: list, difficult: list | None = None, size: int = 200) -> ImageRecord:
    n = len(labels)
    return ImageRecord(
        image_path=Path(f"/nonexistent/{stem}.jpg"), image_id=stem, width=size, height=size,
        boxes_xyxy_px=np.array(boxes, np.float32).reshape(-1, 4), labels=np.array(labels, np.int64),
        difficult=np.array(difficult if difficult is not None else [False] * n, bool), iscrowd=np.zeros(n, bool),
    )


def dataset(classes: list[str], records: list[ImageRecord]) -> DetectionDataset:
    return DetectionDataset(format="voc", root=Path("/nonexistent"), classes=classes, records=records)


def det(image: str, label: int, box_xyxy: list, score: float) -> dict:
    x1, y1, x2, y2 = box_xyxy
    return {"image_id": image, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


CAT, DOG, CAR = VOC.index("cat") + 1, VOC.index("dog") + 1, VOC.index("car") + 1
CAT_BOX, DOG_BOX, CAR_BOX = [10, 10, 60, 60], [100, 100, 150, 150], [100, 10, 190, 60]


def hoiem_case() -> tuple[DetectionDataset, list[dict]]:
    """One image with a cat, a dog and a car; six cat detections, one of each type."""
    data = dataset(VOC, [record("a", [CAT_BOX, DOG_BOX, CAR_BOX], [CAT, DOG, CAR])])
    detections = [
        det("a", CAT, CAT_BOX, 0.9),  # Cor
        det("a", CAT, [12, 12, 60, 60], 0.8),  # Loc: a duplicate (IoU 0.92 with a taken cat)
        det("a", CAT, [10, 10, 40, 40], 0.7),  # Loc: IoU 900 / 2500 = 0.36 with the cat
        det("a", CAT, DOG_BOX, 0.6),  # Sim: on the dog (dog and cat are similar)
        det("a", CAT, CAR_BOX, 0.5),  # Oth: on the car
        det("a", CAT, [160, 160, 199, 199], 0.4),  # BG: touches nothing
    ]
    return data, detections


def test_every_false_positive_type_on_a_literal_case():
    result = analyse(*hoiem_case(), AnalysisSettings(worst=0))
    cat = result.per_class[CAT - 1]
    assert cat.type_counts.tolist() == [1, 2, 1, 1, 1]  # Cor, Loc, Sim, Oth, BG
    assert result.types.kind.tolist() == [0, 1, 1, 2, 3, 4]
    # N = 1 object: the top-ranked false positive is the first one, the duplicate
    assert cat.top_fp_counts.tolist() == [1, 0, 0, 0] and cat.num_objects == 1
    # tics 1/8..1 -> ceil(t * 1) = 1 detection (Cor); 2 -> Cor, Loc; 4 -> Cor, Loc, Loc, Sim; 8 -> not reached
    fractions = cat.trend_fractions
    assert fractions[:4, 0].tolist() == [1.0] * 4
    assert fractions[4].tolist() == [0.5, 0.5, 0, 0, 0]
    assert fractions[5].tolist() == [0.25, 0.5, 0.25, 0, 0]
    assert np.isnan(fractions[6]).all()
    assert cat.recall_strong.tolist() == [1.0] * 7 and cat.recall_weak.tolist() == [1.0] * 7
    # the paper's groups: cat is an animal; dog and car have objects but no detections
    animals = next(g for g in result.summary if g.name == "animals")
    assert animals.type_counts.tolist() == [1, 2, 1, 1, 1]
    assert [g.name for g in result.summary] == ["animals", "vehicles", "furniture", "all classes"]


def test_other_data_has_no_similar_classes_unless_a_file_names_them(tmp_path):
    names = ["kitty", "puppy", "truck"]
    data = dataset(names, [record("a", [CAT_BOX, DOG_BOX, CAR_BOX], [1, 2, 3])])
    detections = [det("a", 1, DOG_BOX, 0.6), det("a", 1, CAR_BOX, 0.5)]
    plain = analyse(data, detections, AnalysisSettings(worst=0))
    assert plain.per_class[0].type_counts.tolist() == [0, 0, 0, 2, 0]  # both Oth
    assert [g.name for g in plain.summary] == ["all classes"]
    similar = tmp_path / "similar.txt"
    similar.write_text("# pets\npets: kitty, puppy\n\n")
    grouped = analyse(data, detections, AnalysisSettings(similar_file=similar, worst=0))
    assert grouped.per_class[0].type_counts.tolist() == [0, 0, 1, 1, 0]  # on the puppy: Sim
    assert [g.name for g in grouped.summary] == ["pets", "all classes"]


def test_similar_file_errors_name_the_line(tmp_path):
    path = tmp_path / "similar.txt"
    path.write_text("cat dog\nbird, zebra\n")
    with pytest.raises(UserError, match=r"line 2: 'zebra' is not a class"):
        read_similar_file(path, VOC)
    with pytest.raises(UserError, match="cannot read"):
        read_similar_file(tmp_path / "missing.txt", VOC)
    assert read_similar_file(tmp_path / "similar.txt", VOC + ["zebra"]) == [(None, ("cat", "dog")), (None, ("bird", "zebra"))]


def test_voc_similar_sets_are_hoiems():
    groups = class_groups(VOC)
    matrix = groups.similar_matrix(VOC)
    index = {name: k + 1 for k, name in enumerate(VOC)}
    assert matrix[index["cat"], index["dog"]] and matrix[index["person"], index["horse"]]
    assert matrix[index["bird"], index["aeroplane"]] and matrix[index["bicycle"], index["motorbike"]]
    assert not matrix[index["cat"], index["cat"]] and not matrix[index["chair"], index["dog"]]
    assert not matrix[index["bottle"]].any()  # bottle, pottedplant, tvmonitor: in no set
    assert dict(groups.groups)["furniture"] == (index["chair"], index["diningtable"], index["sofa"])


def test_difficult_boxes_are_cor_but_neither_tp_nor_fp():
    data = dataset(VOC, [record("a", [CAT_BOX], [CAT], [True])])
    result = analyse(data, [det("a", CAT, CAT_BOX, 0.9)], AnalysisSettings(worst=0))
    assert result.types.strong.tolist() == [0] and result.types.kind.tolist() == [0]
    assert result.per_class[CAT - 1].num_objects == 0 and result.confusion.sum() == 0


def test_greedy_matching_takes_the_best_free_box_in_score_order():
    # two boxes; the best detection takes the box it overlaps most, the second the other one
    data = dataset(["a"], [record("x", [[0, 0, 10, 10], [5, 0, 15, 10]], [1, 1])])
    from ssdcli.evaluation.detections import parse_detections

    table = parse_detections([det("x", 1, [4, 0, 14, 10], 0.5), det("x", 1, [1, 0, 11, 10], 0.9)], data)
    gt = flatten_ground_truth(data.records)
    pairs = box_pairs(table, gt)
    rank = ranks_in_image(table)
    assert rank.tolist() == [1, 0]
    same = table.labels[pairs.det] == gt.labels[pairs.gt]
    # det 1 (0.9): IoU 9/11 with box 0, 6/14 with box 1 -> box 0; det 0 then gets box 1 (IoU 9/11)
    assert greedy_match(pairs, same, 0.5, rank, len(gt)).tolist() == [1, 0]
    assert greedy_match(pairs, same, 0.9, rank, len(gt)).tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------------
# sensitivity


def test_matlab_rounding():
    assert [round_half_away(v) for v in (0.5, 1.5, 2.5, 0.49, 3.0)] == [1, 2, 3, 0, 3]


def test_size_bins_of_ten_objects():
    areas = np.array([100.0 * k for k in (3, 1, 10, 2, 7, 4, 9, 5, 8, 6)])
    bins, thresholds = percentile_bins(areas)
    # sorted areas 100..1000; entries round(0.1 * 10) = 1, 3, 7, 9 -> thresholds 0, 100, 300, 700, 900
    assert thresholds.tolist() == [0, 100, 300, 700, 900]
    by_area = dict(zip(areas.tolist(), bins.tolist()))
    assert [by_area[100.0 * k] for k in range(1, 11)] == [0, 1, 1, 2, 2, 2, 2, 3, 3, 4]  # 10/20/40/20/10 %


def test_normalised_ap_literal():
    # an FP first, then two TPs of 4 objects, N = 3: tpn = tp * 3 / 4
    labels = np.array([-1, 1, 0, 1], np.int8)
    result = normalised_ap(labels, num_objects=4, normaliser=3.0)
    # at the TPs pn = 0.75 / 1.75, then 1.5 / 2.5: increasing, so the envelope is 0.6 at both
    assert result.apn == pytest.approx(2 * 0.6 / 4)
    assert result.ap == pytest.approx(2 * (2 / 3) / 4)  # p = 1/2, 2/3 -> envelope 2/3
    assert result.interpolated[:2].tolist() == pytest.approx([0.6, 0.6])
    assert normalised_ap(labels, 0, 3.0).apn is None


def ten_objects_case() -> tuple[DetectionDataset, list[dict]]:
    """Class "thing": 10 boxes 10 px wide and 10 k px tall (area 100 k, aspect 1 / k), one per
    image; detections exactly on the even ones and one false positive scored highest; 20 images
    in all, so N = 0.15 x 20 = 3."""
    records = [record(f"i{k}", [[0, 0, 10, 10 * k]], [1]) for k in range(1, 11)]
    records += [record(f"e{k}", [], []) for k in range(10)]
    detections = [det(f"i{k}", 1, [0, 0, 10, 10 * k], 0.5 + k / 100) for k in (2, 4, 6, 8, 10)]
    detections.append(det("e0", 1, [0, 0, 50, 50], 0.99))
    return dataset(["thing"], records), detections


def test_size_and_aspect_sensitivity_of_ten_objects():
    result = analyse(*ten_objects_case(), AnalysisSettings(worst=0))
    thing = result.sensitivity[0]
    assert thing.num_objects == 10
    assert thing.size.num_objects.tolist() == [1, 2, 4, 2, 1]
    # a bin with one TP in 2 objects after the FP: tpn = 1 * 3 / 2, pn = 1.5 / 2.5 = 0.6, APn = 0.6 / 2
    # XS (k = 1) found nothing; S (k = 2, 3): 0.3; M (4..7): TPs k = 4, 6 -> pn 0.75/1.75, 1.5/2.5 ...
    assert thing.size.apn[0] == 0.0
    assert thing.size.apn[1] == pytest.approx(0.6 / 2)
    # M: tpn = tp * 3 / 4 after the FP: pn 0.75 / 1.75 then 0.6, the envelope 0.6 at both TPs
    assert thing.size.apn[2] == pytest.approx(2 * 0.6 / 4)
    assert thing.size.apn[3] == pytest.approx(0.6 / 2)  # L (8, 9): k = 8
    assert thing.size.apn[4] == pytest.approx(0.75)  # XL (10): tpn = 3, pn = 3 / 4
    # aspect = 1 / k: XT is k = 10 (found), XW is k = 1 (missed): the size bins reversed
    assert thing.aspect.apn == pytest.approx(thing.size.apn[::-1])
    # all 10 objects: TPs 1..5 after the FP, pn = 0.3 tp / (0.3 tp + 1), envelope 0.6 at each
    assert thing.apn == pytest.approx(5 * 0.6 / 10)
    assert thing.ap == pytest.approx(5 * (5 / 6) / 10)
    assert thing.size.spread == pytest.approx((0.0, 0.75))


# ---------------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_of_a_literal_case():
    names = ["apple", "pear", "plum"]
    a, p, q, d = [0, 0, 40, 40], [50, 0, 90, 40], [100, 0, 140, 40], [0, 100, 40, 140]
    data = dataset(names, [record("x", [a, p, q, d], [1, 2, 3, 2], [False, False, False, True])])
    detections = [
        det("x", 1, a, 0.9),  # apple on the apple: diagonal
        det("x", 2, a, 0.8),  # pear on the apple, which is taken: a false pear
        det("x", 1, p, 0.7),  # apple on the pear: pear detected as apple
        det("x", 3, [150, 150, 190, 190], 0.6),  # plum on nothing: a false plum
        det("x", 2, d, 0.5),  # on the difficult pear: left out
        det("x", 1, q, 0.2),  # below the threshold: the plum is missed
    ]
    result = analyse(data, detections, AnalysisSettings(conf_threshold=0.3, worst=0))
    expected = [  # rows true apple, pear, plum, background; columns predicted
        [1, 0, 0, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 1],
        [0, 1, 1, 0],
    ]
    assert result.confusion.tolist() == expected
    assert row_normalised(result.confusion)[3].tolist() == [0, 0.5, 0.5, 0]
    assert analyse(data, detections, AnalysisSettings(conf_threshold=0.1, worst=0)).confusion[2].tolist() == [1, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# perfect detections and empty input


def perfect(data: DetectionDataset) -> list[dict]:
    """Every regular box as a detection of its class (COCO data: the json's category ids)."""
    ids = data.category_ids or list(range(1, data.num_classes + 1))
    return [
        det(r.image_id, ids[int(label) - 1], box.tolist(), 1.0 - 0.0001 * i)
        for i, (r, box, label) in enumerate(
            (r, box, label) for r in data.records for box, label, ignore in
            zip(r.boxes_xyxy_px, r.labels, np.asarray(r.difficult) | np.asarray(r.iscrowd)) if not ignore
        )
    ]


def test_perfect_detections_are_all_correct_and_the_matrix_diagonal(shared_data):
    from ssdcli.data.reader import load_dataset

    data = load_dataset(shared_data / "coco128" / "annotations" / "instances_val2017.json")
    result = analyse(data, perfect(data), AnalysisSettings(worst=0))
    everything = next(g for g in result.summary if g.name == "all classes")
    assert everything.type_counts[0] == result.num_detections and everything.type_counts[1:].sum() == 0
    assert everything.top_fp_counts.sum() == 0
    present = [b for b in result.per_class if b.num_objects]
    assert all(np.nanmin(b.trend_fractions[:4, 0]) == 1.0 for b in present)  # 100 % Cor up to 1 x N
    off_diagonal = result.confusion - np.diag(np.diag(result.confusion))
    assert off_diagonal.sum() == 0 and np.trace(result.confusion) == result.num_detections
    assert result.tide.ap == pytest.approx(1.0) and all(v == pytest.approx(0.0) for v in result.tide.dap.values())
    assert result.worst == []


def test_no_detections_at_all():
    data, _ = hoiem_case()
    result = analyse(data, [], AnalysisSettings(worst=5))
    assert result.num_detections == 0 and all(b.num_detections == 0 for b in result.per_class)
    assert result.confusion[:-1, -1].sum() == 3  # every object missed
    assert result.tide.counts["Miss"] == 3 and result.tide.ap == pytest.approx(0.0)
    assert [w.missed for w in result.worst] == [3]
