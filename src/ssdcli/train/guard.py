"""The NaN guard: a non-finite loss skips its step; a run of them rolls the weights back.

A non-finite loss (NaN or inf, e.g. from a too-high learning rate or a degenerate batch) skips its
optimizer step with a warning naming the batch's images. ``max_bad_steps`` of them in a row, or
non-finite weights at the end of an epoch, put back the weights and optimizer state of the last
good epoch end and divide the learning rate by 10 (``TrainState.lr_scale``, saved in ``last.pt``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ssdcli.train.state import TrainState


def weights_finite(model: nn.Module) -> bool:
    """Whether every floating tensor of ``model``'s state dict (buffers included) is finite."""
    return all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


class NonFiniteGuard:
    """Snapshot of the last good state, the streak of bad steps, and the roll-back.

    Args:
        model: the network itself (not its DDP wrapper).
        optimizer: its optimizer.
        state: the run's position; :meth:`roll_back` divides its ``lr_scale`` by 10.
        max_bad_steps: bad steps in a row that trigger a roll-back.
        warn: where the messages go (``Callbacks.on_warning``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        max_bad_steps: int,
        warn: Callable[[str], None],
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.state = state
        self.max_bad_steps = max_bad_steps
        self.warn = warn
        self.bad_streak = 0
        self.snapshot()

    def snapshot(self) -> None:
        """Remember the current weights and optimizer state as the last good ones."""
        self._good = {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def good_step(self) -> None:
        """A finite step was taken: the streak ends."""
        self.bad_streak = 0

    def bad_step(self, epoch: int, batch: int, image_names: Sequence[str]) -> None:
        """Record the skipped step of (0-based) ``epoch`` and ``batch``; roll back on a streak."""
        self.bad_streak += 1
        self.warn(
            f"non-finite loss at epoch {epoch + 1}, batch {batch + 1}; step skipped "
            f"(images: {', '.join(image_names)})"
        )
        if self.bad_streak >= self.max_bad_steps:
            self.roll_back()

    def roll_back(self) -> None:
        """Back to the snapshot, with a tenth of the learning rate."""
        self.model.load_state_dict(self._good["model"])
        self.optimizer.load_state_dict(self._good["optimizer"])
        self.state.lr_scale *= 0.1
        self.bad_streak = 0
        self.warn(
            f"{self.max_bad_steps} non-finite losses in a row: weights rolled back to the last good state, "
            f"learning rate now x{self.state.lr_scale:g}"
        )

    def check_weights(self) -> None:
        """Roll back if the weights themselves are no longer finite (end of an epoch)."""
        if not weights_finite(self.model):
            self.roll_back()
