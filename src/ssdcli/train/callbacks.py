"""How training reports progress: :class:`Callbacks`, which the CLI implements to draw it."""

from __future__ import annotations


class Callbacks:
    """Hooks the CLI implements to show progress; every method is optional (no-op here).

    Epochs and batches are 0-based in ``epoch`` and counted (1-based) in ``batch``; ``info`` and
    ``row`` are plain dicts (:meth:`ssdcli.train.setup.TrainRun.start_info`, the metrics row).
    At an epoch's end, precise BatchNorm statistics (``on_precise_bn_*``, before validation and
    the last checkpoint) come before validation (``on_validation_*``).
    """

    def on_start(self, info: dict) -> None: ...

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None: ...

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None: ...

    def on_precise_bn_start(self, epoch: int, num_batches: int) -> None: ...

    def on_precise_bn_batch(self, epoch: int, batch: int) -> None: ...

    def on_validation_start(self, epoch: int, num_batches: int) -> None: ...

    def on_validation_batch(self, epoch: int, batch: int) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None: ...

    def on_warning(self, message: str) -> None: ...

    def on_note(self, message: str) -> None:
        """A line on how the run is set up, not a problem (e.g. timing the CPU's training passes)."""

    def on_download(self, done: int, total: int | None) -> None:
        """Bytes of the ImageNet backbone weights downloaded so far (``total`` None: unknown)."""
