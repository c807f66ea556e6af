import pytest
import torch
import torch.nn.functional as F

from ssdcli.loss import MultiBoxLoss, hard_negative_mask


def reference_multibox_loss(cls_logits, box_deltas, labels, target_deltas, ratio=3):
    """The seed paper's algorithm, one image at a time: smooth L1 over positives, cross-entropy
    over positives plus the ratio * n_pos highest-loss negatives, divided by the total N."""
    total_conf, total_loc, total_pos = 0.0, 0.0, 0
    for logits, deltas, lab, tgt in zip(cls_logits, box_deltas, labels, target_deltas):
        pos = lab > 0
        n_pos = int(pos.sum())
        total_pos += n_pos
        total_loc += F.smooth_l1_loss(deltas[pos], tgt[pos], reduction="sum").item()
        ce = F.cross_entropy(logits, lab, reduction="none")
        neg_losses = sorted(ce[~pos].tolist(), reverse=True)
        n_neg = min(ratio * n_pos, len(neg_losses))
        total_conf += ce[pos].sum().item() + sum(neg_losses[:n_neg])
    n = max(1, total_pos)
    return total_conf / n, total_loc / n


def make_batch(seed, batch=3, priors=500, classes=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, priors, classes + 1, generator=g)
    deltas = torch.randn(batch, priors, 4, generator=g)
    labels = torch.zeros(batch, priors, dtype=torch.long)
    labels[0, torch.randperm(priors, generator=g)[:20]] = torch.randint(1, classes + 1, (20,), generator=g)
    labels[1, torch.randperm(priors, generator=g)[:3]] = torch.randint(1, classes + 1, (3,), generator=g)
    # image 2 has no objects
    target = torch.randn(batch, priors, 4, generator=g)
    return logits, deltas, labels, target


def test_matches_per_image_reference():
    logits, deltas, labels, target = make_batch(0)
    out = MultiBoxLoss()(logits, deltas, labels, target)
    conf, loc = reference_multibox_loss(logits, deltas, labels, target)
    assert out.conf.item() == pytest.approx(conf, rel=1e-5)
    assert out.loc.item() == pytest.approx(loc, rel=1e-5)
    assert out.total.item() == pytest.approx(conf + loc, rel=1e-5)
    assert out.num_positives.item() == 23


def test_hard_negatives_are_exactly_three_times_positives():
    logits, _, labels, _ = make_batch(1)
    ce = F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), reduction="none").view_as(labels)
    neg = hard_negative_mask(ce, labels > 0, 3)
    assert neg.sum(1).tolist() == [60, 9, 0]  # 3 x (20, 3, 0)
    assert not (neg & (labels > 0)).any()
    # the chosen negatives are the highest-loss ones of their image
    for b in range(2):
        chosen = ce[b][neg[b]]
        rest = ce[b][~neg[b] & (labels[b] == 0)]
        assert chosen.min() >= rest.max()


def test_negatives_capped_by_what_exists():
    labels = torch.zeros(1, 10, dtype=torch.long)
    labels[0, :4] = 1  # 4 positives want 12 negatives, only 6 exist
    neg = hard_negative_mask(torch.rand(1, 10), labels > 0, 3)
    assert neg.sum().item() == 6


def test_no_objects_anywhere_gives_zero_not_nan_and_backpropagates():
    logits = torch.randn(2, 100, 4, requires_grad=True)
    deltas = torch.randn(2, 100, 4, requires_grad=True)
    out = MultiBoxLoss()(logits, deltas, torch.zeros(2, 100, dtype=torch.long), torch.zeros(2, 100, 4))
    assert out.total.item() == 0.0 and torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


def test_alpha_weights_the_localisation_term():
    logits, deltas, labels, target = make_batch(2)
    plain = MultiBoxLoss(alpha=1.0)(logits, deltas, labels, target)
    double = MultiBoxLoss(alpha=2.0)(logits, deltas, labels, target)
    assert double.total.item() == pytest.approx(plain.conf.item() + 2 * plain.loc.item(), rel=1e-5)


def test_gradients_flow_to_both_heads():
    logits, deltas, labels, target = make_batch(4)
    logits.requires_grad_(True)
    deltas.requires_grad_(True)
    MultiBoxLoss()(logits, deltas, labels, target).total.backward()
    assert logits.grad.abs().sum() > 0 and deltas.grad.abs().sum() > 0
    # background default boxes never receive a localisation gradient
    assert deltas.grad[labels == 0].abs().sum() == 0


def test_negative_ratio_is_validated():
    with pytest.raises(ValueError):
        MultiBoxLoss(neg_pos_ratio=-1)
