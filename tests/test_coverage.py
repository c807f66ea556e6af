"""Prior coverage: best IoU of each ground-truth box with the default boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou

from ssdcli.coverage import best_prior_iou, prior_coverage
from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.priors import generate_priors, ssd300_spec, ssdlite320_spec


def record(boxes: list[list[float]], labels: list[int], width: int, height: int, crowd=None) -> ImageRecord:
    n = len(labels)
    iscrowd = np.array(crowd if crowd is not None else [False] * n, bool)
    return ImageRecord(Path("x.jpg"), "x", width, height, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(labels, np.int64), np.zeros(n, bool), iscrowd)


def test_best_prior_iou_matches_torchvision_in_chunks() -> None:
    priors = generate_priors(ssd300_spec())
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(50, 2, 2, generator=generator)
    boxes = torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=1)  # (50, 4) xyxy in [0, 1]
    expected = box_iou(boxes, box_convert(priors, "cxcywh", "xyxy")).amax(dim=1)
    torch.testing.assert_close(best_prior_iou(boxes, priors, chunk=7), expected)
    assert best_prior_iou(torch.zeros(0, 4), priors).shape == (0,)


def test_coverage_pins_exact_and_half_size_boxes() -> None:
    # Layer 0 of SSD300: step 8, min size 30. The prior of cell (18, 18) has centre
    # (18 + 0.5) * 8 = 148 px and side 30 px: xyxy (133, 133, 163, 163) in a 300x300 input.
    exact = [133, 133, 163, 163]
    # A 15 px box on the same centre lies inside that prior: IoU = 15^2 / 30^2 = 0.25, and no
    # prior fits better (the smallest are 30 px squares and, for ar 2, 42x21 px: the same 0.25).
    half = [140.5, 140.5, 155.5, 155.5]
    # In a 600x300 image SSD squeezes x by 2: (266, 133, 326, 163) lands on the same prior.
    stretched = [266, 133, 326, 163]
    dataset = DetectionDataset("voc", Path("d"), ["a", "b"], [
        record([exact, half], [1, 2], 300, 300),
        record([stretched, [0, 0, 600, 300]], [1, 1], 600, 300, crowd=[False, True]),  # crowd left out
    ])
    report = prior_coverage(dataset, ssd300_spec())
    np.testing.assert_allclose(report.best_iou, [1.0, 0.25, 1.0], atol=1e-5)
    assert report.overall.num_boxes == 3
    assert abs(report.overall.share_below - 1 / 3) < 1e-9
    # sizes in original pixels: 900 and 225 px^2 are small, 60 x 30 = 1800 px^2 is medium
    assert [(g.name, g.num_boxes) for g in report.by_size] == [("small", 2), ("medium", 1), ("large", 0)]
    assert report.by_size[2].mean_best_iou is None
    assert [(g.name, g.num_boxes, g.share_below) for g in report.by_class] == [("a", 2, 0.0), ("b", 1, 1.0)]
    payload = report.to_json()
    assert payload["num_priors"] == 8732 and payload["by_class"][1]["share_below_threshold"] == 1.0


def test_coverage_of_an_empty_dataset() -> None:
    report = prior_coverage(DetectionDataset("voc", Path("d"), ["a"], [record([], [], 10, 10)]), ssd300_spec())
    assert report.overall.num_boxes == 0 and report.overall.share_below is None


def test_nearest_centre_shape_iou_pins_a_hand_computed_case() -> None:
    from ssdcli.coverage import grid_offsets, shape_iou

    spec = ssd300_spec()
    # A 30 px square centred at (150, 151) px: layer 0 centres are at 4 + 8 j px, so the nearest
    # is (148, 148) or (156, ...): |dx| = 2, |dy| = 3 px. With a 30 px prior the overlap is
    # 28 x 27 = 756, the union 900 + 900 - 756 = 1044: IoU 0.72414.
    box = torch.tensor([[150, 151, 30, 30]], dtype=torch.float64) / 300
    offsets = grid_offsets(box, spec, spec.layers[0])
    torch.testing.assert_close(offsets * 300, torch.tensor([[2.0, 3.0]], dtype=torch.float64))
    iou = shape_iou(box[:, 2:], offsets, torch.tensor([[30.0, 30.0], [60.0, 15.0]], dtype=torch.float64) / 300)
    # the 60 x 15 prior at (148, 148) spans x 118..178, y 140.5..155.5; the box x 135..165, y 136..166:
    # overlap 30 x 15 = 450, union 900 + 900 - 450 = 1350
    torch.testing.assert_close(iou, torch.tensor([[756 / 1044, 450 / 1350]], dtype=torch.float64))
    # the last layer has a single centre (150, 150): the offset is the distance to it
    torch.testing.assert_close(grid_offsets(box, spec, spec.layers[5]) * 300, torch.tensor([[0.0, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("make_spec", [ssd300_spec, ssdlite320_spec])
def test_nearest_centre_iou_equals_the_best_over_all_priors_of_each_shape(make_spec) -> None:
    from ssdcli.coverage import grid_offsets, shape_iou
    from ssdcli.priors import generate_layer_priors, layer_box_sizes

    spec = make_spec()
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(200, 2, 2, generator=generator)
    boxes_xyxy = torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=1)  # (200, 4) in [0, 1]
    boxes_cxcywh = box_convert(boxes_xyxy, "xyxy", "cxcywh")
    for layer in spec.layers:
        priors = generate_layer_priors(spec, layer).reshape(layer.feature_map**2, layer.boxes_per_location, 4)
        shapes = torch.tensor(layer_box_sizes(layer)) / spec.image_size  # (A, 2)
        fast = shape_iou(boxes_cxcywh[:, 2:], grid_offsets(boxes_cxcywh, spec, layer), shapes)  # (200, A)
        for a in range(layer.boxes_per_location):
            exact = box_iou(boxes_xyxy, box_convert(priors[:, a], "cxcywh", "xyxy")).amax(dim=1)
            torch.testing.assert_close(fast[:, a], exact, atol=1e-5, rtol=0)
