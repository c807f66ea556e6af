"""Learning-rate schedules as a factor of the base rate, per iteration.

Linear warm-up (Goyal et al., 2017) then either the paper's step decay (x0.1 at 2/3 and 5/6 of
the run; SSD sec. 3 trains VOC for 40k + 10k + 10k iterations) or cosine decay to zero.

A :class:`SchedulePlan` says where the decay runs; a fresh run's plan spans iterations
``0 .. total``. ``ssd train --resume last.pt --epochs N`` re-plans (:meth:`SchedulePlan.extended`):
the rest of the plan is stretched linearly in time over the new remaining iterations, so the
learning rate goes on from the value it has (README "Extending a run" says why); a cosine plan
that already reached zero restarts instead (warm-up, then a new cosine over the added iterations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WARMUP_START = 1.0 / 3.0
"""Factor at iteration 0 of the warm-up (torchvision's detection references use 1/3 too)."""


@dataclass(frozen=True)
class SchedulePlan:
    """Where the schedule of a run stands, as plain numbers (saved in ``last.pt``).

    Attributes:
        total_iters: the iteration the decay ends at (the run's last iteration + 1).
        start_iter: where this plan takes over (0 for a fresh run, the resume point after a
            re-plan); it is defined for iterations from here on.
        start_progress: the decay's progress at ``start_iter``, in [0, 1] (cosine: its argument
            over pi); it grows linearly to 1 at ``total_iters``.
        warmup_start, warmup_iters: linear warm-up from ``WARMUP_START`` to 1 over these
            iterations.
        passed_milestones: step decays already applied at ``start_iter`` (multistep).
        milestone_iters: iterations of the step decays still to come.
    """

    total_iters: int
    start_iter: int = 0
    start_progress: float = 0.0
    warmup_start: int = 0
    warmup_iters: int = 0
    passed_milestones: int = 0
    milestone_iters: tuple[int, ...] = ()

    @classmethod
    def fresh(cls, total_iters: int, warmup_iters: int, milestones: Sequence[float] = (2 / 3, 5 / 6)) -> SchedulePlan:
        """A run's own plan: warm-up from iteration 0 (capped at the run), decay over ``total_iters``,
        step decays at ``milestones`` (fractions of the run)."""
        total_iters = max(1, total_iters)
        return cls(
            total_iters=total_iters, warmup_iters=min(warmup_iters, total_iters),
            milestone_iters=tuple(round(m * total_iters) for m in milestones),
        )

    def progress(self, iteration: int) -> float:
        """The decay's progress at ``iteration``: ``start_progress`` there, 1 at ``total_iters``."""
        span = self.total_iters - self.start_iter
        return self.start_progress + (1 - self.start_progress) * (iteration - self.start_iter) / span

    def factor(self, iteration: int, schedule: str = "multistep", gamma: float = 0.1) -> float:
        """Multiplier of the base learning rate at ``iteration`` (0-based, >= ``start_iter``)."""
        offset = iteration - self.warmup_start
        if 0 <= offset < self.warmup_iters:
            alpha = offset / self.warmup_iters
            warm = WARMUP_START * (1 - alpha) + alpha
        else:
            warm = 1.0
        if schedule == "multistep":
            steps = self.passed_milestones + sum(1 for t in self.milestone_iters if iteration >= t)
            return warm * gamma**steps
        if schedule == "cosine":
            progress = min(1.0, self.progress(iteration))
            return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown schedule {schedule!r}; use multistep or cosine")

    def extended(self, iteration: int, total_iters: int, schedule: str, warmup_iters: int) -> SchedulePlan:
        """The plan re-made at ``iteration`` (the next step to train) to end at ``total_iters``.

        The rest of this plan, ``iteration .. self.total_iters``, is stretched linearly onto
        ``iteration .. total_iters``: remaining step decays move proportionally, the cosine's
        remaining arc is spread out, a warm-up under way ends where it would have, and
        ``factor(iteration)`` is unchanged. A cosine plan at its end (factor 0: nothing left to
        stretch) restarts instead: ``warmup_iters`` of warm-up from ``iteration`` and a cosine from
        the base rate down to zero at ``total_iters`` (SGDR's warm restart, Loshchilov & Hutter 2017).

        Raises:
            ValueError: ``total_iters`` not after ``iteration``.
        """
        if total_iters <= iteration:
            raise ValueError(f"a plan ending at {total_iters} has no steps after iteration {iteration}")
        if schedule == "cosine" and iteration >= self.total_iters:
            return SchedulePlan(total_iters=total_iters, start_iter=iteration, warmup_start=iteration,
                                warmup_iters=min(warmup_iters, total_iters - iteration))
        old_span, new_span = self.total_iters - iteration, total_iters - iteration
        remaining = tuple(
            max(iteration + 1, iteration + round((t - iteration) * new_span / old_span))
            for t in self.milestone_iters if t > iteration
        )
        return SchedulePlan(
            total_iters=total_iters, start_iter=iteration,
            start_progress=min(1.0, self.progress(iteration)) if iteration < self.total_iters else 1.0,
            warmup_start=self.warmup_start, warmup_iters=self.warmup_iters,
            passed_milestones=self.passed_milestones + sum(1 for t in self.milestone_iters if iteration >= t),
            milestone_iters=remaining,
        )

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["milestone_iters"] = list(self.milestone_iters)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SchedulePlan:
        """Raises ``KeyError`` / ``TypeError`` / ``ValueError`` on a malformed entry."""
        return cls(
            total_iters=int(data["total_iters"]), start_iter=int(data["start_iter"]),
            start_progress=float(data["start_progress"]), warmup_start=int(data["warmup_start"]),
            warmup_iters=int(data["warmup_iters"]), passed_milestones=int(data["passed_milestones"]),
            milestone_iters=tuple(int(t) for t in data["milestone_iters"]),
        )


def lr_factor(
    iteration: int,
    total_iters: int,
    warmup_iters: int,
    schedule: str = "multistep",
    milestones: Sequence[float] = (2 / 3, 5 / 6),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of a fresh run of ``total_iters``.

    Args:
        warmup_iters: iterations of linear warm-up from ``WARMUP_START`` to 1 (capped at the run).
        schedule: ``multistep`` (x``gamma`` at each milestone) or ``cosine``.
        milestones: fractions of ``total_iters`` where the step schedule decays.
    """
    return SchedulePlan.fresh(total_iters, warmup_iters, milestones).factor(iteration, schedule, gamma)
