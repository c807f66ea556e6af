"""The training loop: :func:`fit` runs the epochs of a :class:`~ssdcli.train.setup.TrainRun`.

Guarantees:
- ``last.pt`` is written atomically after every epoch (and every ``save_every`` iterations), so a
  crash or SIGKILL leaves the previous good checkpoint; Ctrl-C saves the current position first.
- ``--resume`` restores model, optimizer, schedule, AMP scaler, position and RNG states. With the
  order of every epoch derived from ``(seed, epoch)`` and every sample's augmentation from
  ``(seed, epoch, index)`` (:mod:`ssdcli.train.sampling`), a resumed run on CPU ends with the same
  weights as an uninterrupted one.
- A non-finite loss skips its step (:mod:`ssdcli.train.guard`); a non-finite checkpoint is never
  written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ssdcli.config import TrainConfig
from ssdcli.train import distributed
from ssdcli.train.callbacks import Callbacks
from ssdcli.train.checkpoints import save_best, save_last
from ssdcli.train.epoch import train_one_epoch
from ssdcli.train.guard import NonFiniteGuard, weights_finite
from ssdcli.train.setup import TrainRun, build_run
from ssdcli.train.validation import PRECISE_BN_IMAGES, recompute_batchnorm_stats, validate


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``last.pt`` holds the position reached."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; progress saved to {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    """A finished run: its folder, checkpoints, one metrics row per epoch trained, seconds taken."""

    output: Path
    last: Path
    best: Path | None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    config: TrainConfig | None,
    callbacks: Callbacks | None = None,
    resume: Path | None = None,
    overrides: dict | None = None,
) -> FitResult:
    """Train per ``config``, or continue the run saved in ``resume`` with its own settings
    (``overrides`` may change only where it runs: ``device``, ``workers``).

    Raises:
        TrainingInterrupted: Ctrl-C; ``last.pt`` was saved first.
        UserError / DataError / CheckpointError: bad settings, data or checkpoint.
    """
    callbacks = callbacks or Callbacks()
    try:
        run = build_run(config, callbacks, resume, overrides)
        state = run.state
        guard = NonFiniteGuard(run.model, run.optimizer, state, run.config.max_bad_steps, callbacks.on_warning)
        callbacks.on_start(run.start_info())
        result = FitResult(output=run.output, last=run.last_path, best=None)
        start = time.perf_counter()
        try:
            while state.epoch < run.config.epochs:
                run.sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * run.config.batch_size)
                run.train_set.epoch = state.epoch
                callbacks.on_epoch_start(state.epoch, run.batches_per_epoch, state.batch_in_epoch)
                sums = train_one_epoch(run, guard, callbacks)
                guard.check_weights()
                row = finish_epoch(run, sums, callbacks)
                guard.snapshot()
                result.rows.append(row)
                callbacks.on_epoch_end(state.epoch - 1, row)
        except KeyboardInterrupt:
            if weights_finite(run.model):
                save_last(run, {})
            raise TrainingInterrupted(run.last_path) from None
        result.seconds = time.perf_counter() - start
        result.best = run.best_path if run.best_path.exists() else None
        return result
    finally:
        distributed.teardown()


def finish_epoch(run: TrainRun, sums: dict, callbacks: Callbacks) -> dict:
    """The end of an epoch: precise BatchNorm statistics, validation, the metrics row, the
    position moved to the next epoch, ``last.pt`` (and ``best.pt`` when the mAP improved).

    Args:
        sums: what :func:`~ssdcli.train.epoch.train_one_epoch` returned.

    Returns:
        The epoch's metrics row (``ssdcli.runs.METRIC_COLUMNS``).
    """
    config, state = run.config, run.state
    last_epoch = state.epoch + 1 == config.epochs
    validating = run.val_data is not None and config.eval_every and (
        (state.epoch + 1) % config.eval_every == 0 or last_epoch
    )
    if validating or last_epoch:
        # Running statistics are used only in eval mode, never by training itself, so they are
        # refreshed where eval mode follows: before validation and for the final checkpoint. From
        # this epoch's first images (their augmentation is seeded per sample), so a resumed run
        # gets the same statistics.
        bn_indices = run.sampler.epoch_indices()[: min(PRECISE_BN_IMAGES, run.sampler.per_rank)]
        recompute_batchnorm_stats(run.model, run.train_set, bn_indices, config.batch_size, config.workers, run.device)
    row = {
        "epoch": state.epoch + 1, "train_loss": sums["loss"], "train_loc": sums["loc"],
        "train_conf": sums["conf"], "lr": run.optimizer.param_groups[0]["lr"], "skipped_steps": sums["skipped"],
        "images_per_s": sums["images"] / max(sums["seconds"], 1e-9), "seconds": sums["seconds"],
    }
    if validating:
        if run.dist.is_main:
            row.update(validate(
                run.model, run.val_data, run.device, batch_size=config.batch_size, workers=config.workers,
                amp=run.amp, iou_threshold=config.iou_threshold, neg_pos_ratio=config.neg_pos_ratio,
                callbacks=callbacks, epoch=state.epoch,
            ))
        distributed.barrier(run.dist)
    state.epoch += 1
    state.batch_in_epoch = 0
    improved = "val_map" in row and (state.best_metric is None or row["val_map"] > state.best_metric)
    if improved:
        state.best_metric = row["val_map"]
    # metrics.csv first: a crash before last.pt is written repeats the epoch, and the resumed run
    # drops the row again (MetricsLog.truncate_after).
    if run.metrics_log is not None:
        run.metrics_log.append(row)
    save_last(run, row)
    if improved:
        save_best(run, row)
    return row
