"""RunClock: the time left in an epoch and in the run, from a clock the test drives."""

from __future__ import annotations

import pytest

from ssdcli.train.eta import RunClock, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_of_the_epoch_and_the_run():
    clock = FakeClock()
    eta = RunClock(epochs=3, batches_per_epoch=10, clock=clock)
    eta.epoch_started(0)
    assert eta.epoch_eta() is None and eta.run_eta() is None  # nothing measured yet
    clock.now += 8.0
    eta.batch_done(4)  # 2 s a batch
    assert eta.epoch_eta() == pytest.approx(6 * 2.0)
    assert eta.run_eta() == pytest.approx(6 * 2.0 + 2 * 10 * 2.0)
    clock.now += 12.0
    eta.batch_done(10)
    # the epoch also cost 5 s of BatchNorm statistics, validation and checkpoints
    eta.epoch_done({"seconds": 20.0, "epoch_seconds": 25.0})
    assert eta.run_eta() == pytest.approx(2 * (20.0 + 5.0))  # two epochs like it
    eta.epoch_started(1)
    clock.now += 3.0
    eta.batch_done(1)  # this epoch goes at 3 s a batch
    assert eta.epoch_eta() == pytest.approx(9 * 3.0 + 5.0)
    assert eta.run_eta() == pytest.approx(9 * 3.0 + 5.0 + (10 * 3.0 + 5.0))


def test_a_resumed_epoch_counts_its_rate_from_where_it_started():
    clock = FakeClock()
    eta = RunClock(epochs=1, batches_per_epoch=10, clock=clock)
    eta.epoch_started(0, first_batch=6)
    clock.now += 2.0
    eta.batch_done(7)
    assert eta.epoch_eta() == pytest.approx(3 * 2.0) and eta.run_eta() == pytest.approx(6.0)


def test_format_duration():
    assert format_duration(None) == "-:--:--"
    assert format_duration(0) == "0:00:00" and format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 3600 + 25 * 60 + 7) == "3:25:07"
