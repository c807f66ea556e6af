"""One training step: micro-batches add up to the whole batch."""

from __future__ import annotations

import pytest
import torch

from ssdcli.loss import MultiBoxLoss
from ssdcli.matching import assign_targets
from ssdcli.models import build_model, micro_batch_size, priors_for_model
from ssdcli.train.epoch import forward_backward


@pytest.mark.slow
def test_micro_batches_give_the_loss_and_gradients_of_the_whole_batch():
    """CPU training of a BatchNorm-free network may go a few images at a time
    (ssdcli.train.micro_batch); the slices' losses, divided by the batch's number of positives,
    must add up to the batch's."""
    torch.manual_seed(0)
    model = build_model("ssd300", num_classes=3)
    images = torch.randn(2, 3, 300, 300)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.6, 0.2, 0.9, 0.5]], [[0.3, 0.3, 0.7, 0.9], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, 3], [2, 0]])  # image 2 has one box (the second row is padding)
    target_labels, target_deltas = assign_targets(boxes, labels, priors_for_model(model), variances=model.prior_spec.variances)
    loss_fn = MultiBoxLoss()

    whole = forward_backward(model, images, target_labels, target_deltas, loss_fn)
    whole_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sliced = forward_backward(model, images, target_labels, target_deltas, loss_fn, micro_batch=1)
    for a, b in zip(sliced[:3], whole[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sliced.num_positives == whole.num_positives == (target_labels > 0).sum()
    for p, expected in zip(model.parameters(), whole_grads):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)

    assert micro_batch_size(model, torch.device("cpu")) == 1
    assert micro_batch_size(build_model("ssdlite320", num_classes=3), torch.device("cpu")) is None  # BatchNorm
    assert micro_batch_size(model, torch.device("cuda")) is None  # GPUs take whole batches
