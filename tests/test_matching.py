import torch

from ssdcli.boxes import batched_box_iou_xyxy, box_iou_xyxy, cxcywh_to_xyxy, xyxy_to_cxcywh
from ssdcli.codec import decode
from ssdcli.matching import MIN_OVERLAP, assign_targets, bipartite_match, match
from ssdcli.priors import LayerPriors, PriorSpec, generate_priors, ssd300_spec

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


def test_two_objects_sharing_a_best_prior_both_get_a_distinct_positive():
    gt = torch.tensor(
        [
            [
                [0.0, 0.0, 0.5, 0.5],  # gt0: IoU 1 with p0
                [0.0, 0.0, 0.5, 0.45],  # gt1: IoU 0.9 with p0 too; with p4: inter 0.25 * 0.2 = 0.05,
                # union 0.225 + 0.25 - 0.05 = 0.425 -> 0.1176; with p1, p2, p3: 0 (they only touch)
            ]
        ]
    )
    labels, gt_index = match(gt, torch.tensor([[1, 2]]), PRIORS)
    # Bipartite (Caffe MatchBBox): the best pair (gt0, p0) = 1 first; gt1 then takes its best free
    # prior p4, although 0.1176 < 0.5. The old rule gave p0 to gt1 and left gt0 with no positive.
    assert labels.tolist() == [[1, 0, 0, 0, 2]]
    assert gt_index[0, 0].item() == 0 and gt_index[0, 4].item() == 1


def test_a_matched_prior_overrides_a_better_threshold_match():
    gt = torch.tensor(
        [
            [
                [0.0, 0.0, 0.5, 0.5],  # gt0 = p0
                [0.0, 0.0, 0.5, 0.4],  # gt1: IoU 0.8 with p0 (taken by gt0), 0.05/0.45 with p4
                [0.25, 0.25, 0.75, 0.7],  # gt2: IoU 0.9 with p4 (its own best prior)
            ]
        ]
    )
    labels, gt_index = match(gt, torch.tensor([[1, 2, 3]]), PRIORS)
    # gt0 -> p0 (1.0), gt2 -> p4 (0.9); gt1 then overlaps no free prior (p1..p3 only touch it),
    # so it has no positive: Caffe stops when no remaining pair overlaps.
    assert labels.tolist() == [[1, 0, 0, 0, 3]]
    assert gt_index[0].tolist()[0] == 0 and gt_index[0].tolist()[4] == 2


def test_bipartite_match_on_a_literal_iou_matrix():
    iou = torch.tensor(
        [
            [
                # p0    p1    p2    p3
                [0.60, 0.50, 0.00, 0.10],  # g0: best p0, shared with g1
                [0.70, 0.00, 0.40, 0.00],  # g1: best p0
                [0.00, 0.55, 0.30, 0.00],  # g2: best p1
                [-1.0, -1.0, -1.0, -1.0],  # padding
            ],
            [
                [0.50, 0.20, 0.00, 0.00],  # tie at p0 with g1: the lower object index wins
                [0.50, 0.30, 0.00, 0.00],
                [0.00, 0.00, 0.00, 0.00],  # overlaps nothing: no prior
                [0.00, 0.00, 0.40, 0.40],  # tie between p2 and p3: the lower prior wins
            ],
            [
                [0.20, 0.90, 0.00, 0.00],  # no two objects share a best prior: each takes its own
                [0.80, 0.85, 0.00, 0.00],
                [-1.0, -1.0, -1.0, -1.0],
                [-1.0, -1.0, -1.0, -1.0],
            ],
        ]
    )
    # image 0: (g1, p0) 0.70 first; then (g2, p1) 0.55; g0's best free prior is then p3 (0.10).
    # image 1: (p0, g0) 0.50 before (p0, g1); then g3 -> p2 (0.40, lower prior), then g1 -> p1 (0.30).
    # image 2: g0 -> p1 (0.90), g1 -> p0 (0.80): its best p1 is taken.
    assert bipartite_match(iou).tolist() == [[3, 0, 1, -1], [0, 1, -1, 2], [1, 0, -1, -1]]


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


def reference_match(iou, gt_labels, threshold=0.5):
    """Caffe's MatchBBox (bbox_util.cpp, PER_PREDICTION), one image and one pair at a time, on
    the given IoU (B, G, P): ``(labels, gt_index)`` as :func:`match` returns them."""
    batch, num_gt, num_priors = iou.shape
    labels = torch.zeros(batch, num_priors, dtype=torch.long)
    gt_index = torch.zeros(batch, num_priors, dtype=torch.long)
    for b in range(batch):
        gts = [j for j in range(num_gt) if gt_labels[b, j] > 0]
        by_prior = iou[b].T.tolist()  # (P, G) python floats
        overlaps = {i: {j: row[j] for j in gts if row[j] > MIN_OVERLAP} for i, row in enumerate(by_prior)}
        match_of = [-1] * num_priors
        pool = list(gts)
        while pool:
            best, best_i, best_j = -1.0, -1, -1
            for i in range(num_priors):
                if match_of[i] != -1:
                    continue
                for j in pool:
                    if j in overlaps[i] and overlaps[i][j] > best:
                        best, best_i, best_j = overlaps[i][j], i, j
            if best_i == -1:
                break
            match_of[best_i] = best_j
            pool.remove(best_j)
        for i in range(num_priors):
            if match_of[i] != -1:
                continue
            best = -1.0
            for j in gts:
                if j in overlaps[i] and overlaps[i][j] >= threshold and overlaps[i][j] > best:
                    best, match_of[i] = overlaps[i][j], j
        for i, j in enumerate(match_of):
            if j != -1:
                labels[b, i], gt_index[b, i] = gt_labels[b, j], j
    return labels, gt_index


def test_batched_equals_caffe_reference_loop_on_crowded_images():
    """Random images with exact and near duplicates (objects sharing their best default box, and
    exact IoU ties), padding in the middle and at the end; small priors keep the loop short."""
    g = torch.Generator().manual_seed(3)
    layers = (LayerPriors(4, 16, 16, 32, (2.0,)), LayerPriors(2, 32, 32, 64, (2.0,)))
    priors = generate_priors(PriorSpec("small", 64, layers))  # 4*4*4 + 2*2*4 = 80 default boxes
    batch, max_gt = 16, 8
    xy = torch.rand(batch, max_gt, 2, generator=g) * 0.7
    wh = 0.05 + torch.rand(batch, max_gt, 2, generator=g) * 0.3
    gt = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=-1)
    gt[:, 1] = gt[:, 0]  # an exact duplicate: equal IoU everywhere
    gt[:, 2] = gt[:, 0] + 0.01 * torch.rand(batch, 1, 4, generator=g).squeeze(1)  # a near duplicate
    labels = torch.randint(1, 21, (batch, max_gt), generator=g)
    labels[1, 5:] = 0  # padding at the end
    labels[3, 3] = 0  # padding in the middle
    labels[2] = 0  # an image without objects
    got_labels, got_index = match(gt, labels, priors)
    iou = batched_box_iou_xyxy(gt, cxcywh_to_xyxy(priors))
    want_labels, want_index = reference_match(iou, labels)
    assert torch.equal(got_labels, want_labels)
    assert torch.equal(torch.where(got_labels > 0, got_index, 0), torch.where(want_labels > 0, want_index, 0))
    # every object got a positive of its own (the old rule left one of each duplicate pair without)
    for b in range(batch):
        for j in range(max_gt):
            if labels[b, j] > 0:
                assert ((got_index[b] == j) & (got_labels[b] > 0)).any(), (b, j)


def test_batched_equals_caffe_reference_on_real_priors():
    priors = generate_priors(ssd300_spec())
    g = torch.Generator().manual_seed(3)
    batch, max_gt = 3, 5
    xy = torch.rand(batch, max_gt, 2, generator=g) * 0.7
    wh = 0.05 + torch.rand(batch, max_gt, 2, generator=g) * 0.3
    gt = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=-1)
    gt[0, 1] = gt[0, 0]  # image 0: two objects share their best default box
    labels = torch.randint(1, 21, (batch, max_gt), generator=g)
    labels[1, 3:] = 0  # image 1 has 3 objects (padding after)
    got, _ = match(gt, labels, priors)
    want, _ = reference_match(batched_box_iou_xyxy(gt, cxcywh_to_xyxy(priors)), labels)
    assert torch.equal(got, want)
    assert (got[0] > 0).sum() >= max_gt  # every object got at least its own default box


def test_assigned_deltas_decode_to_the_matched_boxes():
    priors = generate_priors(ssd300_spec())
    gt = torch.tensor([[[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 0.9, 0.8]]])
    labels, deltas = assign_targets(gt, torch.tensor([[1, 2]]), priors, variances=CAFFE)
    positive = labels[0] > 0
    decoded = cxcywh_to_xyxy(decode(deltas[0][positive], priors[positive], CAFFE))
    _, gt_index = match(gt, torch.tensor([[1, 2]]), priors)
    assert torch.allclose(decoded, gt[0][gt_index[0][positive]], atol=1e-5)
    assert torch.isfinite(deltas).all() and deltas[0][~positive].eq(0).all()
