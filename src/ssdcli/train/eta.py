"""Time left in the epoch and in the run, from what :class:`~ssdcli.train.Callbacks` report.

:class:`RunClock` is fed the callbacks' events and answers with estimates in seconds. The epoch's
training part is extrapolated from this epoch's batch rate (the previous epoch's before the
first batch); what an epoch costs beyond its batches (precise BatchNorm, validation,
checkpoints: ``metrics.csv``'s ``epoch_seconds - seconds``) is the mean of the epochs seen so far
(0 before the first one ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown)."""
    if seconds is None:
        return "-:--:--"
    total = max(0, round(seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


class RunClock:
    """Estimates of the time left, per epoch and for the run.

    Args:
        epochs: the run's epochs.
        batches_per_epoch: training batches in each.
        clock: seconds, monotonic (``time.monotonic``; tests pass their own).
    """

    def __init__(self, epochs: int, batches_per_epoch: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.epochs = epochs
        self.batches = max(1, batches_per_epoch)
        self.clock = clock
        self.epoch = 0
        self.batch = 0
        self._first_batch = 0
        self._epoch_start = clock()
        self._batch_seconds: float | None = None  # per batch, the last finished epoch's rate
        self._overheads: list[float] = []

    def epoch_started(self, epoch: int, first_batch: int = 0) -> None:
        """Epoch ``epoch`` (0-based) begins, at batch ``first_batch`` when resumed part-way."""
        self.epoch, self.batch, self._first_batch = epoch, first_batch, first_batch
        self._epoch_start = self.clock()

    def batch_done(self, batch: int) -> None:
        """``batch`` batches of the epoch are done (1-based count)."""
        self.batch = batch

    def epoch_done(self, row: dict) -> None:
        """The epoch's metrics row: its ``seconds`` (training) and ``epoch_seconds`` (everything)."""
        trained = row.get("seconds")
        if trained is not None:
            self._batch_seconds = float(trained) / self.batches
            if row.get("epoch_seconds") is not None:
                self._overheads.append(max(0.0, float(row["epoch_seconds"]) - float(trained)))
        self.epoch, self.batch = self.epoch + 1, 0

    def seconds_per_batch(self) -> float | None:
        """This epoch's training rate so far, else the last epoch's; None before any batch."""
        done = self.batch - self._first_batch
        if done > 0:
            return (self.clock() - self._epoch_start) / done
        return self._batch_seconds

    def overhead(self) -> float:
        """Mean seconds an epoch has cost beyond its training batches (0 until one ended)."""
        return sum(self._overheads) / len(self._overheads) if self._overheads else 0.0

    def epoch_eta(self) -> float | None:
        """Seconds until this epoch ends (its remaining batches, then its end-of-epoch work)."""
        rate = self.seconds_per_batch()
        if rate is None:
            return None
        return (self.batches - self.batch) * rate + self.overhead()

    def run_eta(self) -> float | None:
        """Seconds until the run ends: this epoch, then the remaining ones at the same cost."""
        eta, rate = self.epoch_eta(), self.seconds_per_batch()
        if eta is None or rate is None:
            return None
        later = max(0, self.epochs - self.epoch - 1)
        return eta + later * (self.batches * rate + self.overhead())
