"""``--resume``: a ``last.pt`` read back into a run, with one clear line for what cannot be.

:func:`resumed_config` reads the run's settings (``--epochs`` / ``--patience`` given with
``--resume`` extend or change them), :func:`finished_message` says when nothing is left to do,
:func:`restore_training` puts back weights, optimizer, scaler, position and RNG states, and
:func:`schedule_plan` re-plans the learning rate of an extended run. Every problem of the file is
a :class:`~ssdcli.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ssdcli.config import TrainConfig
from ssdcli.errors import CheckpointError, UserError
from ssdcli.runs import MetricsLog
from ssdcli.train.rng import restore_rng_state
from ssdcli.train.schedule import SchedulePlan
from ssdcli.train.state import TrainState


class RunFinished(Exception):
    """The run to resume has nothing left to do; the message says why and how to go on."""


def _one_line(exc: BaseException) -> str:
    """The gist of ``exc`` on one line: ``load_state_dict``'s list of problems becomes its first
    problem and how many more there are."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return lines[1].rstrip(". ") + more
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn a malformed part of checkpoint ``path`` into a :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: {what}: {_one_line(exc)}") from None


def resumed_config(checkpoint: dict, path: Path, overrides: dict | None) -> tuple[TrainConfig, TrainConfig]:
    """The run's settings as saved in ``path``, and as it continues (``overrides`` applied).

    Raises:
        CheckpointError: the saved settings are missing or not a valid training config.
        UserError: an override is not a valid value (the message names its flag).
    """
    try:
        saved = TrainConfig.from_dict(checkpoint["config"])
    except (UserError, KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{path}: its training settings are not usable ({detail}); resume from a last.pt "
                              "written by `ssd train`") from None
    return saved, saved.replace(**(overrides or {}))


def finished_message(checkpoint: dict, config: TrainConfig, path: Path) -> str | None:
    """Why the run of ``path`` has nothing left to do under ``config``, or ``None`` when it has."""
    with _reading(path, "malformed training position"):
        epochs_done = int(checkpoint["epoch"])
        stale = int(checkpoint["train_state"].get("stale_validations", 0))
        best_epoch = checkpoint["train_state"].get("best_epoch")
    folder = path.parent
    best = f"; best.pt is epoch {best_epoch}" if best_epoch is not None else ""
    if epochs_done >= config.epochs:
        return (f"the run in {folder} is finished: {epochs_done} of {config.epochs} epochs done{best}; "
                f"to train on, extend it: ssd train --resume {path} --epochs N (N > {epochs_done})")
    if config.patience and stale >= config.patience:
        return (f"the run in {folder} stopped early at epoch {epochs_done}: no better VOC07 mAP in {stale} "
                f"validations (--patience {config.patience}){best}; to train on, give a larger --patience "
                f"(or --patience 0) with --resume")
    return None


def restore_training(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, checkpoint: dict, path: Path
) -> TrainState:
    """Put ``path``'s weights, optimizer, AMP scaler and RNG states back; return its position.

    Raises:
        CheckpointError: any of them does not fit the network its settings build (e.g. a tensor of
            another shape), or is malformed; one line naming the file.
    """
    with _reading(path, f"its weights do not fit the {checkpoint.get('arch')} network its settings describe"):
        model.load_state_dict(checkpoint["model"])
    with _reading(path, "its optimizer state does not fit the network"):
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:
            for param in group["params"]:
                buffer = optimizer.state.get(param, {}).get("momentum_buffer")
                if buffer is not None and buffer.shape != param.shape:
                    raise ValueError(f"a momentum buffer of shape {list(buffer.shape)} for a parameter of "
                                     f"shape {list(param.shape)}")
    with _reading(path, "malformed training state"):
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState.from_checkpoint(checkpoint)
    with _reading(path, "malformed RNG state"):
        restore_rng_state(checkpoint["rng"])
    return state


def schedule_plan(state: TrainState, config: TrainConfig, batches_per_epoch: int,
                  saved: TrainConfig | None = None) -> SchedulePlan:
    """The learning-rate plan of a run at ``state``: its own (a fresh run, or a checkpoint from
    before plans were saved), re-planned to ``config.epochs`` when that differs from the saved
    run's (``saved``): :meth:`SchedulePlan.extended` from the next step on."""
    saved = saved or config
    plan = state.plan or SchedulePlan.fresh(batches_per_epoch * saved.epochs, saved.warmup_iters, saved.milestones)
    if config.epochs != saved.epochs:
        plan = plan.extended(state.iteration, batches_per_epoch * config.epochs, config.schedule, config.warmup_iters)
    return plan


def reconcile_metrics(log: MetricsLog, checkpoint: dict, epochs_done: int) -> None:
    """Make ``metrics.csv`` end at epoch ``epochs_done``: rows of later epochs (written before a
    crash, redone now) are dropped, and the row of ``epochs_done`` itself, when a crash came
    between ``last.pt`` and the csv, is put back from the checkpoint (which holds it)."""
    log.truncate_after(epochs_done)
    row = checkpoint.get("metrics") or {}
    if epochs_done and log.last_epoch() < epochs_done and row.get("epoch") == epochs_done:
        log.append({key: value for key, value in row.items() if key != "epochs_done"})
