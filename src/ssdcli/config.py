"""Run settings as frozen dataclasses: built by the CLI, stored in ``config.json`` and checkpoints.

Only :mod:`ssdcli.train.setup` reads a config; the objects it builds (model, loss, loaders,
optimizer) receive plain arguments. The tuples of allowed values below are the only list of each
choice: ``ssd train`` derives its option choices from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ssdcli.errors import UserError

ARCH_NAMES = ("ssd300", "ssd512", "ssdlite320")
"""The keys of :data:`ssdcli.models.ARCHS` (a test keeps them equal), listed here so that the CLI
can offer them without importing torch."""
SCHEDULES = ("multistep", "cosine")
AUGMENTATIONS = ("paper", "light", "none")
DEVICES = ("auto", "cpu", "cuda")

BASE_BATCH_SIZE = 32
BASE_LR = 1e-3
"""The paper's learning rate at batch 32 (SSD sec. 3.1); scaled linearly with the batch size."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; ``config.json`` holds exactly these fields.

    Attributes mirror ``ssd train`` flags. ``lr=None`` means ``1e-3 * batch_size / 32``;
    ``amp=None`` means "on when the device is CUDA".
    """

    data: str
    epochs: int
    val_data: str | None = None
    split: str | None = None
    val_split: str | None = None
    classes_file: str | None = None
    arch: str = "ssd300"
    batch_size: int = 32
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 500
    schedule: str = "multistep"
    milestones: tuple[float, float] = (2 / 3, 5 / 6)
    gamma: float = 0.1
    output: str | None = None
    device: str = "auto"
    workers: int = 2
    amp: bool | None = None
    seed: int = 0
    backbone_weights: str | None = None
    eval_every: int = 1
    save_every: int = 0
    neg_pos_ratio: float = 3.0
    iou_threshold: float = 0.5
    use_difficult: bool = False
    augment: str = "paper"
    max_bad_steps: int = 5
    limit_batches: int = 0
    prior_scales: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # Settings with an `ssd train` flag are named by the flag; the others (set through the
        # Python API or a run's config.json) by their field name.
        checks = [
            (self.arch in ARCH_NAMES, f"--arch must be one of {', '.join(ARCH_NAMES)}, not {self.arch!r}"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_iters >= 0, "--warmup-iters must be >= 0"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.augment in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.eval_every >= 0, "--eval-every must be >= 0 (0 = never)"),
            (self.save_every >= 0, "--save-every must be >= 0 (0 = once per epoch)"),
            (self.limit_batches >= 0, "--limit-batches must be >= 0 (0 = all)"),
            (self.neg_pos_ratio > 0, "neg_pos_ratio (hard negatives per positive) must be positive"),
            (0 < self.iou_threshold < 1, "iou_threshold (prior matching) must be in (0, 1)"),
            (self.max_bad_steps >= 1, "max_bad_steps must be at least 1"),
            (all(0 < m <= 1 for m in self.milestones), "milestones must be fractions of the run in (0, 1]"),
            (
                self.prior_scales is None
                or (len(self.prior_scales) == 2 and 0 < self.prior_scales[0] < self.prior_scales[1] <= 1),
                "--prior-scales MIN MAX: need 0 < MIN < MAX <= 1 (fractions of the input size)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else BASE_LR * self.batch_size / BASE_BATCH_SIZE

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["prior_scales"] = None if self.prior_scales is None else list(self.prior_scales)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown training settings {unknown}; was this written by a newer ssdcli?")
        values = dict(data)
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        if values.get("prior_scales") is not None:
            values["prior_scales"] = tuple(values["prior_scales"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
