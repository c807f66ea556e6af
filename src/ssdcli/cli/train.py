"""`ssd train`: build a TrainConfig from flags, run ssdcli.train.fit, show progress and a summary."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ssdcli.wording import plural
from ssdcli.cli.common import Device, err, error_boundary, out
from ssdcli.config import ARCH_NAMES, AUGMENTATIONS, SCHEDULES, TrainConfig
from ssdcli.errors import UserError

HELP = "Train SSD300 / SSD512 (VGG16) or the CPU-sized SSDLite320 on VOC or COCO data."
EPILOG = """\
[bold]Examples[/]

  ssd train --data VOCdevkit --split 07+12 --val-data VOCdevkit --val-split 2007-test --epochs 120
  ssd train --data coco/annotations/instances_train2017.json --arch ssd512 --batch-size 16 --epochs 60
  ssd train --data my_images_and_xml/ --arch ssdlite320 --epochs 30 --device cpu
  ssd train --data my_images_and_xml/ --arch ssdlite320 --prior-scales 0.1 0.95 --epochs 30   # small objects
  ssd train --resume runs/train/last.pt                 # continue exactly where it stopped
  torchrun --nproc_per_node 4 -m ssdcli train --data VOCdevkit --split 07+12 --epochs 120

Writes last.pt, best.pt (with --val-data), metrics.csv, config.json and manifest.json to
--output (default runs/train, runs/train2, ... never overwriting).
"""


# The choices come from ssdcli.config, their one list.
Arch = Enum("Arch", {name: name for name in ARCH_NAMES}, type=str)
Schedule = Enum("Schedule", {name: name for name in SCHEDULES}, type=str)
Augment = Enum("Augment", {name: name for name in AUGMENTATIONS}, type=str)


# Flags that may be given with --resume: they change where the run computes, not what it computes.
RESUME_OVERRIDES = ("device", "workers")


class RichCallbacks:
    """ssdcli.train.Callbacks drawing a rich progress bar per epoch on stderr (rank 0 only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task = None
        self.val_task = None
        self.epochs = 0

    def on_start(self, info: dict) -> None:
        self.epochs = info["epochs"]
        if not self.enabled:
            return
        err.print(
            f"training {plural(len(info['classes']), 'class')} on {plural(info['train_images'], 'image')}"
            + (f" (validating on {info['val_images']})" if info["val_images"] else "")
            + f", device {info['device']}{' x' + str(info['world_size']) if info['world_size'] > 1 else ''}"
            + f", AMP {'on' if info['amp'] else 'off'}, lr {info['lr']:.3g}; writing to {escape(str(info['output']))}"
            + (f"; resuming at epoch {info['start_epoch'] + 1}" if info["start_epoch"] else ""),
            highlight=False,
        )

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None:
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} (loc {task.fields[loc]}, conf {task.fields[conf]})"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[ips]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=num_batches, completed=first_batch, epoch=f"{epoch + 1}/{self.epochs}",
            loss="-", loc="-", conf="-", lr="-", ips="-",
        )

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, completed=batch, loss=f"{stats['loss']:.3f}", loc=f"{stats['loc']:.3f}",
                conf=f"{stats['conf']:.3f}", lr=f"{stats['lr']:.2e}", ips=f"{stats['images_per_s']:.1f}",
            )

    def on_validation_start(self, epoch: int, num_batches: int) -> None:
        if self.progress is not None:
            self.val_task = self.progress.add_task("val", total=num_batches, epoch=f"{epoch + 1} val",
                                                   loss="", loc="", conf="", lr="", ips="")

    def on_validation_batch(self, epoch: int, batch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.val_task, completed=batch)

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.enabled and "val_map" in row:
            err.print(f"  epoch {epoch + 1}: val loss {row['val_loss']:.3f}, VOC07 mAP {row['val_map']:.4f}")

    def on_warning(self, message: str) -> None:
        if self.enabled:
            target = self.progress.console if self.progress is not None else err
            target.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or by environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _summary(rows: list[dict]) -> Table:
    table = Table(title="training summary")
    for column in ("epoch", "loss", "loc", "conf", "val loss", "VOC07 mAP", "lr", "img/s", "time"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_loc']:.4f}", f"{row['train_conf']:.4f}",
            f"{row['val_loss']:.4f}" if "val_loss" in row else "-",
            f"{row['val_map']:.4f}" if "val_map" in row else "-",
            f"{row['lr']:.2e}", f"{row['images_per_s']:.1f}", f"{row['seconds']:.0f}s",
        )
    return table


@error_boundary
def train(
    ctx: typer.Context,
    data: Annotated[Optional[str], typer.Option(help="Training data: VOCdevkit, VOC folder, images+XML folder, or COCO json/folder.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs to train (the paper: ~120 on VOC07+12 at batch 32).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Validation data; VOC07 mAP on it each --eval-every epochs picks best.pt.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Training split: train, trainval, 07+12, 2007-trainval, train2017...")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Validation split: val, test, 2007-test, val2017...")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Class list file, one name per line (overrides the default order).")] = None,
    arch: Annotated[Arch, typer.Option(help="Network.")] = Arch.ssd300,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process under torchrun).")] = 32,
    lr: Annotated[Optional[float], typer.Option(help="Base learning rate \\[default: 1e-3 x batch-size / 32].")] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay on conv weights.")] = 5e-4,
    warmup_iters: Annotated[int, typer.Option(help="Iterations of linear learning-rate warm-up.")] = 500,
    schedule: Annotated[Schedule, typer.Option(help="multistep (x0.1 at 2/3 and 5/6 of the run) or cosine.")] = Schedule.multistep,
    output: Annotated[Optional[Path], typer.Option(help="Run folder \\[default: runs/train, runs/train2, ...].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run saved in this last.pt (its settings are used).")] = None,
    device: Annotated[Device, typer.Option(help="auto = CUDA when available.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.")] = 2,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision \\[default: on with CUDA].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, data order and augmentation.")] = 0,
    backbone_weights: Annotated[Optional[str], typer.Option(help="VGG16 ImageNet state dict FILE, or 'none' for scratch \\[default: torchvision's cached weights].")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N epochs (0 = never; the last epoch always).")] = 1,
    save_every: Annotated[int, typer.Option(help="Also write last.pt every N iterations (0 = once per epoch).")] = 0,
    use_difficult: Annotated[bool, typer.Option(help="Train on VOC 'difficult' boxes too.")] = False,
    augment: Annotated[Augment, typer.Option(help="paper = photometric, zoom-out, min-IoU crop, flip; light = photometric and flip; none = resize only (e.g. to overfit a few images).")] = Augment.paper,
    limit_batches: Annotated[int, typer.Option(help="Stop each epoch after N batches (smoke tests; 0 = all).")] = 0,
    prior_scales: Annotated[Optional[tuple[float, float]], typer.Option(metavar="MIN MAX", help="Default boxes spread linearly from MIN to MAX of the input (SSD paper eq. 4) in the arch's layout, instead of its preset; check them first with ssd priors --data DIR --prior-scales MIN MAX.")] = None,
) -> None:
    from ssdcli.train import TrainingInterrupted, fit

    if resume is not None:
        given = [
            name for name, value in ctx.params.items()
            if name not in ("resume", *RESUME_OVERRIDES)
            and _given(ctx, name)
        ]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(f"--resume continues a run with its own settings; drop {flags}")
        config = None
    else:
        if data is None or epochs is None:
            missing = " and ".join(flag for flag, value in (("--data", data), ("--epochs", epochs)) if value is None)
            raise UserError(f"{missing} required (or --resume last.pt)")
        config = TrainConfig(
            data=data, epochs=epochs, val_data=val_data, split=split, val_split=val_split,
            classes_file=str(classes) if classes else None, arch=arch.value, batch_size=batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, warmup_iters=warmup_iters, schedule=schedule.value,
            output=str(output) if output else None, device=device.value, workers=workers, amp=amp, seed=seed,
            backbone_weights=backbone_weights, eval_every=eval_every, save_every=save_every,
            use_difficult=use_difficult, augment=augment.value, limit_batches=limit_batches,
            prior_scales=prior_scales,
        )

    is_main = int(os.environ.get("RANK", "0")) == 0
    callbacks = RichCallbacks(enabled=is_main)
    overrides = {name: (value.value if isinstance(value, Enum) else value) for name, value in
                 (("device", device), ("workers", workers))
                 if _given(ctx, name)}
    try:
        result = fit(config, callbacks, resume=resume, overrides=overrides)
    except TrainingInterrupted as exc:
        err.print(f"[yellow]{escape(str(exc))}[/]; continue with: ssd train --resume {escape(str(exc.checkpoint))}", highlight=False)
        raise typer.Exit(130) from None
    if is_main:
        out.print(_summary(result.rows))
        out.print(f"run folder: {escape(str(result.output))}  (last.pt{', best.pt' if result.best else ''}, metrics.csv, "
                  f"config.json, manifest.json); {result.seconds:.0f}s", highlight=False)
