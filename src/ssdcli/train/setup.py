"""Turn a :class:`~ssdcli.config.TrainConfig` (or a ``last.pt`` to resume) into a :class:`TrainRun`.

This is the only module that reads a config: it reads the data, builds the network (with ImageNet
backbone weights where its arch has them), the seeded loader, the optimizer and the schedule,
restores a resumed run's state and prepares the run folder. Everything after it takes the
objects of the :class:`TrainRun`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ssdcli.checkpoint import load_checkpoint
from ssdcli.config import TrainConfig
from ssdcli.data.loader import DetectionTrainDataset, make_loader
from ssdcli.data.reader import load_classes_file, load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.data.transforms import EvalTransform, TrainTransform
from ssdcli.errors import DataError, UserError
from ssdcli.inference import resolve_device
from ssdcli.loss import MultiBoxLoss
from ssdcli.models import SSD, build_model, load_backbone_weights, priors_for_model
from ssdcli.files import remove_stale_temps
from ssdcli.runs import MetricsLog, claim_run_dir, next_run_dir, write_json, write_manifest
from ssdcli.train import distributed
from ssdcli.train.callbacks import Callbacks
from ssdcli.train.default_boxes import auto_prior_spec, run_prior_spec
from ssdcli.train.micro_batch import run_micro_batch
from ssdcli.train.init_model import (
    InitSource, build_init_model, carried_over, load_init_source, match_classes, transfer_weights,
)
from ssdcli.train.resume import (
    RunFinished, finished_message, reconcile_metrics, restore_training, resumed_config, schedule_plan,
)
from ssdcli.train.sampling import EpochSampler, SeededSamples
from ssdcli.train.schedule import SchedulePlan
from ssdcli.train.state import TrainState


@dataclass
class TrainRun:
    """Everything a training run works with, built by :func:`build_run`."""

    config: TrainConfig
    device: torch.device
    dist: distributed.DistInfo
    amp: bool
    output: Path
    classes: list[str]
    train_data: DetectionDataset
    val_data: DetectionDataset | None
    model: SSD  # the network: checkpoints, validation, precise BN
    train_model: nn.Module  # the network or its DDP wrapper: training steps
    priors: torch.Tensor  # Tensor[P, 4], cxcywh normalised, on ``device``
    train_set: SeededSamples
    sampler: EpochSampler
    loader: DataLoader
    batches_per_epoch: int
    loss_fn: MultiBoxLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: TrainState
    metrics_log: MetricsLog | None  # rank 0 only
    carried: list[dict] | None = None  # --init: per class the MODEL class it starts from (init_model.carried_over)
    default_boxes: str | None = None  # --priors auto: which default boxes a new run trains with, one line

    @property
    def last_path(self) -> Path:
        return self.output / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output / "best.pt"

    @property
    def total_iters(self) -> int:
        return self.batches_per_epoch * self.config.epochs

    def lr_at(self, iteration: int) -> float:
        """The learning rate of ``iteration``.

        The schedule is a pure function of the iteration (plus the NaN guard's scale and the
        plan, :class:`~ssdcli.train.schedule.SchedulePlan`), so resuming needs no scheduler
        object: the checkpoint's iteration, lr_scale and plan restore it exactly.
        """
        config = self.config
        plan = self.state.plan or SchedulePlan.fresh(self.total_iters, config.warmup_iters, config.milestones)
        return config.effective_lr * self.state.lr_scale * plan.factor(iteration, config.schedule, config.gamma)

    def start_info(self) -> dict:
        """What ``Callbacks.on_start`` receives."""
        return {
            "output": str(self.output), "device": str(self.device), "amp": self.amp,
            "world_size": self.dist.world_size, "train_images": len(self.train_data.records),
            "val_images": len(self.val_data.records) if self.val_data else 0, "classes": self.classes,
            "init": None if self.carried is None else {"source": self.config.init, "carried": self.carried},
            "batches_per_epoch": self.batches_per_epoch, "epochs": self.config.epochs,
            "start_epoch": self.state.epoch, "lr": self.config.effective_lr, "default_boxes": self.default_boxes,
        }


def build_run(
    config: TrainConfig | None,
    callbacks: Callbacks,
    resume: Path | None = None,
    overrides: dict | None = None,
    init_source: InitSource | None = None,
) -> TrainRun:
    """The run ``config`` describes, or the one saved in ``resume`` continued with its own
    settings (``overrides``: what the CLI allows with ``--resume``: ``device``, ``workers``, and
    ``epochs`` / ``patience``, which extend or change the run). A fresh ``--init`` run starts
    from ``init_source`` (loaded from ``config.init`` when not given).

    Joins the torchrun process group when there is one (the caller tears it down).

    Raises:
        RunFinished: ``resume``'s run has nothing left to do (checked before the data is read).
        UserError / DataError / CheckpointError: what the user can fix (the message says what).
    """
    checkpoint, saved = None, None
    if resume is not None:
        checkpoint = load_checkpoint(resume, for_resume=True)
        saved, config = resumed_config(checkpoint, Path(resume), overrides)
        if (finished := finished_message(checkpoint, config, Path(resume))) is not None:
            raise RunFinished(finished)
    elif config is None:
        raise ValueError("fit() needs a config or a checkpoint to resume")
    device, dist_info, amp = _placement(config)

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

    default_boxes = None
    if checkpoint is None and config.fit_priors and config.prior_spec is None:
        config, default_boxes = _auto_default_boxes(config, train_data, dist_info)
    model = _build_network(config, len(classes))
    carried = None
    if checkpoint is None and config.init is not None:
        carried = start_from(model, init_source or load_init_source(config.init), classes)
    elif checkpoint is None:
        load_backbone_weights(model, config.backbone_weights, callbacks.on_download)
    model.to(device)
    train_set, sampler, loader, batches_per_epoch = training_loader(config, model, train_data, dist_info)
    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay), lr=config.effective_lr, momentum=config.momentum
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = TrainState()
    if checkpoint is not None:
        state = restore_training(model, optimizer, scaler, checkpoint, Path(resume))
        if not dist_info.is_main:  # the saved partial sums are rank 0's: counted once
            state.epoch_sums = [0.0] * len(state.epoch_sums)
    state.plan = schedule_plan(state, config, batches_per_epoch, saved)
    priors = priors_for_model(model).to(device)
    loss_fn = MultiBoxLoss(config.neg_pos_ratio)
    state.micro_batch = _micro_batch(model, device, config.batch_size, loss_fn, priors, state.micro_batch,
                                     dist_info, callbacks)
    train_model: nn.Module = model
    if dist_info.enabled:
        # Frozen backbone epochs leave parameters without gradients, which DDP must be told of.
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=config.freeze_backbone_epochs > 0)

    run = TrainRun(
        config=config, device=device, dist=dist_info, amp=amp, output=output, classes=classes,
        train_data=train_data, val_data=val_data, model=model, train_model=train_model,
        priors=priors, train_set=train_set, sampler=sampler, loader=loader,
        batches_per_epoch=batches_per_epoch, loss_fn=loss_fn, optimizer=optimizer,
        scaler=scaler, state=state, metrics_log=MetricsLog(output / "metrics.csv") if dist_info.is_main else None,
        carried=carried, default_boxes=default_boxes,
    )
    _prepare_output(run, checkpoint, saved)
    return run


def run_build_options(config: TrainConfig) -> dict:
    """The arch options of the run's network: ``--init`` MODEL's; for ssdlite320 with ImageNet
    weights the full MobileNetV3 tail they were trained with; else the arch's defaults."""
    if config.init_model is not None:
        return {str(k): float(v) for k, v in dict(config.init_model.get("options") or {}).items()}
    scratch = config.backbone_weights is not None and config.backbone_weights.strip().lower() == "none"
    if config.arch == "ssdlite320" and not scratch:
        return {"reduced_tail": 0.0}
    return {}


def _auto_default_boxes(config: TrainConfig, train_data: DetectionDataset,
                        dist_info: distributed.DistInfo) -> tuple[TrainConfig, str]:
    """``--priors auto`` at a new run's start: the config with the fitted spec in ``prior_spec``
    (unchanged when the preset is kept) and the line saying which. Rank 0 decides for every
    process, so all ranks build the same heads."""
    found = auto_prior_spec(config, train_data) if dist_info.is_main else None
    spec, note = distributed.broadcast_object(found, dist_info)
    return (config if spec is None else config.replace(prior_spec=spec)), note


def _micro_batch(model: SSD, device: torch.device, batch_size: int, loss_fn: MultiBoxLoss, priors: torch.Tensor,
                 saved: int | None, dist_info: distributed.DistInfo, callbacks: Callbacks) -> int:
    """Images per pass of the run's training steps (:mod:`ssdcli.train.micro_batch`): a resumed
    run's own, else timed on this machine. Rank 0 decides for every process."""
    found = run_micro_batch(model, device, batch_size, loss_fn, priors, saved, callbacks.on_note) \
        if dist_info.is_main else None
    return int(distributed.broadcast_object(found, dist_info))


def _build_network(config: TrainConfig, num_classes: int) -> SSD:
    """A freshly initialised network for the run (weights come after: MODEL, ImageNet or a resume)."""
    if config.init_model is not None:
        return build_init_model(config.init_model, num_classes, run_prior_spec(config))
    return build_model(config.arch, num_classes=num_classes, prior_spec=run_prior_spec(config),
                       **run_build_options(config))


def start_from(model: SSD, source: InitSource, classes: list[str]) -> list[dict]:
    """``--init``: MODEL's weights into the fresh ``model``, its class rows for the classes it
    shares with ``classes`` (:mod:`ssdcli.train.init_model`); returns the carry-over rows."""
    matches = match_classes(classes, source.class_names, source.ignored_labels)
    try:
        transfer_weights(source.model, model, matches)
    except ValueError as exc:
        raise UserError(f"--init {source.source}: its network does not fit the run's ({exc})") from None
    return carried_over(classes, source.class_names, matches)


def _placement(config: TrainConfig) -> tuple[torch.device, distributed.DistInfo, bool]:
    """Device, process group and AMP of the run."""
    device = resolve_device(config.device)
    dist_info = distributed.setup(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise UserError("--amp needs a CUDA device; use --no-amp on CPU")
    return device, dist_info, amp


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.json", "manifest.json", "curves.png")
"""What a run folder holds (their temp files are cleaned up on resume)."""


def _prepare_output(run: TrainRun, checkpoint: dict | None, saved: TrainConfig | None) -> None:
    """A new run claims its folder (:func:`~ssdcli.runs.claim_run_dir`: of two runs started
    together, each gets its own) and writes ``config.json`` and the manifest. A resumed one removes
    the temp files a killed writer left, makes ``metrics.csv`` agree with ``last.pt``
    (:func:`~ssdcli.train.resume.reconcile_metrics`) and rewrites ``config.json`` when flags given
    with ``--resume`` (``--epochs``, ``--patience``, ...) changed the settings."""
    if checkpoint is None:
        claimed = claim_run_dir(Path(run.config.output or "runs/train")) if run.dist.is_main else None
        run.output = Path(distributed.broadcast_object(str(claimed) if claimed else None, run.dist))
    if not run.dist.is_main:
        return
    run.metrics_log = MetricsLog(run.output / "metrics.csv")
    if checkpoint is None:
        write_json(run.output / "config.json", run.config.to_dict())
        write_manifest(run.output / "manifest.json", run.config.seed, run.device, run.dist.world_size)
        return
    for name in RUN_FILES:
        remove_stale_temps(run.output / name)
    reconcile_metrics(run.metrics_log, checkpoint, run.state.epoch)
    if run.config != saved:
        write_json(run.output / "config.json", run.config.to_dict())


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


def run_channel_order(config: TrainConfig) -> str:
    """The order of the network's input channels: ``--init`` MODEL's, else RGB."""
    return str((config.init_model or {}).get("channel_order", "rgb"))


def training_loader(
    config: TrainConfig, model: SSD, data: DetectionDataset, dist_info: distributed.DistInfo
) -> tuple[SeededSamples, EpochSampler, DataLoader, int]:
    """The augmented, seeded training set, this process's sampler, the loader over them and the
    number of batches per epoch (``--limit-batches`` applied)."""
    order = run_channel_order(config)
    if config.augment == "paper":
        transform = TrainTransform(model.image_size, model.mean, model.std, channel_order=order)
    elif config.augment == "light":  # colours and flips only: no zoom-out or crop
        transform = TrainTransform(model.image_size, model.mean, model.std, zoom_out_p=0.0, crop=False,
                                   channel_order=order)
    else:
        transform = EvalTransform(model.image_size, model.mean, model.std, channel_order=order)
    train_set = SeededSamples(
        DetectionTrainDataset(data.records, transform, use_difficult=config.use_difficult), seed=config.seed
    )
    sampler = EpochSampler(len(train_set), shuffle=True, seed=config.seed, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    drop_last = sampler.per_rank >= config.batch_size
    batches = sampler.per_rank // config.batch_size if drop_last else math.ceil(sampler.per_rank / config.batch_size)
    if config.limit_batches:
        batches = min(batches, config.limit_batches)
    loader = make_loader(train_set, config.batch_size, shuffle=False, workers=config.workers, seed=config.seed,
                         sampler=sampler, drop_last=drop_last)
    return train_set, sampler, loader, batches


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: biases and per-channel scales (L2Norm, BatchNorm)
    are left undecayed, as Caffe's ``decay_mult: 0`` on biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
