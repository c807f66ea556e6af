import torch

from ssdcli.boxes import box_iou_xyxy, cxcywh_to_xyxy, xyxy_to_cxcywh
from ssdcli.codec import decode
from ssdcli.matching import assign_targets, match
from ssdcli.priors import generate_priors, ssd300_spec

CAFFE = (0.1, 0.2)  # Caffe's prior_variance: centre, size

# Five default boxes, written as corners: the four quadrants and a centred half-size box.
PRIORS_XYXY = torch.tensor(
    [
        [0.0, 0.0, 0.5, 0.5],  # p0 top-left quadrant
        [0.5, 0.0, 1.0, 0.5],  # p1 top-right
        [0.0, 0.5, 0.5, 1.0],  # p2 bottom-left
        [0.5, 0.5, 1.0, 1.0],  # p3 bottom-right
        [0.25, 0.25, 0.75, 0.75],  # p4 centre
    ]
)
PRIORS = xyxy_to_cxcywh(PRIORS_XYXY)


def test_threshold_and_best_gt_on_a_literal_iou_matrix():
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.9]]])
    labels = torch.tensor([[3, 7]])
    # IoU matrix (rows gt, columns p0..p4):
    # gt0 = p0 exactly: [1, 0, 0, 0, 0.0625 / 0.4375 = 1/7]
    # gt1 (area 0.5 * 0.4 = 0.2) vs p3 (0.25): inter 0.5 * 0.4 = 0.2 -> 0.2 / 0.25 = 0.8;
    #     vs p4: inter 0.25 * 0.25 = 0.0625 -> 0.0625 / (0.2 + 0.25 - 0.0625) = 0.16129
    iou = box_iou_xyxy(gt[0], PRIORS_XYXY)
    expected_iou = torch.tensor([[1, 0, 0, 0, 1 / 7], [0, 0, 0, 0.8, 0.0625 / 0.3875]])
    assert torch.allclose(iou, expected_iou, atol=1e-6)
    got_labels, gt_index = match(gt, labels, PRIORS)
    # p0 -> gt0 (class 3), p3 -> gt1 (class 7); p4's best IoU 0.161 < 0.5 -> background
    assert got_labels.tolist() == [[3, 0, 0, 7, 0]]
    assert gt_index[0, 0].item() == 0 and gt_index[0, 3].item() == 1


def test_best_prior_forcing_gives_every_object_a_positive():
    # A small box in the middle: IoU with p4 = 0.04 / 0.25 = 0.16, with p0..p3 0.01 / 0.28 = 0.036
    gt = torch.tensor([[[0.4, 0.4, 0.6, 0.6]]])
    labels, gt_index = match(gt, torch.tensor([[2]]), PRIORS)
    # 0.16 < 0.5 but p4 is its best prior, so p4 is forced positive
    assert labels.tolist() == [[0, 0, 0, 0, 2]]


def test_forcing_overrides_a_better_threshold_match_and_collisions_are_deterministic():
    gt = torch.tensor(
        [
            [
                [0.0, 0.0, 0.5, 0.5],  # gt0: IoU 1 with p0
                [0.0, 0.0, 0.5, 0.45],  # gt1: IoU 0.9 with p0, best prior also p0
            ]
        ]
    )
    labels, gt_index = match(gt, torch.tensor([[1, 2]]), PRIORS)
    # both gts force p0; the larger index (gt1, class 2) wins, as in the reference loop
    assert labels.tolist() == [[2, 0, 0, 0, 0]]
    assert gt_index[0, 0].item() == 1


def test_no_objects_give_all_background():
    gt = torch.zeros(2, 3, 4)
    labels, deltas = assign_targets(gt, torch.zeros(2, 3, dtype=torch.long), PRIORS, variances=CAFFE)
    assert labels.eq(0).all() and deltas.eq(0).all()
    labels, deltas = assign_targets(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), PRIORS, variances=CAFFE)
    assert labels.shape == (2, 5) and labels.eq(0).all() and deltas.shape == (2, 5, 4)


def test_zero_area_box_is_ignored_not_forced():
    gt = torch.tensor([[[0.3, 0.3, 0.3, 0.5]]])  # zero width
    labels, _ = match(gt, torch.tensor([[4]]), PRIORS)
    assert labels.eq(0).all()


def reference_match(gt_xyxy, gt_labels, priors_cxcywh, threshold=0.5):
    """Per-image loop in the style of the reference implementations (ssd.pytorch match())."""
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)
    out = []
    for boxes, labels in zip(gt_xyxy, gt_labels):
        keep = labels > 0
        boxes, labels = boxes[keep], labels[keep]
        result = torch.zeros(priors_cxcywh.shape[0], dtype=torch.long)
        if len(boxes) == 0:
            out.append(result)
            continue
        iou = box_iou_xyxy(boxes, priors_xyxy)
        best_truth_iou, best_truth_idx = iou.max(0)
        best_prior_idx = iou.argmax(1)
        for j in range(len(boxes)):
            best_truth_idx[best_prior_idx[j]] = j
            best_truth_iou[best_prior_idx[j]] = 2.0
        result = labels[best_truth_idx].clone()
        result[best_truth_iou < threshold] = 0
        out.append(result)
    return torch.stack(out)


def test_batched_equals_per_image_reference_on_real_priors():
    priors = generate_priors(ssd300_spec())
    g = torch.Generator().manual_seed(3)
    batch, max_gt = 4, 6
    xy = torch.rand(batch, max_gt, 2, generator=g) * 0.7
    wh = 0.05 + torch.rand(batch, max_gt, 2, generator=g) * 0.3
    gt = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=-1)
    labels = torch.randint(1, 21, (batch, max_gt), generator=g)
    labels[1, 3:] = 0  # image 1 has 3 objects (padding after)
    labels[2] = 0  # image 2 has none
    got, _ = match(gt, labels, priors)
    assert torch.equal(got, reference_match(gt, labels, priors))
    assert (got[0] > 0).sum() >= max_gt  # every object got at least its forced prior


def test_assigned_deltas_decode_to_the_matched_boxes():
    priors = generate_priors(ssd300_spec())
    gt = torch.tensor([[[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 0.9, 0.8]]])
    labels, deltas = assign_targets(gt, torch.tensor([[1, 2]]), priors, variances=CAFFE)
    positive = labels[0] > 0
    decoded = cxcywh_to_xyxy(decode(deltas[0][positive], priors[positive], CAFFE))
    _, gt_index = match(gt, torch.tensor([[1, 2]]), priors)
    assert torch.allclose(decoded, gt[0][gt_index[0][positive]], atol=1e-5)
    assert torch.isfinite(deltas).all() and deltas[0][~positive].eq(0).all()
