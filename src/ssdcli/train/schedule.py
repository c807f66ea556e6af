"""Learning-rate schedules as a factor of the base rate, per iteration.

Linear warm-up (Goyal et al., 2017) then either the paper's step decay (x0.1 at 2/3 and 5/6 of
the run; SSD sec. 3 trains VOC for 40k + 10k + 10k iterations) or cosine decay to zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WARMUP_START = 1.0 / 3.0
"""Factor at iteration 0 of the warm-up (torchvision's detection references use 1/3 too)."""


def lr_factor(
    iteration: int,
    total_iters: int,
    warmup_iters: int,
    schedule: str = "multistep",
    milestones: Sequence[float] = (2 / 3, 5 / 6),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total_iters``.

    Args:
        warmup_iters: iterations of linear warm-up from ``WARMUP_START`` to 1 (capped at the run).
        schedule: ``multistep`` (x``gamma`` at each milestone) or ``cosine``.
        milestones: fractions of ``total_iters`` where the step schedule decays.
    """
    total_iters = max(1, total_iters)
    warmup_iters = min(warmup_iters, total_iters)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warm = WARMUP_START * (1 - alpha) + alpha
    else:
        warm = 1.0
    if schedule == "multistep":
        steps = sum(1 for m in milestones if iteration >= round(m * total_iters))
        return warm * gamma**steps
    if schedule == "cosine":
        progress = min(1.0, iteration / total_iters)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; use multistep or cosine")
