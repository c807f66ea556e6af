"""VOC07 / VOC12 / COCO metrics: hand-worked cases, the Cartucho reference and pycocotools."""

from __future__ import annotations

import copy
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.errors import UserError
from ssdcli.evaluation import Metric, evaluate, load_detections, parse_detections
from ssdcli.evaluation.coco import coco_ground_truth
from ssdcli.evaluation.plots import draw_pr_curve, write_pr_curves
from ssdcli.evaluation.voc import iou_matrix_xyxy

# ---------------------------------------------------------------------------------------------
# helpers


def record(image_id: str, boxes, labels, difficult=None, size=(100, 100)) -> ImageRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    difficult = np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool)
    return ImageRecord(
        image_path=Path(f"{image_id}.jpg"),
        image_id=image_id,
        width=size[0],
        height=size[1],
        boxes_xyxy_px=boxes,
        labels=np.asarray(labels, np.int64).reshape(-1),
        difficult=difficult,
        iscrowd=np.zeros(n, bool),
    )


def det(image_id, category_id, box_xyxy, score) -> dict:
    x1, y1, x2, y2 = box_xyxy
    return {"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


CAT, DOG, BIRD, FISH = 1, 2, 3, 4


def hand_dataset() -> DetectionDataset:
    """Image a: cat A1, a difficult cat A2, dog D1; image b: cat B1, bird; image c: no objects.
    fish has no ground truth at all."""
    records = [
        record("a", [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], [CAT, CAT, DOG], difficult=[0, 1, 0]),
        record("b", [[0, 0, 20, 20], [30, 30, 50, 50]], [CAT, BIRD]),
        record("c", np.zeros((0, 4)), []),
    ]
    return DetectionDataset("voc", Path("hand"), ["cat", "dog", "bird", "fish"], records)


def hand_detections() -> list[dict]:
    return [
        det("a", CAT, [0, 0, 10, 10], 0.9),  # TP on A1
        det("a", CAT, [0, 0, 10, 9], 0.8),  # IoU 0.9 with A1, already taken -> FP (duplicate)
        det("a", CAT, [50, 50, 60, 60], 0.7),  # on difficult A2 -> ignored
        det("c", CAT, [0, 0, 10, 10], 0.6),  # image without objects -> FP
        det("b", CAT, [0, 0, 20, 20], 0.5),  # TP on B1
        det("b", DOG, [20, 20, 40, 40], 0.95),  # no dog in b -> FP
        det("a", DOG, [20, 20, 40, 40], 0.85),  # TP on D1
        det("a", FISH, [0, 0, 10, 10], 0.4),  # fish has no ground truth
        # bird: no detections
    ]


SPEC_KEYS = {
    "voc07_map", "voc12_map", "coco_ap", "coco_ap50", "coco_ap75", "coco_aps", "coco_apm", "coco_apl",
    "per_class", "num_images", "num_detections",
}

# ---------------------------------------------------------------------------------------------
# VOC


def test_continuous_iou_equals_devkit_plus_one_iou():
    rng = np.random.default_rng(0)
    # 1-based inclusive integer corners, as in VOC XML
    a = rng.integers(1, 60, (50, 2)); a = np.concatenate([a, a + rng.integers(0, 40, (50, 2))], 1)
    b = rng.integers(1, 60, (40, 2)); b = np.concatenate([b, b + rng.integers(0, 40, (40, 2))], 1)
    # VOCevaldet.m / voc_eval.py, one pair at a time
    expected = np.zeros((50, 40))
    for i, bb in enumerate(a.astype(float)):
        for j, gt in enumerate(b.astype(float)):
            iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
            ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - iw * ih
                expected[i, j] = iw * ih / ua
    to_continuous = np.array([-1, -1, 0, 0])  # (xmin - 1, ymin - 1, xmax, ymax)
    got = iou_matrix_xyxy((a + to_continuous).astype(float), (b + to_continuous).astype(float))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert (expected > 0).any() and (expected == 0).any()


def test_iou_of_two_empty_boxes_is_zero():
    box = np.array([[5.0, 5.0, 5.0, 5.0]])
    assert iou_matrix_xyxy(box, box)[0, 0] == 0.0


def test_hand_built_case_voc07_and_voc12():
    result = evaluate(hand_dataset(), hand_detections(), [Metric.voc07, Metric.voc12])
    cat, dog, bird, fish = result.classes
    # cat: 2 non-difficult gts (A1, B1). In score order: TP, FP (dup), ignored (difficult), FP, TP
    #   recall    0.5, 0.5, 0.5, 0.5, 1.0
    #   precision 1,   1/2, 1/2, 1/3, 1/2     (the ignored one repeats the previous point)
    np.testing.assert_allclose(cat.curve.recall, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(cat.curve.precision, [1, 1 / 2, 1 / 2, 1 / 3, 1 / 2])
    assert (cat.num_gt, cat.curve.num_tp, cat.curve.num_fp) == (2, 2, 2)
    # VOC07: t = 0, .1, ..., .5 (6 thresholds) reach precision 1; t = .6 .. 1 (5) only 1/2
    assert cat.voc07_ap == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    # VOC12: envelope 1 on recall (0, .5], 1/2 on (.5, 1]  ->  0.5 * 1 + 0.5 * 0.5
    assert cat.voc12_ap == pytest.approx(0.75)
    # dog: FP (0.95, image b) then TP: precision 0, 1/2 at recall 0, 1 -> envelope 1/2 everywhere
    assert dog.voc07_ap == pytest.approx(0.5)
    assert dog.voc12_ap == pytest.approx(0.5)
    # bird: a gt, no detections
    assert (bird.voc07_ap, bird.voc12_ap, bird.num_detections) == (0.0, 0.0, 0)
    # fish: no ground truth -> no AP, and left out of the mean
    assert (fish.voc07_ap, fish.voc12_ap, fish.num_detections) == (None, None, 1)
    assert result.voc07_map == pytest.approx((8.5 / 11 + 0.5 + 0.0) / 3)  # = 14/33
    assert result.voc12_map == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # = 5/12
    assert (result.num_images, result.num_detections) == (3, 8)


def test_detection_on_difficult_box_changes_nothing():
    without = [d for d in hand_detections() if d["bbox"][0] != 50]
    a, b = evaluate(hand_dataset(), hand_detections()), evaluate(hand_dataset(), without)
    assert (a.voc07_map, a.voc12_map) == (b.voc07_map, b.voc12_map)


def test_duplicate_is_false_positive_even_when_another_gt_is_free():
    # Devkit rule: a detection takes the gt with the highest IoU *including taken ones*; if that
    # one is taken it is a false positive, though G2 (IoU 80/95 = 0.84 > 0.5) is still free.
    dataset = DetectionDataset("voc", Path("x"), ["cat"], [record("a", [[0, 0, 10, 10], [0, 0, 10, 8]], [1, 1])])
    dets = [det("a", 1, [0, 0, 10, 10], 0.9), det("a", 1, [0, 0, 10, 9.5], 0.8)]
    cat = evaluate(dataset, dets, ["voc07", "voc12"]).classes[0]
    # recall .5, .5; precision 1, 1/2 -> VOC12 = 0.5 * 1; VOC07: t <= .5 -> 1, t > .5 -> 0
    np.testing.assert_allclose(cat.curve.precision, [1, 0.5])
    assert cat.voc12_ap == pytest.approx(0.5)
    assert cat.voc07_ap == pytest.approx(6 / 11)


def test_iou_threshold_is_strict():
    dataset = DetectionDataset("voc", Path("x"), ["cat"], [record("a", [[0, 0, 10, 10]], [1])])
    exactly_half = [det("a", 1, [0, 0, 10, 5], 0.9)]  # IoU 50 / 100 = 0.5: devkit `ovmax > 0.5` fails
    just_above = [det("a", 1, [0, 0, 10, 5.01], 0.9)]
    assert evaluate(dataset, exactly_half, ["voc12"]).voc12_map == 0.0
    assert evaluate(dataset, just_above, ["voc12"]).voc12_map == pytest.approx(1.0)


def test_equal_scores_keep_the_given_order():
    dataset = DetectionDataset("voc", Path("x"), ["cat"], [record("a", [[0, 0, 10, 10]], [1])])
    miss, hit = det("a", 1, [60, 60, 70, 70], 0.5), det("a", 1, [0, 0, 10, 10], 0.5)
    # miss first: precision 0 then 1/2 at recall 1 -> AP 0.5; hit first: precision 1 -> AP 1
    assert evaluate(dataset, [miss, hit], ["voc12"]).voc12_map == pytest.approx(0.5)
    assert evaluate(dataset, [hit, miss], ["voc12"]).voc12_map == pytest.approx(1.0)


def test_voc07_recall_thresholds_are_voc_eval_py_arange():
    # 10 gts, 3 found (recall 0.3 exactly), precision 1: voc_eval.py's thresholds come from
    # np.arange(0, 1.1, 0.1), whose 4th value is 0.30000000000000004 > 0.3, so only t = 0, .1, .2
    # count: AP = 3/11, not 4/11.
    boxes = [[10 * i, 0, 10 * i + 5, 5] for i in range(10)]
    dataset = DetectionDataset("voc", Path("x"), ["cat"], [record("a", boxes, [1] * 10)])
    dets = [det("a", 1, boxes[i], 0.9) for i in range(3)]
    assert evaluate(dataset, dets, ["voc07"]).voc07_map == pytest.approx(3 / 11)


def test_zero_detections_and_no_ground_truth():
    empty = evaluate(hand_dataset(), [])
    assert (empty.voc07_map, empty.voc12_map) == (0.0, 0.0)
    assert empty.coco["ap"] == 0.0 and empty.coco["ap50"] == 0.0
    assert [c.coco_ap for c in empty.classes] == [0.0, 0.0, 0.0, None]
    no_gt = DetectionDataset("voc", Path("x"), ["cat"], [record("a", np.zeros((0, 4)), [])])
    result = evaluate(no_gt, [det("a", 1, [0, 0, 5, 5], 0.3)])
    assert (result.voc07_map, result.voc12_map, result.coco["ap"]) == (None, None, None)
    assert result.to_json() == {"per_class": {"cat": {}}, "num_images": 1, "num_detections": 1}


def test_to_json_has_exactly_the_spec_keys():
    result = evaluate(hand_dataset(), hand_detections())
    payload = result.to_json()
    # every hand-built box is under 32x32 pixels: COCO has no medium or large objects to score,
    # pycocotools says -1, and an undefined metric is absent
    assert set(payload) == SPEC_KEYS - {"coco_apm", "coco_apl"}
    assert payload["per_class"]["cat"] == {
        "voc07_ap": pytest.approx(8.5 / 11), "voc12_ap": pytest.approx(0.75), "coco_ap": pytest.approx(result.classes[0].coco_ap)
    }
    assert payload["per_class"]["fish"] == {}  # no ground truth: nothing defined
    assert all(0.0 <= v <= 1.0 for k, v in payload.items() if k.endswith(("_map", "_ap", "ap50", "ap75", "aps", "apm", "apl")))
    json.dumps(payload)  # plain json types only
    only_voc12 = evaluate(hand_dataset(), hand_detections(), ["voc12"]).to_json()
    assert set(only_voc12) == {"voc12_map", "per_class", "num_images", "num_detections"}
    assert set(only_voc12["per_class"]["cat"]) == {"voc12_ap"}


# ---------------------------------------------------------------------------------------------
# COCO on VOC-style data


def test_coco_on_voc_data_treats_difficult_as_ignore():
    dataset = DetectionDataset(
        "voc", Path("x"), ["cat"], [record("a", [[0, 0, 40, 40], [50, 50, 90, 90]], [1, 1], difficult=[0, 1])]
    )
    gt = coco_ground_truth(dataset)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert gt["annotations"][0]["bbox"] == [0.0, 0.0, 40.0, 40.0] and gt["annotations"][0]["area"] == 1600.0
    # The top-scored detection sits on the difficult box: ignored, so AP stays 1 at every IoU.
    dets = [det("a", 1, [50, 50, 90, 90], 0.95), det("a", 1, [0, 0, 40, 40], 0.9)]
    result = evaluate(dataset, dets, ["coco"])
    assert result.coco["ap"] == pytest.approx(1.0) and result.classes[0].coco_ap == pytest.approx(1.0)
    # whereas a top-scored detection on nothing is a false positive: precision 1/2 at recall 1
    stray = [det("a", 1, [0, 60, 5, 65], 0.99)] + dets
    assert evaluate(dataset, stray, ["coco"]).coco["ap"] == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------------
# detections files


def test_parse_detections_converts_xywh_to_xyxy():
    table = parse_detections(hand_detections(), hand_dataset())
    np.testing.assert_allclose(table.boxes_xyxy_px[1], [0, 0, 10, 9])
    assert table.image_index.tolist() == [0, 0, 0, 2, 1, 1, 0, 0]
    assert table.labels.tolist() == [1, 1, 1, 1, 1, 2, 2, 4]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"image_id": "zzz", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id 'zzz'"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id 1"),
        ({"image_id": "a", "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id 5"),
        ({"image_id": "a", "category_id": True, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id True"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "four finite numbers"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, "1", 1], "score": 0.5}, "four finite numbers"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}, "negative width or height"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}, "score nan"),
        ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1]}, "lacks score"),
        ([1, 2, 3], "not an object"),
    ],
)
def test_bad_detection_entries_name_file_and_index(tmp_path, bad, expected):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(hand_detections()[:2] + [bad]))
    with pytest.raises(UserError) as info:
        load_detections(path, hand_dataset())
    assert str(path) in str(info.value) and "detection 2" in str(info.value) and expected in str(info.value)


def test_detections_file_that_is_not_a_list_or_not_json(tmp_path):
    dataset = hand_dataset()
    with pytest.raises(UserError, match="not found"):
        load_detections(tmp_path / "missing.json", dataset)
    (tmp_path / "dict.json").write_text('{"image_id": "a"}')
    with pytest.raises(UserError, match="expected a json list"):
        load_detections(tmp_path / "dict.json", dataset)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(UserError, match="not a json file"):
        load_detections(tmp_path / "broken.json", dataset)
    (tmp_path / "empty.json").write_text("[]")
    assert load_detections(tmp_path / "empty.json", dataset) == []


# ---------------------------------------------------------------------------------------------
# plots


def test_pr_curve_images(tmp_path):
    result = evaluate(hand_dataset(), hand_detections(), ["voc12"])
    image = draw_pr_curve(result.classes[0].curve, "cat")
    assert image.shape == (440, 560, 3) and image.dtype == np.uint8
    assert (image[..., 2] > image[..., 0] + 100).any()  # the red envelope is drawn
    curves = [(c.name, c.curve, c.name) for c in result.classes]
    written = write_pr_curves(tmp_path / "pr", curves)
    assert [p.name for p in written] == ["pr_01_cat.png", "pr_02_dog.png", "pr_03_bird.png", "pr_04_fish.png"]
    assert all(p.stat().st_size > 0 for p in written)


# ---------------------------------------------------------------------------------------------
# real data: the Cartucho/mAP sample and coco128


def cartucho_to_voc(sample: Path, out: Path) -> tuple[Path, list[dict], list[str]]:
    """The sample's txt files -> a VOC folder (Annotations/ + JPEGImages/ linking the sample's
    640x480 images) and SPEC detections. Ground truth lines are ``<class> <l> <t> <r> <b>``,
    detections ``<class> <score> <l> <t> <r> <b>``, 1-based inclusive pixels (no class name has
    a space). Detections of classes without ground truth are returned apart (Cartucho ignores
    them)."""
    (out / "Annotations").mkdir(parents=True)
    (out / "JPEGImages").mkdir()
    classes: set[str] = set()
    for txt in sorted((sample / "input" / "ground-truth").glob("*.txt")):
        objects = []
        for line in txt.read_text().splitlines():
            if line.strip():
                name, left, top, right, bottom = line.split()
                classes.add(name)
                objects.append(
                    f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{left}</xmin>"
                    f"<ymin>{top}</ymin><xmax>{right}</xmax><ymax>{bottom}</ymax></bndbox></object>"
                )
        (out / "Annotations" / f"{txt.stem}.xml").write_text(
            f"<annotation><filename>{txt.stem}.jpg</filename><size><width>640</width><height>480</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>"
        )
        (out / "JPEGImages" / f"{txt.stem}.jpg").symlink_to(sample / "input" / "images-optional" / f"{txt.stem}.jpg")
    names = sorted(classes)  # not all PASCAL names: SPEC class order is the sorted set
    detections, others = [], []
    for txt in sorted((sample / "input" / "detection-results").glob("*.txt")):  # Cartucho's order
        for line in txt.read_text().splitlines():
            if line.strip():
                name, score, left, top, right, bottom = line.split()
                left, top, right, bottom = (float(v) for v in (left, top, right, bottom))
                entry = {
                    "image_id": txt.stem,
                    "category_id": names.index(name) + 1 if name in classes else name,
                    # 1-based inclusive -> continuous 0-based: x = l - 1, w = r - l + 1
                    "bbox": [left - 1, top - 1, right - left + 1, bottom - top + 1],
                    "score": float(score),
                }
                (detections if name in classes else others).append(entry)
    return out, detections + others, names


def reference_results(sample: Path) -> tuple[dict[str, float], float, dict[str, tuple[int, int]]]:
    """``{class: AP %}``, mAP % and ``{class: (tp, fp)}`` from REFERENCE_RESULTS.txt."""
    text = (sample / "REFERENCE_RESULTS.txt").read_text()
    ap = {line.split(" = ")[1].strip().removesuffix(" AP"): float(line.split("%")[0])
          for line in text.splitlines() if line.strip().endswith(" AP")}
    mean = float(text.split("mAP = ")[1].split("%")[0])
    counts = {}
    for line in text.split("# Number of detected objects per class")[1].splitlines():
        if "(tp:" in line:
            name, rest = line.split(":", 1)
            counts[name.strip()] = (int(rest.split("tp:")[1].split(",")[0]), int(rest.split("fp:")[1].split(")")[0]))
    return ap, mean, counts


def test_cartucho_sample_matches_reference(shared_data, tmp_path):
    from ssdcli.data.reader import load_dataset

    sample = shared_data / "cartucho_map_sample"
    folder, all_detections, names = cartucho_to_voc(sample, tmp_path / "cartucho")
    detections = [d for d in all_detections if isinstance(d["category_id"], int)]
    dataset = load_dataset(folder)
    assert dataset.classes == names and len(dataset.records) == 85
    assert sum(r.num_boxes for r in dataset.records) == 686

    expected_ap, expected_map, expected_counts = reference_results(sample)
    result = evaluate(dataset, detections, ["voc12"])
    assert f"{100 * result.voc12_map:.2f}" == "31.05" == f"{expected_map:.2f}"
    assert len(expected_ap) == 30
    for c in result.classes:
        assert f"{100 * c.voc12_ap:.2f}" == f"{expected_ap[c.name]:.2f}", c.name
        if c.name in expected_counts:  # classes with detections
            assert (c.curve.num_tp, c.curve.num_fp) == expected_counts[c.name], c.name

    # With every detected class in the class list (a --classes file), the 6 classes without
    # ground truth get no AP and leave the mean alone.
    extra = sorted({d["category_id"] for d in all_detections if isinstance(d["category_id"], str)})
    (tmp_path / "classes.txt").write_text("\n".join(names + extra) + "\n")
    all_names = names + extra
    wide = load_dataset(folder, classes=all_names)
    renumbered = [{**d, "category_id": all_names.index(d["category_id"]) + 1 if isinstance(d["category_id"], str)
                   else d["category_id"]} for d in all_detections]
    wide_result = evaluate(wide, renumbered, ["voc12"])
    assert wide_result.voc12_map == pytest.approx(result.voc12_map, abs=1e-12)
    assert [c.voc12_ap for c in wide_result.classes[30:]] == [None] * len(extra)
    assert wide_result.classes[all_names.index("refrigerator")].curve.num_fp == 32


def coco128_detections(data: dict, seed: int = 0) -> list[dict]:
    """Jittered copies of most ground-truth boxes (some twice) plus false positives, seeded."""
    rng = np.random.default_rng(seed)
    size_of = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    category_ids = [c["id"] for c in data["categories"]]
    detections = []
    for ann in data["annotations"]:
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            x, y, w, h = ann["bbox"]
            x, y = x + rng.normal(0, 0.08) * w, y + rng.normal(0, 0.08) * h
            w, h = w * np.exp(rng.normal(0, 0.15)), h * np.exp(rng.normal(0, 0.15))
            detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                               "bbox": [x, y, w, h], "score": float(rng.uniform(0.05, 1.0))})
    image_ids = sorted(size_of)
    for _ in range(400):
        image_id = int(rng.choice(image_ids))
        width, height = size_of[image_id]
        w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
        detections.append({"image_id": image_id, "category_id": int(rng.choice(category_ids)),
                           "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                           "score": float(rng.uniform(0.0, 0.9))})
    return [{**d, "bbox": [float(v) for v in d["bbox"]]} for d in detections]


def pycocotools_direct(json_path: Path, detections: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_coco128_equals_pycocotools_run_directly(shared_data, capsys):
    from ssdcli.data.coco import load_coco_json
    from ssdcli.data.reader import load_dataset

    json_path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
    data = json.loads(json_path.read_text())
    detections = coco128_detections(data)
    direct = pycocotools_direct(json_path, detections)

    dataset = load_dataset(json_path, check_images=False)
    result = evaluate(dataset, detections, ["coco"], coco_ground_truth=load_coco_json(json_path), coco_backend="pycocotools")
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    names = ("ap", "ap50", "ap75", "aps", "apm", "apl", "ar1", "ar10", "ar100", "ars", "arm", "arl")
    for name, value in zip(names, direct.stats):
        assert result.coco[name] == value, name
    assert 0.2 < result.coco["ap"] < 0.9 and result.coco["aps"] is not None
    # per class: mean over IoU thresholds and recall points, area all, 100 detections
    precision = direct.eval["precision"][:, :, :, 0, -1]
    for k, cat_id in enumerate(direct.params.catIds):
        values = precision[:, :, k][precision[:, :, k] > -1]
        expected = float(values.mean()) if values.size else None
        assert result.classes[dataset.category_ids.index(cat_id)].coco_ap == expected
    assert sum(c.coco_ap is not None for c in result.classes) == 71  # 71 of 80 classes present
    assert set(result.to_json()) == SPEC_KEYS - {"voc07_map", "voc12_map"}

    # Without the json, the ground truth built from the records (box areas instead of
    # segmentation areas) gives the same numbers where area plays no part.
    rebuilt = evaluate(dataset, detections, ["coco"], coco_backend="pycocotools")
    for name in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100"):
        assert rebuilt.coco[name] == pytest.approx(result.coco[name], abs=1e-6), name


@pytest.mark.parametrize("case", ["coco128", "hand", "no detections"])
def test_faster_coco_eval_gives_the_same_numbers(shared_data, case, capsys):
    pytest.importorskip("faster_coco_eval")
    from ssdcli.data.coco import load_coco_json
    from ssdcli.data.reader import load_dataset

    if case == "coco128":
        json_path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
        dataset, gt = load_dataset(json_path, check_images=False), load_coco_json(json_path)
        detections = coco128_detections(gt, seed=1)
    else:
        dataset, gt = hand_dataset(), None
        detections = hand_detections() if case == "hand" else []
    slow = evaluate(dataset, detections, ["coco"], coco_ground_truth=gt, coco_backend="pycocotools")
    fast = evaluate(dataset, detections, ["coco"], coco_ground_truth=gt, coco_backend="faster_coco_eval")
    assert capsys.readouterr().out == ""
    assert fast.coco == pytest.approx(slow.coco, abs=1e-12)
    assert [c.coco_ap for c in fast.classes] == pytest.approx([c.coco_ap for c in slow.classes], abs=1e-12)


def test_asking_for_a_missing_backend_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    with pytest.raises(UserError, match="faster_coco_eval is not installed"):
        evaluate(hand_dataset(), hand_detections(), ["coco"], coco_backend="faster_coco_eval")
    assert evaluate(hand_dataset(), hand_detections(), ["coco"]).coco["ap"] > 0  # auto: pycocotools
