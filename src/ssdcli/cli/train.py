"""`ssd train`: build a TrainConfig from flags, run ssdcli.train.fit, show progress and a summary."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssdcli.cli.common import Device, err, error_boundary, out
from ssdcli.config import (
    ARCH_NAMES, AUGMENTATIONS, AUTO_FIT_UNCOVERED, PRIOR_FLAGS_CONFLICT, SCHEDULES, TrainConfig, recipe_default_text,
)
from ssdcli.errors import UserError

HELP = "Train SSD300 / SSD512 (VGG16) or the CPU-sized SSDLite320 on VOC or COCO data."
EPILOG = """\
[bold]Examples[/]

  ssd train --data VOCdevkit --split 07+12 --val-data VOCdevkit --val-split 2007-test --epochs 120
  ssd train --data coco/annotations/instances_train2017.json --arch ssd512 --batch-size 16 --epochs 60
  ssd train --data my_images_and_xml/ --arch ssdlite320 --epochs 30 --device cpu
  ssd train --data my_images_and_xml/ --arch ssdlite320 --prior-scales 0.1 0.95 --epochs 30   # small objects
  ssd train --data my_images_and_xml/ --arch ssdlite320 --priors spec.json --epochs 30   # from ssd priors --fit
  ssd train --data d/ --split train --val-data d/ --val-split val --epochs 100 --patience 5   # early stop
  ssd train --init torchvision:ssdlite320_mobilenet_v3_large --data my_data/ --epochs 10   # fine-tune COCO SSDLite
  ssd train --init runs/shapes/best.pt --data other_shapes/ --epochs 10 --freeze-backbone-epochs 2
  ssd train --resume runs/train/last.pt                 # continue exactly where it stopped
  ssd train --resume runs/train/last.pt --epochs 40     # extend a run (the schedule is re-planned)
  torchrun --nproc_per_node 4 -m ssdcli train --data VOCdevkit --split 07+12 --epochs 120

--init MODEL (an ssdcli checkpoint, a torchvision / ssd.pytorch SSD state dict, or a name) brings
the arch, default boxes, input size, normalisation and channel order; the class head is rebuilt
for the new classes, keeping the rows of classes MODEL has too (a table at the start lists them).

Defaults are the arch's recipe (ssdcli.config.RECIPES): the paper's for ssd300/ssd512, the
measured CPU recipe for ssdlite320; every flag given overrides it, and config.json holds the values
used. Writes last.pt, best.pt (with --val-data), metrics.csv, curves.png, config.json and
manifest.json to --output (default runs/train, runs/train2, ... never overwriting). Without a
terminal (a log file, a pipe), progress is plain lines: one per 10 % of an epoch and one per epoch.
"""


# The choices come from ssdcli.config, their one list.
Arch = Enum("Arch", {name: name for name in ARCH_NAMES}, type=str)
Schedule = Enum("Schedule", {name: name for name in SCHEDULES}, type=str)
Augment = Enum("Augment", {name: name for name in AUGMENTATIONS}, type=str)


# Flags that may be given with --resume: where the run computes (device, workers), and how long it
# goes on (epochs extends it, re-planning the schedule; patience).
RESUME_OVERRIDES = ("device", "workers", "epochs", "patience")


def _recipe(text: str, field: str) -> str:
    """Help text of a recipe option: what it is and its per-arch default (ssdcli.config.RECIPES)."""
    return f"{text} (default: {recipe_default_text(field)})."


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
            f"{row['lr']:.2e}", f"{row['images_per_s']:.1f}", f"{row['epoch_seconds']:.0f}s",
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
    batch_size: Annotated[Optional[int], typer.Option(help=_recipe("Images per step (per process under torchrun)", "batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_recipe("Base learning rate", "lr"))] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help=_recipe("L2 weight decay on conv weights", "weight_decay"))] = None,
    warmup_iters: Annotated[Optional[int], typer.Option(help=_recipe("Iterations of linear learning-rate warm-up", "warmup_iters"))] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help=_recipe("multistep (x0.1 at 2/3 and 5/6 of the run) or cosine (to zero)", "schedule"))] = None,
    output: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/train, runs/train2, ...: never an existing one).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run saved in this last.pt with its settings; --epochs N extends it (README: Extending a run).")] = None,
    device: Annotated[Device, typer.Option(help="auto = CUDA when available.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.")] = 2,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (default: on with CUDA).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, data order and augmentation.")] = 0,
    backbone_weights: Annotated[Optional[str], typer.Option(help=_recipe("ImageNet backbone state dict FILE, 'imagenet' for torchvision's (cached in torch.hub's folder, downloaded once with a progress bar), or 'none' for scratch", "backbone_weights"))] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N epochs (0 = never; the last epoch always).")] = 1,
    patience: Annotated[int, typer.Option(help="Stop after N validations without a better VOC07 mAP (0 = never); best.pt keeps the best.")] = 0,
    save_every: Annotated[int, typer.Option(help="Also write last.pt every N iterations (0 = once per epoch).")] = 0,
    use_difficult: Annotated[bool, typer.Option(help="Train on VOC 'difficult' boxes too.")] = False,
    augment: Annotated[Augment, typer.Option(help="paper = photometric, zoom-out, min-IoU crop, flip; light = photometric and flip; none = resize only (e.g. to overfit a few images).")] = Augment.paper,
    limit_batches: Annotated[int, typer.Option(help="Stop each epoch after N batches (smoke tests; 0 = all).")] = 0,
    prior_scales: Annotated[Optional[tuple[float, float]], typer.Option(metavar="MIN MAX", help="Default boxes spread linearly from MIN to MAX of the input (SSD paper eq. 4) in the arch's layout, instead of its preset; check them first with ssd priors --data DIR --prior-scales MIN MAX.")] = None,
    priors: Annotated[Optional[str], typer.Option(metavar="auto|preset|SPEC.json", help=_recipe(f"Default boxes: auto = the arch's preset unless it leaves over {AUTO_FIT_UNCOVERED:.0%} of the training boxes without a default box of IoU >= 0.5, then boxes fitted to the training data (as ssd priors --fit; said at the start, kept in config.json); preset = the arch's preset; or a spec file (ssd priors --fit DATA --output SPEC.json), whose boxes per location the heads follow", "fit_priors"))] = None,
    init: Annotated[Optional[str], typer.Option(metavar="MODEL", help="Fine-tune from a trained detector: an ssdcli checkpoint, a torchvision / ssd.pytorch SSD state dict file, or a name (torchvision:ssdlite320_mobilenet_v3_large, torchvision:ssd300_vgg16). Arch, default boxes and normalisation come from it; the rows of classes it shares with the data are kept.")] = None,
    freeze_backbone_epochs: Annotated[int, typer.Option(metavar="N", help="Keep the backbone (its weights and BatchNorm statistics) fixed for the first N epochs, then train it.")] = 0,
) -> None:
    from ssdcli.cli.train_progress import progress_callbacks
    from ssdcli.train import TrainingInterrupted, fit

    init_source = None
    if resume is not None:
        if init is not None:
            raise UserError("--init starts a new run from a trained model and --resume continues a run (which "
                            "keeps its own --init); give one of them")
        _refuse_settings_with_resume(ctx)
        config = None
    else:
        if data is None or epochs is None:
            missing = " and ".join(flag for flag, value in (("--data", data), ("--epochs", epochs)) if value is None)
            raise UserError(f"{missing} required (or --resume last.pt)")
        arch_name, prior_spec, init_model, fit_priors = arch.value, None, None, None
        if init is not None:
            init_source = _load_init(ctx, init)
            arch_name, backbone_weights = init_source.model.arch, "none"
            prior_spec, init_model = init_source.model.prior_spec.to_dict(), init_source.settings()
        else:
            prior_spec = _prior_spec(priors, prior_scales, arch.value)
            fit_priors = {"auto": True, "preset": False}.get(priors) if priors is not None else None
        config = TrainConfig(
            data=data, epochs=epochs, val_data=val_data, split=split, val_split=val_split,
            classes_file=str(classes) if classes else None, arch=arch_name, batch_size=batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, warmup_iters=warmup_iters,
            schedule=schedule.value if schedule else None,
            output=str(output) if output else None, device=device.value, workers=workers, amp=amp, seed=seed,
            backbone_weights=backbone_weights, eval_every=eval_every, save_every=save_every,
            use_difficult=use_difficult, augment=augment.value, limit_batches=limit_batches,
            prior_scales=prior_scales, patience=patience, prior_spec=prior_spec, init=init, init_model=init_model,
            freeze_backbone_epochs=freeze_backbone_epochs, fit_priors=fit_priors,
        )

    is_main = int(os.environ.get("RANK", "0")) == 0
    callbacks = progress_callbacks(enabled=is_main)
    overrides = {name: (value.value if isinstance(value, Enum) else value) for name, value in
                 (("device", device), ("workers", workers), ("epochs", epochs), ("patience", patience))
                 if _given(ctx, name)}
    try:
        result = fit(config, callbacks, resume=resume, overrides=overrides, init_source=init_source)
    except TrainingInterrupted as exc:
        err.print(f"[yellow]{escape(str(exc))}[/]; continue with: ssd train --resume {escape(str(exc.checkpoint))}",
                  highlight=False)
        raise typer.Exit(130) from None
    if is_main:
        _render(result)


def _load_init(ctx: typer.Context, model: str):
    """``--init MODEL`` loaded (a name downloads with a bar), refusing flags that contradict it."""
    from ssdcli.cli.import_model import DownloadBar
    from ssdcli.train.init_model import init_conflicts, load_init_source

    bar = DownloadBar(model)
    try:
        source = load_init_source(model, on_progress=bar)
    finally:
        bar.close()
    prior_flags = [flag for flag, name in (("--priors", "priors"), ("--prior-scales", "prior_scales")) if _given(ctx, name)]
    conflict = init_conflicts(source, ctx.params["arch"].value if _given(ctx, "arch") else None, prior_flags,
                              _given(ctx, "backbone_weights"))
    if conflict is not None:
        raise UserError(conflict)
    return source


def _refuse_settings_with_resume(ctx: typer.Context) -> None:
    """--resume takes the run's own settings: only RESUME_OVERRIDES may be given with it."""
    given = [name for name in ctx.params if name not in ("resume", *RESUME_OVERRIDES) and _given(ctx, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"--resume continues a run with its own settings; drop {flags}")


def _render(result) -> None:
    """The run's summary on stdout: one line for a run that was already finished, else the table."""
    if result.finished is not None:
        out.print(escape(result.finished), highlight=False)
        return
    # Not cut to 80 columns when stdout is a file or a pipe (rich's width without a terminal).
    (out if out.is_terminal else Console(soft_wrap=True, width=160)).print(_summary(result.rows))
    if result.stopped_early is not None:
        out.print(escape(result.stopped_early), highlight=False)
    out.print(f"run folder: {escape(str(result.output))}  (last.pt{', best.pt' if result.best else ''}, metrics.csv, "
              f"curves.png, config.json, manifest.json); {result.seconds:.0f}s", highlight=False)


def _prior_spec(priors: str | None, prior_scales: tuple[float, float] | None, arch: str) -> dict | None:
    """``--priors FILE``'s default boxes as the dict the config keeps (checked for ``arch``);
    ``None`` for no ``--priors``, ``auto`` and ``preset``."""
    if priors is None or priors in ("auto", "preset"):
        return None
    if prior_scales is not None:
        raise UserError(PRIOR_FLAGS_CONFLICT)
    from ssdcli.prior_file import load_prior_spec

    return load_prior_spec(priors, arch).to_dict()
