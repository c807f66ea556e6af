"""ssdcli's COCO evaluator against pycocotools' COCOeval: the same stats, precision and recall,
bit for bit, on real data (coco128, VOC converted), hand-built edge cases and random worlds."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from ssdcli.errors import UserError
from ssdcli.evaluation import evaluate
from ssdcli.evaluation.coco import coco_ground_truth
from ssdcli.evaluation.cocoeval import coco_evaluate

# ---------------------------------------------------------------------------------------------
# helpers


def pycocotools_eval(ground_truth: dict, results: list[dict], image_ids=None, category_ids=None):
    """COCOeval run as its README says (on copies: pycocotools adds keys to the dicts)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {**copy.deepcopy(ground_truth), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        if category_ids is not None:
            evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_same_as_pycocotools(ground_truth: dict, results: list[dict], image_ids=None, category_ids=None):
    """Ours equals COCOeval exactly: stats, the full precision and recall arrays, per-class AP."""
    reference = pycocotools_eval(ground_truth, results, image_ids, category_ids)
    ours = coco_evaluate(ground_truth, results, image_ids, category_ids)
    np.testing.assert_array_equal(ours.stats, reference.stats)
    np.testing.assert_array_equal(ours.precision, reference.eval["precision"])
    np.testing.assert_array_equal(ours.recall, reference.eval["recall"])
    assert list(ours.category_ids) == [int(c) for c in reference.params.catIds]
    return ours


def gt_dict(images, annotations, num_categories=2) -> dict:
    """A COCO instances dict; annotations are (image_id, category_id, [x, y, w, h]) plus optional
    area (default w * h) and iscrowd (default 0); ids 1.. in order."""
    anns = []
    for i, (image_id, category_id, bbox, *rest) in enumerate(annotations):
        area = rest[0] if rest and rest[0] is not None else bbox[2] * bbox[3]
        crowd = rest[1] if len(rest) > 1 else 0
        anns.append({"id": i + 1, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "area": area, "iscrowd": crowd})
    return {
        "images": [{"id": image_id, "width": 640, "height": 480} for image_id in images],
        "annotations": anns,
        "categories": [{"id": k, "name": f"c{k}"} for k in range(1, num_categories + 1)],
    }


def result(image_id, category_id, bbox, score) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def jittered_results(ground_truth: dict, rng: np.random.Generator, false_positives: int) -> list[dict]:
    """Every non-crowd box jittered 0-2 times, plus random false positives: a detector's output."""
    category_ids = [c["id"] for c in ground_truth["categories"]]
    image_ids = [img["id"] for img in ground_truth["images"]]
    results = []
    for ann in ground_truth["annotations"]:
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            x, y, w, h = ann["bbox"]
            results.append(result(ann["image_id"], ann["category_id"],
                                  [x + rng.normal(0, 0.05) * w, y + rng.normal(0, 0.05) * h,
                                   w * np.exp(rng.normal(0, 0.1)), h * np.exp(rng.normal(0, 0.1))],
                                  float(rng.uniform(0.1, 1.0))))
    for _ in range(false_positives):
        w, h = rng.uniform(2, 300), rng.uniform(2, 200)
        results.append(result(int(rng.choice(image_ids)), int(rng.choice(category_ids)),
                              [rng.uniform(0, 300), rng.uniform(0, 250), w, h], float(rng.uniform(0, 0.8))))
    return [{**r, "bbox": [float(v) for v in r["bbox"]]} for r in results]


@pytest.fixture(scope="module")
def coco128(shared_data):
    return json.loads((shared_data / "coco128" / "annotations" / "instances_train2017.json").read_text())


# ---------------------------------------------------------------------------------------------
# real data


def test_coco128_equals_pycocotools(coco128):
    rng = np.random.default_rng(0)
    results = jittered_results(coco128, rng, false_positives=3000)
    # one image with 150 detections of one category: the cut to the best 100 per (image, category)
    image_id, category_id = coco128["annotations"][0]["image_id"], coco128["annotations"][0]["category_id"]
    results += [result(image_id, category_id, [float(x), 10.0, 40.0, 60.0], float(rng.uniform())) for x in range(150)]
    ours = assert_same_as_pycocotools(coco128, results)
    assert 0.2 < ours.stats[0] < 0.9 and (ours.stats > -1).all()  # a real spread, every stat defined
    assert (ours.precision[:, :, :, 0, -1] > -1).any(axis=(0, 1)).sum() == 71  # 71 of 80 classes present


def test_coco128_scored_subset_equals_pycocotools(coco128):
    """params.imgIds / catIds as evaluate_coco sets them for a split or a --classes subset;
    results on images left out are dropped, not an error."""
    results = jittered_results(coco128, np.random.default_rng(1), false_positives=500)
    image_ids = sorted(img["id"] for img in coco128["images"])[::3]
    assert_same_as_pycocotools(coco128, results, image_ids=image_ids, category_ids=[1, 3, 62, 17, 999])


def test_voc_data_through_coco_ground_truth_equals_pycocotools(shared_data):
    """VOC2007 sample (difficult -> crowd) and BCCD (two 1-px boxes), converted the way
    evaluate_coco converts VOC-style data."""
    from ssdcli.data.reader import load_dataset

    for folder, split in (("voc2007_sample", None), ("bccd", "test")):
        dataset = load_dataset(shared_data / folder, split=split, check_images=False)
        ground_truth = coco_ground_truth(dataset)
        results = jittered_results(ground_truth, np.random.default_rng(2), false_positives=20 * len(dataset.records))
        ours = assert_same_as_pycocotools(ground_truth, results)
        assert ours.stats[0] > 0.1
    assert sum(a["iscrowd"] for a in coco_ground_truth(load_dataset(shared_data / "voc2007_sample", check_images=False))["annotations"]) == 6


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_evaluate_defaults_to_ssdcli_and_equals_the_pycocotools_backend(shared_data, kind):
    from ssdcli.data.coco import load_coco_json
    from ssdcli.data.reader import load_dataset

    if kind == "coco":
        json_path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
        dataset, gt = load_dataset(json_path, check_images=False), load_coco_json(json_path)
        detections = jittered_results(gt, np.random.default_rng(3), false_positives=300)
    else:
        dataset, gt = load_dataset(shared_data / "voc2007_sample", check_images=False), None
        stem_of = {index + 1: record.image_id for index, record in enumerate(dataset.records)}
        converted = jittered_results(coco_ground_truth(dataset), np.random.default_rng(3), false_positives=50)
        detections = [{**d, "image_id": stem_of[d["image_id"]]} for d in converted]
    ours = evaluate(dataset, detections, ["coco"], coco_ground_truth=gt)
    reference = evaluate(dataset, detections, ["coco"], coco_ground_truth=gt, coco_backend="pycocotools")
    assert ours.coco == reference.coco
    assert [c.coco_ap for c in ours.classes] == [c.coco_ap for c in reference.classes]
    assert evaluate(dataset, detections, ["coco"], coco_ground_truth=gt, coco_backend="ssdcli").coco == ours.coco


# ---------------------------------------------------------------------------------------------
# hand-computed


def test_one_box_two_detections_hand_computed():
    """1 box (area 100: small) and 2 detections: a false positive at score 0.9, then one with
    IoU 62.5 / 100 = 0.625 at 0.8.

    At IoU thresholds 0.50, 0.55, 0.60 the second is a true positive: cumulative tp = [0, 1],
    fp = [1, 1], precision = [0, 1/2], recall = [0, 1]; made non-increasing from the right,
    precision is 1/2 at every recall threshold (recall 0 reads index 0: max(0, 1/2) = 1/2). At the
    7 thresholds from 0.65 up both are false positives: precision 0 everywhere.
    AP = (3 * 0.5 + 7 * 0) / 10 = 0.15, AP50 = 0.5, AP75 = 0; AR100 = AR10 = 3 / 10 = 0.3;
    AR1 = 0 (only the false positive counts). No medium or large boxes: -1."""
    gt = gt_dict([1], [(1, 1, [0, 0, 10, 10])], num_categories=1)
    results = [result(1, 1, [50, 50, 10, 10], 0.9), result(1, 1, [0, 0, 10, 6.25], 0.8)]
    ours = assert_same_as_pycocotools(gt, results)
    np.testing.assert_allclose(ours.stats, [0.15, 0.5, 0.0, 0.15, -1, -1, 0.0, 0.3, 0.3, 0.3, -1, -1], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# edge cases, each against pycocotools


def test_crowd_regions_absorb_detections_and_regular_boxes_win():
    gt = gt_dict(
        [1, 2],
        [
            (1, 1, [0, 0, 100, 100], None, 1),  # crowd region
            (1, 1, [10, 10, 30, 30]),  # regular box inside it
            (2, 1, [0, 0, 50, 50], None, 1),  # a category whose only box is crowd
            (2, 2, [0, 0, 50, 50], None, 1),
        ],
    )
    results = [
        result(1, 1, [10, 10, 30, 30], 0.9),  # regular box, though the crowd overlaps (IoU 1 vs 0.09)
        result(1, 1, [11, 11, 30, 30], 0.8),  # regular box taken: into the crowd (inter / det area = 1)
        result(1, 1, [50, 50, 20, 20], 0.7),  # inside the crowd: ignored, crowd stays free
        result(1, 1, [90, 90, 30, 30], 0.6),  # 1/9 inside the crowd: false positive
        result(2, 2, [0, 0, 40, 40], 0.5),  # all-crowd category: -1 for it
    ]
    ours = assert_same_as_pycocotools(gt, results)
    assert (ours.precision[:, :, 1] == -1).all()  # category 2 has no box that counts


def test_area_range_edges():
    """A box whose area field is exactly 32**2 is both small and medium; the area field, not
    w * h, decides for boxes, w * h for detections."""
    gt = gt_dict(
        [1, 2],
        [
            (1, 1, [0, 0, 32, 32]),  # area 1024: small and medium
            (1, 1, [100, 100, 10, 10], 96.0**2),  # area field says medium/large edge, box is 10 x 10
            (2, 1, [0, 0, 40, 40], 1023.5),  # area field says small
            (2, 2, [0, 0, 96, 96]),
        ],
    )
    results = [
        result(1, 1, [0, 0, 32, 32], 0.9),
        result(1, 1, [100, 100, 10, 10], 0.8),
        result(1, 1, [200, 200, 32, 32], 0.85),  # unmatched, w * h = 1024: counts in small and medium
        result(1, 1, [300, 300, 31, 33], 0.5),  # unmatched, 1023: ignored in medium
        result(2, 1, [0, 0, 40, 40], 0.7),
        result(2, 2, [1, 1, 96, 96], 0.6),
        result(2, 2, [300, 300, 97, 96], 0.4),  # unmatched large: ignored for small and medium
    ]
    assert_same_as_pycocotools(gt, results)


def test_tied_scores_and_tied_ious():
    """Ties: equal scores keep result order inside an image and image order across images;
    equal IoUs go to the later box."""
    gt = gt_dict(
        [3, 1, 2],
        [
            (1, 1, [0, 0, 20, 10]),
            (1, 1, [10, 0, 20, 10]),  # the detection below overlaps both boxes equally
            (2, 1, [0, 0, 10, 10]),
            (3, 1, [0, 0, 10, 10]),
        ],
    )
    results = [
        result(1, 1, [5, 0, 20, 10], 0.5),  # IoU 0.6 with both boxes: takes the second
        result(1, 1, [12, 0, 20, 10], 0.5),  # IoU 0.82 with the second only, 0.25 with the first
        result(3, 1, [50, 50, 10, 10], 0.5),
        result(2, 1, [0, 0, 10, 10], 0.5),
        result(3, 1, [0, 0, 10, 10], 0.5),
        result(2, 1, [60, 60, 10, 10], 0.5),
    ]
    assert_same_as_pycocotools(gt, results)


def test_more_than_100_detections_per_image_and_category():
    """Only the best 100 of an (image, category) count: true positives scored below 100 false
    positives are lost, AR100 < 1 although every box has a detection."""
    gt = gt_dict([1, 2], [(1, 1, [float(10 * i), 0, 8, 8]) for i in range(30)] + [(2, 1, [0, 0, 50, 50])])
    rng = np.random.default_rng(4)
    results = [result(1, 1, [float(x), 100, 8, 8], float(rng.uniform(0.3, 1.0))) for x in range(120)]
    results += [result(1, 1, [float(10 * i) + rng.normal(0, 1), 0, 8, 8], float(rng.uniform())) for i in range(30)]
    results += [result(2, 1, [0, 0, 50, 50], 0.01)]
    ours = assert_same_as_pycocotools(gt, results)
    assert ours.stats[6] < ours.stats[7] < ours.stats[8] < 1  # AR1 < AR10 < AR100 < 1


def test_detections_without_ground_truth():
    """A detection on an image without boxes, and one of a category without boxes (in the
    categories list, and not in it at all)."""
    gt = gt_dict([1, 2, 3], [(1, 1, [0, 0, 50, 50])], num_categories=2)
    results = [
        result(1, 1, [0, 0, 50, 50], 0.6),
        result(2, 1, [0, 0, 50, 50], 0.9),  # image 2 has no boxes: false positive
        result(1, 2, [0, 0, 50, 50], 0.8),  # category 2 has no boxes: not scored
        result(3, 7, [0, 0, 50, 50], 0.7),  # category 7 is not a category: dropped
    ]
    ours = assert_same_as_pycocotools(gt, results)
    assert ours.stats[0] == pytest.approx(0.5)  # precision 1/2 at every recall for category 1


def test_no_detections_and_no_ground_truth():
    gt = gt_dict([1, 2], [(1, 1, [0, 0, 50, 50]), (2, 2, [0, 0, 10, 10])])
    ours = assert_same_as_pycocotools(gt, [])
    assert ours.stats.tolist() == [0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, -1]
    empty = assert_same_as_pycocotools(gt_dict([1], []), [result(1, 1, [0, 0, 5, 5], 0.5)])
    assert (empty.stats == -1).all()
    assert (coco_evaluate(gt_dict([], [], num_categories=0), []).stats == -1).all()


def test_ground_truth_id_zero_counts_as_unmatched_as_in_pycocotools():
    """COCOeval stores a match as the box's id and tests it against 0: a box with id 0 is taken
    but its detection counts as a false positive. Kept for equal numbers."""
    gt = gt_dict([1], [(1, 1, [0, 0, 50, 50]), (1, 1, [100, 100, 50, 50])], num_categories=1)
    gt["annotations"][0]["id"] = 0
    results = [result(1, 1, [0, 0, 50, 50], 0.9), result(1, 1, [100, 100, 50, 50], 0.8)]
    ours = assert_same_as_pycocotools(gt, results)
    assert ours.stats[8] == pytest.approx(0.5)  # only the id-1 box is recalled


@pytest.mark.parametrize("seed", range(12))
def test_random_worlds_equal_pycocotools(seed):
    """Boxes on a coarse grid (equal IoUs), scores from a few values (ties), crowd boxes, area
    fields near the range edges, many detections per group."""
    rng = np.random.default_rng(seed)
    num_images, num_categories = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    image_ids = rng.choice(np.arange(1, 50), num_images, replace=False).tolist()
    grid = np.array([0, 8, 16, 24, 32, 48, 64, 96])

    def box():
        x, y = rng.choice(grid, 2)
        return [float(x), float(y), float(rng.choice(grid[1:])), float(rng.choice(grid[1:]))]

    annotations = []
    for _ in range(int(rng.integers(0, 25))):
        bbox = box()
        area = float(rng.choice([bbox[2] * bbox[3], 1024.0, 9216.0, 1023.0, 9217.0]))
        annotations.append((int(rng.choice(image_ids)), int(rng.integers(1, num_categories + 1)), bbox, area, int(rng.uniform() < 0.15)))
    gt = gt_dict(image_ids, annotations, num_categories)
    results = [
        result(int(rng.choice(image_ids)), int(rng.integers(1, num_categories + 1)), box(), float(rng.choice([0.2, 0.5, 0.5, 0.9])))
        for _ in range(int(rng.integers(0, 300)))
    ]
    assert_same_as_pycocotools(gt, results)


# ---------------------------------------------------------------------------------------------
# errors and inputs


def test_results_are_not_modified():
    gt = gt_dict([1], [(1, 1, [0, 0, 50, 50])])
    results = [result(1, 1, [0, 0, 50, 50], 0.9)]
    before = copy.deepcopy(results)
    coco_evaluate(gt, results)
    assert results == before


def test_bad_inputs_are_user_errors():
    gt = gt_dict([1], [(1, 1, [0, 0, 50, 50])])
    with pytest.raises(UserError, match="image_id 5 is not an image"):
        coco_evaluate(gt, [result(5, 1, [0, 0, 5, 5], 0.5)])  # pycocotools' loadRes asserts
    with pytest.raises(UserError, match="score"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}])
    with pytest.raises(UserError, match="bbox"):
        coco_evaluate(gt, [result(1, 1, [0, 0, 5], 0.5)])
    twice = copy.deepcopy(gt)
    twice["annotations"].append({**twice["annotations"][0]})
    with pytest.raises(UserError, match="annotation ids repeat"):
        coco_evaluate(twice, [])
