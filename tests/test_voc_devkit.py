"""VOC metrics against an independent port of the PASCAL devkit's evaluation on real data.

The reference below reads the XML files itself (1-based inclusive corners, no clipping, nothing
dropped) and scores with the devkit's loop (VOCevaldet.m, as ported in py-faster-rcnn's
``voc_eval.py``): detections in descending score order each take the ground-truth box of their
class with the highest "+1" IoU; ``ovmax > 0.5``, a difficult box is neither TP nor FP, a box
already taken makes a false positive. It shares no code with ssdcli.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from ssdcli.data.reader import load_dataset
from ssdcli.evaluation import evaluate


def devkit_ground_truth(annotations: Path, ids: list[str]) -> dict[str, list[dict]]:
    """``{image id: [{"name", "bbox" (1-based inclusive ints), "difficult"}]}`` as voc_eval's parse_rec."""
    objects = {}
    for image_id in ids:
        root = ElementTree.parse(annotations / f"{image_id}.xml").getroot()
        objects[image_id] = [
            {
                "name": obj.find("name").text.strip(),
                "difficult": int(obj.find("difficult").text) if obj.find("difficult") is not None else 0,
                "bbox": [int(float(obj.find(f"bndbox/{tag}").text)) for tag in ("xmin", "ymin", "xmax", "ymax")],
            }
            for obj in root.findall("object")
        ]
    return objects


def devkit_ap(ground_truth: dict[str, list[dict]], detections: list[tuple[str, float, list[float]]], name: str):
    """``(voc07 11-point AP, all-point AP)`` of class ``name``; detections ``(image id, score,
    [xmin, ymin, xmax, ymax] 1-based inclusive)``."""
    records, npos = {}, 0
    for image_id, objects in ground_truth.items():
        mine = [o for o in objects if o["name"] == name]
        difficult = np.array([o["difficult"] for o in mine], bool)
        records[image_id] = {"bbox": np.array([o["bbox"] for o in mine], float).reshape(-1, 4),
                             "difficult": difficult, "det": [False] * len(mine)}
        npos += int((~difficult).sum())
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])  # stable, as MATLAB's sort
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, i in enumerate(order):
        image_id, _, bb = detections[i]
        record = records[image_id]
        ovmax, jmax = -np.inf, -1
        gt = record["bbox"]
        if gt.size:
            ixmin, iymin = np.maximum(gt[:, 0], bb[0]), np.maximum(gt[:, 1], bb[1])
            ixmax, iymax = np.minimum(gt[:, 2], bb[2]), np.minimum(gt[:, 3], bb[3])
            iw, ih = np.maximum(ixmax - ixmin + 1.0, 0.0), np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
        if ovmax > 0.5:
            if not record["difficult"][jmax]:
                if not record["det"][jmax]:
                    tp[d], record["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    voc07 = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        voc07 += (np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0.0) / 11.0
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return voc07, float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def jittered_detections(ground_truth: dict[str, list[dict]], names: list[str], seed: int):
    """Per ground-truth box: none, one or two integer-jittered copies (some exact), plus false
    positives; each ``(image id, class, score, [xmin, ymin, xmax, ymax] 1-based inclusive)``."""
    rng = np.random.default_rng(seed)
    out = []
    for image_id, objects in ground_truth.items():
        for obj in objects:
            for _ in range(rng.choice([0, 1, 1, 2])):
                jitter = rng.integers(-6, 7, 4) if rng.uniform() < 0.8 else np.zeros(4, int)
                box = np.array(obj["bbox"]) + jitter
                box[2:] = np.maximum(box[2:], box[:2])  # keep xmax >= xmin (a 1-px box stays valid)
                out.append((image_id, obj["name"], float(rng.uniform()), box.tolist()))
        for _ in range(2):
            x, y = rng.integers(1, 560), rng.integers(1, 400)
            out.append((image_id, str(rng.choice(names)), float(rng.uniform(0, 0.5)),
                        [int(x), int(y), int(x + rng.integers(5, 80)), int(y + rng.integers(5, 80))]))
    return out


@pytest.mark.slow
def test_bccd_per_class_ap_equals_the_devkit(shared_data: Path) -> None:
    """BCCD has two 1-px boxes (xmin == xmax, ymin == ymax: BloodImage_00338 and 00343); under
    the devkit's +1 rule they are boxes of width 1, counted in recall and matchable."""
    root = shared_data / "bccd" / "BCCD"
    dataset = load_dataset(root, check_images=False)
    ids = [record.image_id for record in dataset.records]
    assert len(ids) == 364
    ground_truth = devkit_ground_truth(root / "Annotations", ids)
    raw = jittered_detections(ground_truth, dataset.classes, seed=0)
    # the 1-px box of BloodImage_00338, detected exactly: a true positive for the devkit
    raw.append(("BloodImage_00338", "RBC", 0.999, [504, 337, 504, 337]))
    detections = [
        {"image_id": image_id, "category_id": dataset.classes.index(name) + 1,
         # 1-based inclusive -> continuous 0-based: x = xmin - 1, w = xmax - xmin + 1
         "bbox": [box[0] - 1, box[1] - 1, box[2] - box[0] + 1, box[3] - box[1] + 1], "score": score}
        for image_id, name, score, box in raw
    ]
    result = evaluate(dataset, detections, ["voc07", "voc12"])
    for c in result.classes:
        mine = [(image_id, score, box) for image_id, name, score, box in raw if name == c.name]
        voc07, voc12 = devkit_ap(ground_truth, mine, c.name)
        assert c.voc07_ap == pytest.approx(voc07, abs=1e-12), c.name
        assert c.voc12_ap == pytest.approx(voc12, abs=1e-12), c.name
    assert result.classes[dataset.classes.index("RBC")].num_gt == 4155  # SOURCES.md: every RBC box counts
