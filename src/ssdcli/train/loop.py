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
- Ctrl-C is held off while a step or the end-of-epoch bookkeeping runs
  (:mod:`ssdcli.train.interrupts`), so ``last.pt`` never holds half a step.
- ``--patience K`` stops after K validations without a better mAP; ``best.pt`` keeps the best.
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
from ssdcli.train.interrupts import deferred_interrupt
from ssdcli.train.resume import RunFinished
from ssdcli.train.freeze import frozen_modules
from ssdcli.train.setup import TrainRun, build_run, run_channel_order
from ssdcli.train.validation import PRECISE_BN_IMAGES, precise_bn_batches, recompute_batchnorm_stats, validate


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``last.pt`` holds the position reached."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; progress saved to {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    """A run after :func:`fit`: its folder, checkpoints, one metrics row per epoch trained, seconds
    taken; ``finished`` says why a resumed run had nothing left to do (no epoch was trained),
    ``stopped_early`` why ``--patience`` ended it before its last epoch."""

    output: Path
    last: Path
    best: Path | None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    finished: str | None = None
    stopped_early: str | None = None


def fit(
    config: TrainConfig | None,
    callbacks: Callbacks | None = None,
    resume: Path | None = None,
    overrides: dict | None = None,
    init_source=None,
) -> FitResult:
    """Train per ``config``, or continue the run saved in ``resume`` with its own settings
    (``overrides``: see :func:`~ssdcli.train.setup.build_run`; ``epochs`` extends the run,
    re-planning its schedule, :meth:`~ssdcli.train.schedule.SchedulePlan.extended`).
    ``init_source``: the loaded ``--init`` MODEL (:class:`~ssdcli.train.init_model.InitSource`)
    of ``config.init``, when the caller already has it.

    Raises:
        TrainingInterrupted: Ctrl-C; ``last.pt`` was saved first.
        UserError / DataError / CheckpointError: bad settings, data or checkpoint.
    """
    callbacks = callbacks or Callbacks()
    try:
        try:
            run = build_run(config, callbacks, resume, overrides, init_source)
        except RunFinished as done:
            last = Path(resume)
            best = last.parent / "best.pt"
            return FitResult(output=last.parent, last=last, best=best if best.exists() else None, finished=str(done))
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
                result.stopped_early = _patience_exhausted(run)
                if result.stopped_early is not None:
                    break
        except KeyboardInterrupt:
            if weights_finite(run.model):
                save_last(run, {})
            raise TrainingInterrupted(run.last_path) from None
        result.seconds = time.perf_counter() - start
        result.best = run.best_path if run.best_path.exists() else None
        return result
    finally:
        distributed.teardown()


def _patience_exhausted(run: TrainRun) -> str | None:
    """Why ``--patience`` ends the run now (epochs remain but mAP stopped improving), or None."""
    config, state = run.config, run.state
    if not config.patience or state.stale_validations < config.patience or state.epoch >= config.epochs:
        return None
    return (f"stopped early after epoch {state.epoch} of {config.epochs}: no better VOC07 mAP in "
            f"{state.stale_validations} validations (--patience {config.patience}); best.pt is epoch "
            f"{state.best_epoch} (mAP {state.best_metric:.4f})")


def finish_epoch(run: TrainRun, sums: dict, callbacks: Callbacks) -> dict:
    """The end of an epoch: precise BatchNorm statistics, validation, the metrics row, the
    position moved to the next epoch, ``last.pt`` (and ``best.pt`` when the mAP improved),
    ``metrics.csv`` and ``curves.png``.

    Args:
        sums: what :func:`~ssdcli.train.epoch.train_one_epoch` returned.

    Returns:
        The epoch's metrics row (``ssdcli.runs.METRIC_COLUMNS``), with the seconds of each part.
    """
    config, state = run.config, run.state
    last_epoch = state.epoch + 1 == config.epochs
    validating = bool(run.val_data is not None and config.eval_every and (
        (state.epoch + 1) % config.eval_every == 0 or last_epoch
    ))
    row = {
        "epoch": state.epoch + 1, "train_loss": sums["loss"], "train_loc": sums["loc"],
        "train_conf": sums["conf"], "lr": run.optimizer.param_groups[0]["lr"], "skipped_steps": sums["skipped"],
        "images_per_s": sums["images"] / max(sums["seconds"], 1e-9), "seconds": sums["seconds"],
        "bn_seconds": 0.0, "val_seconds": 0.0,
    }
    if validating or last_epoch:
        # Running statistics are used only in eval mode, never by training itself, so they are
        # refreshed where eval mode follows: before validation and for the final checkpoint.
        row["bn_seconds"] = _precise_bn(run, callbacks)
    if validating:
        begin = time.perf_counter()
        scores = validate(
            run.model, run.val_data, run.device, batch_size=config.batch_size, workers=config.workers,
            amp=run.amp, iou_threshold=config.iou_threshold, neg_pos_ratio=config.neg_pos_ratio,
            callbacks=callbacks, epoch=state.epoch, channel_order=run_channel_order(config),
        ) if run.dist.is_main else None
        row.update(distributed.broadcast_object(scores, run.dist))  # every process takes the same decisions
        row["val_seconds"] = time.perf_counter() - begin
    with deferred_interrupt():  # the position, last.pt and metrics.csv move together
        improved = "val_map" in row and (state.best_metric is None or row["val_map"] > state.best_metric)
        if improved:
            state.best_metric, state.best_epoch, state.stale_validations = row["val_map"], row["epoch"], 0
        elif validating:
            state.stale_validations += 1
        state.next_epoch()
        begin = time.perf_counter()
        # last.pt first, holding the row: a crash before metrics.csv has it puts it back on resume
        # (ssdcli.train.resume.reconcile_metrics).
        save_last(run, row)
        if improved:
            save_best(run, row)
        row["save_seconds"] = time.perf_counter() - begin
        row["epoch_seconds"] = row["seconds"] + row["bn_seconds"] + row["val_seconds"] + row["save_seconds"]
        if run.metrics_log is not None:
            run.metrics_log.append(row)
    _draw_curves(run, callbacks)
    return row


def _precise_bn(run: TrainRun, callbacks: Callbacks) -> float:
    """Precise BatchNorm statistics from this epoch's first images (their augmentation is seeded
    per sample, so a resumed run gets the same statistics); returns the seconds it took."""
    begin = time.perf_counter()
    epoch, batch_size = run.state.epoch, run.config.batch_size
    indices = run.sampler.epoch_indices()[: min(PRECISE_BN_IMAGES, run.sampler.per_rank)]
    batches = precise_bn_batches(run.model, len(indices), batch_size)
    if batches:
        callbacks.on_precise_bn_start(epoch, batches)
    recompute_batchnorm_stats(run.model, run.train_set, indices, batch_size, run.config.workers, run.device,
                              on_batch=lambda done: callbacks.on_precise_bn_batch(epoch, done),
                              frozen=frozen_modules(run.model, run.config, epoch))
    return time.perf_counter() - begin


def _draw_curves(run: TrainRun, callbacks: Callbacks) -> None:
    """``curves.png`` beside ``metrics.csv`` (rank 0); a figure that cannot be drawn is a warning."""
    if run.metrics_log is None:
        return
    try:
        from ssdcli.plotting import write_training_curves

        write_training_curves(run.metrics_log.path)
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a training run
        callbacks.on_warning(f"curves.png not drawn: {type(exc).__name__}: {exc}")
