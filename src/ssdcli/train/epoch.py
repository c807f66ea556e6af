"""One epoch of training, and the step it repeats: :func:`train_one_epoch`, :func:`forward_backward`."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ssdcli.data.loader import iterate_loader, pad_targets
from ssdcli.loss import LossOutput, MultiBoxLoss
from ssdcli.matching import assign_targets
from ssdcli.train import distributed
from ssdcli.train.callbacks import Callbacks
from ssdcli.train.checkpoints import save_last
from ssdcli.train.freeze import apply_freeze
from ssdcli.train.guard import NonFiniteGuard, weights_finite
from ssdcli.train.interrupts import deferred_interrupt
from ssdcli.train.setup import TrainRun


def forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    target_labels: torch.Tensor,
    target_deltas: torch.Tensor,
    loss_fn: MultiBoxLoss,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    micro_batch: int | None = None,
) -> LossOutput:
    """The loss of a batch and its gradients, added to the parameters' ``.grad``.

    With ``micro_batch`` the batch goes through the network that many images at a time, each
    slice's loss divided by the whole batch's number of positives, so the slices' losses and
    gradients add up to those of the batch in one pass (up to float rounding). Under DDP only the
    last slice synchronises gradients.

    Args:
        images: Tensor[B, 3, S, S], normalised.
        target_labels, target_deltas: Tensor[B, P] and Tensor[B, P, 4] from ``assign_targets``.
        scaler: AMP's gradient scaler (``None`` = no scaling).

    Returns:
        The batch's :class:`LossOutput`, detached.
    """
    batch = images.shape[0]
    step = batch if micro_batch is None else micro_batch
    num_positives = (target_labels > 0).sum()
    parts = []
    for first in range(0, batch, step):
        last = first + step >= batch
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
                cls_logits, box_deltas = model(images[first : first + step])
            loss = loss_fn(
                cls_logits.float(), box_deltas.float(), target_labels[first : first + step],
                target_deltas[first : first + step], num_positives=num_positives,
            )
            (loss.total if scaler is None else scaler.scale(loss.total)).backward()
        parts.append(torch.stack([loss.total.detach(), loss.loc.detach(), loss.conf.detach()]))
    total, loc, conf = torch.stack(parts).sum(dim=0)
    return LossOutput(total=total, loc=loc, conf=conf, num_positives=num_positives)


def train_one_epoch(run: TrainRun, guard: NonFiniteGuard, callbacks: Callbacks) -> dict:
    """Train ``run.state.epoch`` from ``run.state.batch_in_epoch`` on (the loader already skips
    the batches done before a resume), writing ``last.pt`` every ``save_every`` iterations.

    Each step runs with Ctrl-C held off until it is complete (:mod:`ssdcli.train.interrupts`), and
    adds to ``run.state.epoch_sums``, which ``last.pt`` saves: an epoch resumed part-way reports
    all its batches. (Under torchrun the part before a resume counts rank 0's batches only.)

    Returns:
        Sums for the epoch's metrics row: ``loss``, ``loc``, ``conf`` (image-weighted), ``images``,
        ``seconds`` (training time of the whole epoch, over resumes), ``skipped``.
    """
    model, state = run.train_model, run.state
    model.train()
    apply_freeze(run.model, run.config, state.epoch)
    micro_batch = state.micro_batch  # images per pass (ssdcli.train.micro_batch)
    sums = torch.tensor(state.epoch_sums[:4], dtype=torch.float64)  # loss*n, loc*n, conf*n, n
    skipped, seconds_before = int(state.epoch_sums[4]), state.epoch_sums[5]
    images_before = sums[3].item()
    start = time.perf_counter()
    for images, targets in iterate_loader(run.loader):
        if state.batch_in_epoch >= run.batches_per_epoch:
            break
        with deferred_interrupt():
            loss, n = _train_step(run, images, targets, guard, micro_batch)
            if n:
                sums += torch.tensor(
                    [loss.total.item() * n, loss.loc.item() * n, loss.conf.item() * n, n], dtype=torch.float64
                )
            else:
                skipped += 1
            state.iteration += 1
            state.batch_in_epoch += 1
            elapsed = time.perf_counter() - start
            state.epoch_sums = [*sums.tolist(), float(skipped), seconds_before + elapsed]
        callbacks.on_batch_end(state.epoch, state.batch_in_epoch, {
            "loss": loss.total.item(), "loc": loss.loc.item(), "conf": loss.conf.item(),
            "lr": run.optimizer.param_groups[0]["lr"],
            "images_per_s": (sums[3].item() - images_before) * run.dist.world_size / max(elapsed, 1e-9),
        })
        if run.config.save_every and state.iteration % run.config.save_every == 0 and weights_finite(run.model):
            save_last(run, {})
    sums = distributed.all_reduce_sum(sums, run.dist)
    n = max(sums[3].item(), 1.0)
    return {
        "loss": sums[0].item() / n, "loc": sums[1].item() / n, "conf": sums[2].item() / n,
        "images": int(sums[3].item()), "seconds": state.epoch_sums[5], "skipped": skipped,
    }


def _train_step(
    run: TrainRun, images: torch.Tensor, targets: list[dict], guard: NonFiniteGuard, micro_batch: int | None
) -> tuple[LossOutput, int]:
    """One optimizer step on a batch at iteration ``run.state.iteration``'s learning rate.

    Returns:
        The batch's loss and its number of images, 0 when the loss was not finite and the step
        was skipped (:class:`NonFiniteGuard`).
    """
    state, device = run.state, run.device
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr_at(state.iteration)
    images = images.to(device, non_blocking=True)
    gt_boxes, gt_labels = pad_targets(targets)
    with torch.no_grad():
        target_labels, target_deltas = assign_targets(
            gt_boxes.to(device), gt_labels.to(device), run.priors, run.config.iou_threshold,
            variances=run.model.prior_spec.variances,
        )
    run.optimizer.zero_grad(set_to_none=True)
    # Gradients of a non-finite loss are computed too, then thrown away with the step.
    loss = forward_backward(run.train_model, images, target_labels, target_deltas, run.loss_fn, run.scaler,
                            run.amp, micro_batch)
    if distributed.any_process(not bool(torch.isfinite(loss.total)), run.dist, device):
        run.optimizer.zero_grad(set_to_none=True)
        names = [run.train_data.records[int(t["index"])].image_path.name for t in targets]
        guard.bad_step(state.epoch, state.batch_in_epoch, names)
        return loss, 0
    guard.good_step()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss, images.shape[0]
