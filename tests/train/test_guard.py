"""NonFiniteGuard on its own: the snapshot, the streak of bad steps, the roll-back and its lr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssdcli.train.guard import NonFiniteGuard, weights_finite
from ssdcli.train.setup import TrainState


def _setup(max_bad_steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = TrainState(lr_scale=1.0)
    messages: list[str] = []
    guard = NonFiniteGuard(model, optimizer, state, max_bad_steps, messages.append)
    return model, optimizer, state, guard, messages


def _step(model, optimizer):
    optimizer.zero_grad()
    model(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()


def test_bad_steps_warn_and_a_streak_rolls_back_to_the_snapshot():
    model, optimizer, state, guard, messages = _setup(max_bad_steps=3)
    _step(model, optimizer)
    guard.snapshot()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    good_momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    _step(model, optimizer)  # the weights move on after the snapshot

    guard.bad_step(epoch=0, batch=4, image_names=["a.jpg", "b.jpg"])
    assert messages == ["non-finite loss at epoch 1, batch 5; step skipped (images: a.jpg, b.jpg)"]
    guard.bad_step(0, 5, ["c.jpg"])
    assert state.lr_scale == 1.0 and guard.bad_streak == 2
    guard.bad_step(0, 6, ["d.jpg"])  # the third in a row
    assert guard.bad_streak == 0 and state.lr_scale == pytest.approx(0.1)
    assert messages[-1] == (
        "3 non-finite losses in a row: weights rolled back to the last good state, learning rate now x0.1"
    )
    assert all(torch.equal(model.state_dict()[k], good[k]) for k in good)
    assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"], good_momentum)


def test_a_good_step_ends_the_streak():
    model, optimizer, state, guard, messages = _setup(max_bad_steps=2)
    guard.bad_step(0, 0, ["a.jpg"])
    guard.good_step()
    guard.bad_step(0, 2, ["b.jpg"])
    assert guard.bad_streak == 1 and state.lr_scale == 1.0 and len(messages) == 2  # no roll-back yet


def test_non_finite_weights_roll_back_and_lr_divides_again():
    model, optimizer, state, guard, messages = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard.check_weights()  # finite: nothing happens
    assert messages == [] and state.lr_scale == 1.0
    with torch.no_grad():
        model[1].running_var[0] = float("inf")  # a buffer counts too
    assert not weights_finite(model)
    guard.check_weights()
    assert weights_finite(model) and all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert state.lr_scale == pytest.approx(0.1)
    guard.roll_back()
    assert state.lr_scale == pytest.approx(0.01) and messages[-1].endswith("learning rate now x0.01")
