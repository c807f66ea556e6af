"""The training loop as plain functions: :func:`fit`, :func:`train_one_epoch`, :func:`validate`.

``fit`` turns a :class:`~ssdcli.config.TrainConfig` into objects (datasets, model, optimizer,
schedule) and runs epochs; everything below it takes plain arguments. Progress and warnings reach
the CLI through :class:`Callbacks`; this module never prints.

Guarantees:
- ``last.pt`` is written atomically after every epoch (and every ``save_every`` iterations), so a
  crash or SIGKILL leaves the previous good checkpoint; Ctrl-C saves the current position first.
- ``--resume`` restores model, optimizer, schedule, AMP scaler, position and RNG states. With the
  order of every epoch derived from ``(seed, epoch)`` and every sample's augmentation from
  ``(seed, epoch, index)`` (:mod:`ssdcli.sampling`), a resumed run on CPU ends with the same
  weights as an uninterrupted one.
- A non-finite loss skips its step with a warning naming the images; ``max_bad_steps`` of them in a
  row roll the weights back to the last good state and divide the learning rate by 10. A
  non-finite checkpoint is never written.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssdcli import distributed
from ssdcli.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ssdcli.config import TrainConfig
from ssdcli.data.loader import (
    DetectionTrainDataset,
    iterate_loader,
    make_loader,
    pad_targets,
)
from ssdcli.data.reader import load_classes_file, load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.data.transforms import EvalTransform, TrainTransform
from ssdcli.errors import DataError, UserError
from ssdcli.inference import detections_to_coco, resolve_device
from ssdcli.loss import LossOutput, MultiBoxLoss
from ssdcli.matching import assign_targets
from ssdcli.models import SSD, build_model, forward_in_slices, micro_batch_size, model_settings, priors_for_model
from ssdcli.postprocess import PostprocessSettings, postprocess
from ssdcli.priors import preset_spec
from ssdcli.runs import MetricsLog, next_run_dir, write_json, write_manifest
from ssdcli.sampling import EpochSampler, SeededSamples
from ssdcli.schedule import lr_factor


PRECISE_BN_IMAGES = 256
"""Training images whose statistics replace BatchNorm's running averages before eval mode is used."""


class Callbacks:
    """Hooks the CLI implements to show progress; every method is optional (no-op here)."""

    def on_start(self, info: dict) -> None: ...

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None: ...

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None: ...

    def on_validation_start(self, epoch: int, num_batches: int) -> None: ...

    def on_validation_batch(self, epoch: int, batch: int) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None: ...

    def on_warning(self, message: str) -> None: ...


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``last.pt`` holds the position reached."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; progress saved to {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    output: Path
    last: Path
    best: Path | None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TrainState:
    """Where the run is; saved in ``last.pt``."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    lr_scale: float = 1.0
    best_metric: float | None = None
    bad_streak: int = 0


# --------------------------------------------------------------------------------------------
# Building blocks


def read_datasets(config: TrainConfig) -> tuple[DetectionDataset, DetectionDataset | None, list[str]]:
    """Training (and validation) data as the readers see them; errors stop the run here."""
    classes = load_classes_file(Path(config.classes_file)) if config.classes_file else None
    train = load_dataset(Path(config.data), split=config.split, classes=classes)
    _refuse_errors(train)
    val = None
    if config.val_data:
        val = load_dataset(Path(config.val_data), split=config.val_split, classes=train.classes, unknown_classes="warning")
        _refuse_errors(val)
    if not train.records:
        raise DataError(f"{config.data}: no usable images to train on")
    return train, val, train.classes


def _refuse_errors(dataset: DetectionDataset) -> None:
    errors = [p for p in dataset.problems if p.severity == "error"]
    if errors:
        first = errors[0]
        raise DataError(
            f"{dataset.root}: {len(errors)} problem(s) stop training, first: {first.file}: {first.message}. "
            f"Run `ssd data check {dataset.root}` for the full list"
        )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: biases and per-channel scales (L2Norm, BatchNorm)
    are left undecayed, as Caffe's ``decay_mult: 0`` on biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoint_payload(
    model: SSD, classes: list[str], config: TrainConfig, state: TrainState, metrics: dict, training_state: dict | None
) -> dict:
    """A plain dict loadable with ``weights_only=True`` (SPEC "Checkpoints"); ``training_state``
    (optimizer, scheduler, scaler, rng, epoch, iteration, train_state) only for ``last.pt``."""
    settings = model_settings(model)
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": settings["arch"],
        "num_classes": settings["num_classes"],
        "options": settings["options"],
        "class_names": list(classes),
        "image_size": settings["image_size"],
        "mean": settings["mean"],
        "std": settings["std"],
        "priors": settings["prior_spec"],
        "postprocess": PostprocessSettings().to_dict(),
        "config": config.to_dict(),
        "metrics": {**metrics, "epochs_done": state.epoch},
    }
    if training_state is not None:
        payload.update(training_state)
    return payload


@torch.no_grad()
def recompute_batchnorm_stats(
    model: nn.Module, dataset, indices: list[int], batch_size: int, workers: int, device: torch.device
) -> bool:
    """Replace BatchNorm running statistics by the exact mean and (biased) variance of each
    BatchNorm input over ``indices`` with the current weights ("precise BN", Wu & Johnson 2021).

    Training's exponential averages lag the weights; for a run of minutes on a CPU the lag decides
    whether eval mode works (an SSDLite fitted in 50 steps scored VOC07 mAP 0.27 on its own
    training images with them). The model runs in train mode, as in training, so each layer sees
    the activations it was trained on; the biased variance is what train mode normalises with.
    A no-op (returns False) for networks without BatchNorm.
    """
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.utils.data import Subset

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    # Batches of at least 2 (BatchNorm cannot normalise one value per channel: the 1x1 maps of the
    # last SSDLite layers), and no ragged last batch.
    batch_size = max(2, batch_size)
    if not norms or len(indices) < batch_size:
        return False
    sums: dict[nn.Module, list] = {norm: [0.0, 0.0, 0] for norm in norms}  # sum x, sum x^2, count

    def collect(norm, inputs):
        x = inputs[0].float()
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but channels
        entry = sums[norm]
        entry[0] = entry[0] + x.sum(dims)
        entry[1] = entry[1] + (x * x).sum(dims)
        entry[2] += x.numel() // x.shape[1]

    hooks = [norm.register_forward_pre_hook(collect) for norm in norms]
    was_training = model.training
    model.train()
    try:
        loader = make_loader(Subset(dataset, indices), batch_size, shuffle=False, workers=workers, seed=0, drop_last=True)
        for images, _ in iterate_loader(loader):
            model(images.to(device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for norm, (total, squares, count) in sums.items():
        mean = total / count
        norm.running_mean.copy_(mean)
        norm.running_var.copy_((squares / count - mean * mean).clamp(min=0))
    return True


def _weights_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


# --------------------------------------------------------------------------------------------
# One step

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


# --------------------------------------------------------------------------------------------
# One epoch


def train_one_epoch(
    model: nn.Module,
    loader,
    priors: torch.Tensor,
    loss_fn: MultiBoxLoss,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    scaler: torch.amp.GradScaler,
    device: torch.device,
    state: TrainState,
    num_batches: int,
    *,
    amp: bool,
    iou_threshold: float,
    max_bad_steps: int,
    records,
    dist_info: distributed.DistInfo,
    callbacks: Callbacks,
    on_bad_streak,
    on_iteration_end,
) -> dict:
    """Train over ``loader`` (which already skips the batches done before a resume).

    Returns:
        Sums for the epoch's metrics row: ``loss``, ``loc``, ``conf`` (image-weighted), ``images``,
        ``seconds``, ``skipped``.
    """
    model.train()
    micro_batch = micro_batch_size(model, device)
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, loc*n, conf*n, n
    skipped = 0
    start = time.perf_counter()
    for images, targets in iterate_loader(loader):
        if state.batch_in_epoch >= num_batches:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.iteration)
        images = images.to(device, non_blocking=True)
        gt_boxes, gt_labels = pad_targets(targets)
        gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
        with torch.no_grad():
            target_labels, target_deltas = assign_targets(
                gt_boxes, gt_labels, priors, iou_threshold, variances=getattr(model, "module", model).prior_spec.variances
            )
        optimizer.zero_grad(set_to_none=True)
        # Gradients of a non-finite loss are computed too, then thrown away with the step.
        loss = forward_backward(model, images, target_labels, target_deltas, loss_fn, scaler, amp, micro_batch)

        if distributed.any_process(not bool(torch.isfinite(loss.total)), dist_info, device):
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            state.bad_streak += 1
            names = ", ".join(records[int(t["index"])].image_path.name for t in targets)
            callbacks.on_warning(
                f"non-finite loss at epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1}; step skipped "
                f"(images: {names})"
            )
            if state.bad_streak >= max_bad_steps:
                on_bad_streak()
        else:
            state.bad_streak = 0
            scaler.step(optimizer)
            scaler.update()
            n = images.shape[0]
            sums += torch.tensor(
                [loss.total.item() * n, loss.loc.item() * n, loss.conf.item() * n, n], dtype=torch.float64
            )
        state.iteration += 1
        state.batch_in_epoch += 1
        elapsed = time.perf_counter() - start
        callbacks.on_batch_end(
            state.epoch,
            state.batch_in_epoch,
            {
                "loss": loss.total.item(),
                "loc": loss.loc.item(),
                "conf": loss.conf.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": sums[3].item() * dist_info.world_size / max(elapsed, 1e-9),
            },
        )
        on_iteration_end()
    sums = distributed.all_reduce_sum(sums, dist_info)
    n = max(sums[3].item(), 1.0)
    return {
        "loss": sums[0].item() / n,
        "loc": sums[1].item() / n,
        "conf": sums[2].item() / n,
        "images": int(sums[3].item()),
        "seconds": time.perf_counter() - start,
        "skipped": skipped,
    }


@torch.no_grad()
def validate(
    model: SSD,
    dataset: DetectionDataset,
    device: torch.device,
    batch_size: int,
    workers: int,
    amp: bool,
    iou_threshold: float,
    callbacks: Callbacks,
    epoch: int,
) -> dict:
    """Validation loss and VOC07 mAP in one pass over the (un-augmented) validation images."""
    from ssdcli.evaluation import evaluate

    model.eval()
    priors = priors_for_model(model).to(device)
    transform = EvalTransform(model.image_size, model.mean, model.std)
    loader = make_loader(
        DetectionTrainDataset(dataset.records, transform), batch_size, shuffle=False, workers=workers, seed=0
    )
    loss_fn = MultiBoxLoss()
    micro_batch = micro_batch_size(model, device)  # the slicing ssd eval uses
    callbacks.on_validation_start(epoch, len(loader))
    sums = [0.0, 0]
    detections: list[dict] = []
    for batch_index, (images, targets) in enumerate(iterate_loader(loader)):
        images = images.to(device)
        gt_boxes, gt_labels = pad_targets(targets)
        target_labels, target_deltas = assign_targets(
            gt_boxes.to(device), gt_labels.to(device), priors, iou_threshold, variances=model.prior_spec.variances
        )
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            cls_logits, box_deltas = forward_in_slices(model, images, micro_batch)
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        loss = loss_fn(cls_logits, box_deltas, target_labels, target_deltas)
        sums[0] += loss.total.item() * images.shape[0]
        sums[1] += images.shape[0]
        records = [dataset.records[int(t["index"])] for t in targets]
        per_image = postprocess(
            cls_logits, box_deltas, priors, image_sizes=[(r.width, r.height) for r in records],
            variances=model.prior_spec.variances, **PostprocessSettings().to_dict(),
        )
        for record, dets in zip(records, per_image):
            detections += detections_to_coco(record.image_id, dets, dataset.category_ids)
        callbacks.on_validation_batch(epoch, batch_index + 1)
    result = evaluate(dataset, detections, metrics=("voc07",))
    val_map = result.voc07_map if result.voc07_map is not None else 0.0
    return {"val_loss": sums[0] / max(sums[1], 1), "val_map": val_map}


# --------------------------------------------------------------------------------------------
# The run


def fit(
    config: TrainConfig | None,
    callbacks: Callbacks | None = None,
    resume: Path | None = None,
    overrides: dict | None = None,
) -> FitResult:
    """Train per ``config``, or continue the run saved in ``resume`` with its own settings
    (``overrides`` may change only where it runs: ``device``, ``workers``)."""
    callbacks = callbacks or Callbacks()
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume, for_resume=True)
        config = TrainConfig.from_dict(checkpoint["config"]).replace(**(overrides or {}))
    elif config is None:
        raise ValueError("fit() needs a config or a checkpoint to resume")

    device = resolve_device(config.device)
    dist_info = distributed.setup(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise UserError("--amp needs a CUDA device; use --no-amp on CPU")
    try:
        return _fit(config, callbacks, checkpoint, resume, device, dist_info, amp)
    finally:
        distributed.teardown()


def _fit(config, callbacks, checkpoint, resume, device, dist_info, amp) -> FitResult:
    torch.manual_seed(config.seed)
    train_data, val_data, classes = read_datasets(config)
    for problem in [p for p in train_data.problems if p.severity == "warning"][:5]:
        callbacks.on_warning(f"{problem.file}: {problem.message}")

    if checkpoint is not None:
        output = Path(resume).resolve().parent
        if list(classes) != list(checkpoint["class_names"]):
            raise UserError(f"{resume}: its classes differ from those of {config.data} now; the data changed")
    else:
        output = next_run_dir(Path(config.output or "runs/train")) if dist_info.is_main else None
        output = Path(distributed.broadcast_object(str(output) if output else None, dist_info))

    model = build_model(config.arch, num_classes=len(classes), prior_spec=preset_spec(config.arch, config.prior_scales))
    if checkpoint is None and config.arch in ("ssd300", "ssd512"):
        from ssdcli.models import load_vgg16_backbone, resolve_backbone_weights

        weights = resolve_backbone_weights(config.backbone_weights)
        if weights is not None:
            load_vgg16_backbone(model, weights)
    model.to(device)
    priors = priors_for_model(model).to(device)

    if config.augment == "paper":
        transform = TrainTransform(model.image_size, model.mean, model.std)
    elif config.augment == "light":  # colours and flips only: no zoom-out or crop
        transform = TrainTransform(model.image_size, model.mean, model.std, zoom_out_p=0.0, crop=False)
    else:
        transform = EvalTransform(model.image_size, model.mean, model.std)
    train_set = SeededSamples(
        DetectionTrainDataset(train_data.records, transform, use_difficult=config.use_difficult),
        seed=config.seed,
    )
    sampler = EpochSampler(len(train_set), shuffle=True, seed=config.seed, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    drop_last = sampler.per_rank >= config.batch_size
    batches_per_epoch = sampler.per_rank // config.batch_size if drop_last else math.ceil(sampler.per_rank / config.batch_size)
    if config.limit_batches:
        batches_per_epoch = min(batches_per_epoch, config.limit_batches)
    loader = make_loader(train_set, config.batch_size, shuffle=False, workers=config.workers, seed=config.seed,
                         sampler=sampler, drop_last=drop_last)
    total_iters = batches_per_epoch * config.epochs

    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay), lr=config.effective_lr, momentum=config.momentum
    )
    state = TrainState()

    def lr_at(iteration: int) -> float:
        # The schedule is a pure function of the iteration (plus the NaN guard's scale), so resuming
        # needs no scheduler object: the checkpoint's iteration and lr_scale restore it exactly.
        factor = lr_factor(iteration, total_iters, config.warmup_iters, config.schedule, config.milestones, config.gamma)
        return config.effective_lr * state.lr_scale * factor

    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(
            epoch=int(checkpoint["epoch"]),
            batch_in_epoch=int(checkpoint["train_state"]["batch_in_epoch"]),
            iteration=int(checkpoint["iteration"]),
            lr_scale=float(checkpoint["train_state"]["lr_scale"]),
            best_metric=checkpoint["train_state"]["best_metric"],
        )
        restore_rng_state(checkpoint["rng"])

    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    last_path, best_path = output / "last.pt", output / "best.pt"
    metrics_log = MetricsLog(output / "metrics.csv") if dist_info.is_main else None
    if dist_info.is_main and checkpoint is None:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "config.json", config.to_dict())
        write_manifest(output / "manifest.json", config.seed, device, dist_info.world_size)
    elif dist_info.is_main and metrics_log is not None:
        metrics_log.truncate_after(state.epoch)

    good = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}

    def save_last(metrics: dict) -> None:
        if not dist_info.is_main:
            return
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": config.schedule, "iteration": state.iteration, "lr_scale": state.lr_scale},
            "scaler": scaler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": state.epoch,
            "iteration": state.iteration,
            "train_state": {
                "batch_in_epoch": state.batch_in_epoch,
                "lr_scale": state.lr_scale,
                "best_metric": state.best_metric,
            },
        }
        save_checkpoint(last_path, checkpoint_payload(model, classes, config, state, metrics, training_state))

    def roll_back() -> None:
        model.load_state_dict(good["model"])
        optimizer.load_state_dict(good["optimizer"])
        state.lr_scale *= 0.1
        state.bad_streak = 0
        callbacks.on_warning(
            f"{config.max_bad_steps} non-finite losses in a row: weights rolled back to the last good state, "
            f"learning rate now x{state.lr_scale:g}"
        )

    def after_iteration() -> None:
        if config.save_every and state.iteration % config.save_every == 0 and _weights_finite(model):
            save_last({})

    callbacks.on_start({
        "output": str(output), "device": str(device), "amp": amp, "world_size": dist_info.world_size,
        "train_images": len(train_data.records), "val_images": len(val_data.records) if val_data else 0,
        "classes": classes, "batches_per_epoch": batches_per_epoch, "epochs": config.epochs,
        "start_epoch": state.epoch, "lr": config.effective_lr,
    })
    result = FitResult(output=output, last=last_path, best=None)
    run_start = time.perf_counter()
    try:
        while state.epoch < config.epochs:
            sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * config.batch_size)
            train_set.epoch = state.epoch
            callbacks.on_epoch_start(state.epoch, batches_per_epoch, state.batch_in_epoch)
            sums = train_one_epoch(
                train_model, loader, priors, MultiBoxLoss(config.neg_pos_ratio), optimizer, lr_at, scaler,
                device, state, batches_per_epoch, amp=amp, iou_threshold=config.iou_threshold,
                max_bad_steps=config.max_bad_steps, records=train_data.records, dist_info=dist_info,
                callbacks=callbacks, on_bad_streak=roll_back, on_iteration_end=after_iteration,
            )
            if not _weights_finite(model):
                roll_back()
            last_epoch = state.epoch + 1 == config.epochs
            validating = val_data is not None and config.eval_every and (
                (state.epoch + 1) % config.eval_every == 0 or last_epoch
            )
            if validating or last_epoch:
                # Running statistics are used only in eval mode, never by training itself, so they
                # are refreshed where eval mode follows: before validation and for the final
                # checkpoint. From this epoch's first images (their augmentation is seeded per
                # sample), so a resumed run gets the same statistics.
                bn_indices = sampler.epoch_indices()[: min(PRECISE_BN_IMAGES, sampler.per_rank)]
                recompute_batchnorm_stats(model, train_set, bn_indices, config.batch_size, config.workers, device)
            row = {
                "epoch": state.epoch + 1, "train_loss": sums["loss"], "train_loc": sums["loc"],
                "train_conf": sums["conf"], "lr": optimizer.param_groups[0]["lr"], "skipped_steps": sums["skipped"],
                "images_per_s": sums["images"] / max(sums["seconds"], 1e-9), "seconds": sums["seconds"],
            }
            if validating:
                if dist_info.is_main:
                    row.update(validate(model, val_data, device, config.batch_size, config.workers, amp,
                                        config.iou_threshold, callbacks, state.epoch))
                distributed.barrier(dist_info)
            state.epoch += 1
            state.batch_in_epoch = 0
            good = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
            improved = "val_map" in row and (state.best_metric is None or row["val_map"] > state.best_metric)
            if improved:
                state.best_metric = row["val_map"]
            # metrics.csv first: a crash before last.pt is written repeats the epoch, and the
            # resumed run drops the row again (MetricsLog.truncate_after).
            if metrics_log is not None:
                metrics_log.append(row)
            save_last(row)
            if improved and dist_info.is_main:
                save_checkpoint(best_path, checkpoint_payload(model, classes, config, state, row, None))
            result.rows.append(row)
            callbacks.on_epoch_end(state.epoch - 1, row)
    except KeyboardInterrupt:
        if _weights_finite(model):
            save_last({})
        raise TrainingInterrupted(last_path) from None
    result.seconds = time.perf_counter() - run_start
    result.best = best_path if best_path.exists() else None
    return result
