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
from ssdcli.priors import preset_spec
from ssdcli.runs import MetricsLog, next_run_dir, write_json, write_manifest
from ssdcli.train import distributed
from ssdcli.train.callbacks import Callbacks
from ssdcli.train.rng import restore_rng_state
from ssdcli.train.sampling import EpochSampler, SeededSamples
from ssdcli.train.schedule import lr_factor


@dataclass
class TrainState:
    """Where the run is; saved in ``last.pt`` (``epoch``, ``iteration`` and ``train_state``)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0
    lr_scale: float = 1.0
    best_metric: float | None = None

    def train_state(self) -> dict:
        """The checkpoint's ``train_state`` entry."""
        return {"batch_in_epoch": self.batch_in_epoch, "lr_scale": self.lr_scale, "best_metric": self.best_metric}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        return cls(
            epoch=int(checkpoint["epoch"]),
            batch_in_epoch=int(checkpoint["train_state"]["batch_in_epoch"]),
            iteration=int(checkpoint["iteration"]),
            lr_scale=float(checkpoint["train_state"]["lr_scale"]),
            best_metric=checkpoint["train_state"]["best_metric"],
        )


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

        The schedule is a pure function of the iteration (plus the NaN guard's scale), so resuming
        needs no scheduler object: the checkpoint's iteration and lr_scale restore it exactly.
        """
        config = self.config
        factor = lr_factor(iteration, self.total_iters, config.warmup_iters, config.schedule, config.milestones,
                           config.gamma)
        return config.effective_lr * self.state.lr_scale * factor

    def start_info(self) -> dict:
        """What ``Callbacks.on_start`` receives."""
        return {
            "output": str(self.output), "device": str(self.device), "amp": self.amp,
            "world_size": self.dist.world_size, "train_images": len(self.train_data.records),
            "val_images": len(self.val_data.records) if self.val_data else 0, "classes": self.classes,
            "batches_per_epoch": self.batches_per_epoch, "epochs": self.config.epochs,
            "start_epoch": self.state.epoch, "lr": self.config.effective_lr,
        }


def build_run(
    config: TrainConfig | None,
    callbacks: Callbacks,
    resume: Path | None = None,
    overrides: dict | None = None,
) -> TrainRun:
    """The run ``config`` describes, or the one saved in ``resume`` continued with its own
    settings (``overrides`` may change only where it runs: ``device``, ``workers``).

    Joins the torchrun process group when there is one (the caller tears it down).

    Raises:
        UserError / DataError / CheckpointError: what the user can fix (the message says what).
    """
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume, for_resume=True)
        config = TrainConfig.from_dict(checkpoint["config"]).replace(**(overrides or {}))
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

    model = build_model(config.arch, num_classes=len(classes), prior_spec=preset_spec(config.arch, config.prior_scales))
    if checkpoint is None:
        load_backbone_weights(model, config.backbone_weights)
    model.to(device)
    train_set, sampler, loader, batches_per_epoch = training_loader(config, model, train_data, dist_info)
    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay), lr=config.effective_lr, momentum=config.momentum
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = TrainState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState.from_checkpoint(checkpoint)
        restore_rng_state(checkpoint["rng"])
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    run = TrainRun(
        config=config, device=device, dist=dist_info, amp=amp, output=output, classes=classes,
        train_data=train_data, val_data=val_data, model=model, train_model=train_model,
        priors=priors_for_model(model).to(device), train_set=train_set, sampler=sampler, loader=loader,
        batches_per_epoch=batches_per_epoch, loss_fn=MultiBoxLoss(config.neg_pos_ratio), optimizer=optimizer,
        scaler=scaler, state=state, metrics_log=MetricsLog(output / "metrics.csv") if dist_info.is_main else None,
    )
    _prepare_output(run, fresh=checkpoint is None)
    return run


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


def _prepare_output(run: TrainRun, fresh: bool) -> None:
    """A new run writes ``config.json`` and the manifest; a resumed one drops the metrics rows of
    epochs it will redo (written before a crash, see :func:`ssdcli.train.loop.finish_epoch`)."""
    if not run.dist.is_main:
        return
    if fresh:
        run.output.mkdir(parents=True, exist_ok=True)
        write_json(run.output / "config.json", run.config.to_dict())
        write_manifest(run.output / "manifest.json", run.config.seed, run.device, run.dist.world_size)
    elif run.metrics_log is not None:
        run.metrics_log.truncate_after(run.state.epoch)


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


def training_loader(
    config: TrainConfig, model: SSD, data: DetectionDataset, dist_info: distributed.DistInfo
) -> tuple[SeededSamples, EpochSampler, DataLoader, int]:
    """The augmented, seeded training set, this process's sampler, the loader over them and the
    number of batches per epoch (``--limit-batches`` applied)."""
    if config.augment == "paper":
        transform = TrainTransform(model.image_size, model.mean, model.std)
    elif config.augment == "light":  # colours and flips only: no zoom-out or crop
        transform = TrainTransform(model.image_size, model.mean, model.std, zoom_out_p=0.0, crop=False)
    else:
        transform = EvalTransform(model.image_size, model.mean, model.std)
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
