"""The run's checkpoints: ``last.pt`` (everything ``--resume`` needs) and ``best.pt`` (weights).

Both are written by rank 0 only, atomically (:func:`ssdcli.checkpoint.save_checkpoint`), in the
layout :func:`ssdcli.checkpoint.checkpoint_payload` defines.
"""

from __future__ import annotations

from ssdcli.checkpoint import checkpoint_payload, save_checkpoint
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import model_settings
from ssdcli.train.rng import capture_rng_state
from ssdcli.train.setup import TrainRun


def _payload(run: TrainRun, metrics: dict, training: dict | None) -> dict:
    # A run started with --init keeps MODEL's channel order, resize and post-processing rules.
    init = run.config.init_model or {}
    return checkpoint_payload(
        run.model.state_dict(), model_settings(run.model), run.classes,
        postprocess=PostprocessSettings(rule=init.get("postprocess_rule", "caffe")).to_dict(),
        config=run.config.to_dict(), metrics={**metrics, "epochs_done": run.state.epoch}, training=training,
        channel_order=init.get("channel_order", "rgb"), resize=init.get("resize", "uint8"),
    )


def save_last(run: TrainRun, metrics: dict) -> None:
    """``last.pt`` at the run's current position, with ``metrics`` (the epoch's row, or ``{}``
    mid-epoch). Captures the global RNG states, so call it where a resumed run will continue."""
    if not run.dist.is_main:
        return
    state = run.state
    training = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {
            "kind": run.config.schedule, "iteration": state.iteration, "lr_scale": state.lr_scale,
            "plan": None if state.plan is None else state.plan.to_dict(),
        },
        "scaler": run.scaler.state_dict(),
        "rng": capture_rng_state(),
        "epoch": state.epoch,
        "iteration": state.iteration,
        "train_state": state.train_state(),
    }
    save_checkpoint(run.last_path, _payload(run, metrics, training))


def save_best(run: TrainRun, row: dict) -> None:
    """``best.pt``: the weights that scored ``row`` (the best validation mAP so far)."""
    if run.dist.is_main:
        save_checkpoint(run.best_path, _payload(run, row, None))
