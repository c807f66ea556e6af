"""Where a run stands: :class:`TrainState`, the part of ``last.pt`` that is the loop's position."""

from __future__ import annotations

from dataclasses import dataclass, field

from ssdcli.train.schedule import SchedulePlan

EPOCH_SUMS = ("loss_n", "loc_n", "conf_n", "images", "skipped", "seconds")
"""What :attr:`TrainState.epoch_sums` adds up over the epoch so far (losses weighted by images)."""
LEGACY_MICRO_BATCH = 1
"""Images per training pass of a checkpoint saved before the number was: runs on the CPU went image
by image then (GPU runs took whole batches, which their device still gives them)."""


@dataclass
class TrainState:
    """Where the run is; saved in ``last.pt`` (``epoch``, ``iteration`` and ``train_state``).

    ``plan`` is the learning-rate schedule's position (set by :func:`ssdcli.train.setup.build_run`);
    ``stale_validations`` counts validations since the best mAP (``--patience``); ``epoch_sums``
    (:data:`EPOCH_SUMS`) hold this process's training sums of the epoch under way, so an epoch
    resumed part-way (or after its last batch) still reports the whole epoch. ``micro_batch`` is
    how many images each pass of a training step takes (:mod:`ssdcli.train.micro_batch`; ``None``
    until a new run decides), kept by a resume so its steps compute as before.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    lr_scale: float = 1.0
    best_metric: float | None = None
    best_epoch: int | None = None
    stale_validations: int = 0
    plan: SchedulePlan | None = None
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * len(EPOCH_SUMS))
    micro_batch: int | None = None

    def next_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = [0.0] * len(EPOCH_SUMS)

    def train_state(self) -> dict:
        """The checkpoint's ``train_state`` entry."""
        return {
            "batch_in_epoch": self.batch_in_epoch, "lr_scale": self.lr_scale, "best_metric": self.best_metric,
            "best_epoch": self.best_epoch, "stale_validations": self.stale_validations,
            "epoch_sums": list(self.epoch_sums), "micro_batch": self.micro_batch,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        """Raises ``KeyError`` / ``TypeError`` / ``ValueError`` on a malformed entry. Entries newer
        than the checkpoint (``best_epoch``, ``stale_validations``, ``epoch_sums``, the plan) default;
        ``micro_batch`` to what the CPU did then (:data:`LEGACY_MICRO_BATCH`)."""
        saved = checkpoint["train_state"]
        plan = checkpoint.get("scheduler", {}).get("plan")
        sums = [float(v) for v in saved.get("epoch_sums", [0.0] * len(EPOCH_SUMS))]
        if len(sums) != len(EPOCH_SUMS):
            raise ValueError(f"train_state epoch_sums has {len(sums)} entries, not {len(EPOCH_SUMS)}")
        return cls(
            epoch=int(checkpoint["epoch"]),
            batch_in_epoch=int(saved["batch_in_epoch"]),
            iteration=int(checkpoint["iteration"]),
            lr_scale=float(saved["lr_scale"]),
            best_metric=None if saved["best_metric"] is None else float(saved["best_metric"]),
            best_epoch=None if saved.get("best_epoch") is None else int(saved["best_epoch"]),
            stale_validations=int(saved.get("stale_validations", 0)),
            plan=None if plan is None else SchedulePlan.from_dict(plan),
            epoch_sums=sums,
            micro_batch=int(saved.get("micro_batch") or LEGACY_MICRO_BATCH),
        )
