"""Precise BatchNorm statistics are the exact batch statistics; validation uses the run's loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssdcli.data.loader import DetectionTrainDataset, pad_targets
from ssdcli.data.reader import load_dataset
from ssdcli.data.transforms import EvalTransform
from ssdcli.loss import MultiBoxLoss
from ssdcli.matching import assign_targets
from ssdcli.models import build_model, priors_for_model
from ssdcli.train.validation import recompute_batchnorm_stats, validate

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def val_set(synth):
    return load_dataset(synth, split="val")


def test_precise_bn_sets_the_exact_mean_and_biased_variance(synth):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    dataset = DetectionTrainDataset(load_dataset(synth, split="train").records, EvalTransform(32, MEAN, STD))
    indices = [4, 0, 2, 5]
    model.eval()  # recompute runs train mode and gives the mode back
    assert recompute_batchnorm_stats(model, dataset, indices, batch_size=2, workers=0, device=torch.device("cpu"))
    assert not model.training
    # Independently: the conv outputs of all four images at once, statistics per channel.
    with torch.no_grad():
        features = model[0](torch.stack([dataset[i][0] for i in indices]))  # (4, 4, 30, 30)
    torch.testing.assert_close(model[1].running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, features.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5,
                               atol=1e-6)


def test_precise_bn_is_a_no_op_without_batchnorm_or_images(synth):
    dataset = DetectionTrainDataset(load_dataset(synth, split="train").records, EvalTransform(32, MEAN, STD))
    cpu = torch.device("cpu")
    assert not recompute_batchnorm_stats(nn.Sequential(nn.Conv2d(3, 4, 3)), dataset, [0, 1], 2, 0, cpu)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert not recompute_batchnorm_stats(model, dataset, [0, 1], batch_size=4, workers=0, device=cpu)
    assert torch.equal(model[1].running_mean, torch.zeros(4)) and torch.equal(model[1].running_var, torch.ones(4))


@pytest.mark.parametrize("neg_pos_ratio", [1.0, 3.0])
def test_validation_loss_is_the_configured_multibox_loss(val_set, neg_pos_ratio):
    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=len(val_set.classes)).eval()
    cpu = torch.device("cpu")
    result = validate(model, val_set, cpu, batch_size=8, workers=0, amp=False, iou_threshold=0.5,
                      neg_pos_ratio=neg_pos_ratio)
    # Independently: the whole validation set as one batch through the same loss.
    dataset = DetectionTrainDataset(val_set.records, EvalTransform(model.image_size, model.mean, model.std))
    items = [dataset[i] for i in range(len(dataset))]
    boxes, labels = pad_targets([target for _, target in items])
    target_labels, target_deltas = assign_targets(boxes, labels, priors_for_model(model), 0.5, variances=model.prior_spec.variances)
    with torch.no_grad():
        cls_logits, box_deltas = model(torch.stack([image for image, _ in items]))
    expected = MultiBoxLoss(neg_pos_ratio)(cls_logits, box_deltas, target_labels, target_deltas).total
    assert result["val_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= result["val_map"] <= 1.0
    other = MultiBoxLoss(4.0 - neg_pos_ratio)(cls_logits, box_deltas, target_labels, target_deltas).total
    assert result["val_loss"] != pytest.approx(other.item(), rel=1e-3)  # the ratio matters here
