"""`ssd import`: another project's SSD weights (a state-dict file or a published name) -> an
ssdcli checkpoint (:mod:`ssdcli.pretrained`), with a short summary of what it holds."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from ssdcli.cli.common import err, error_boundary, out
from ssdcli.errors import UserError
from ssdcli.wording import plural

HELP = "Import a detector trained elsewhere (torchvision SSD300 / SSDLite, ssd.pytorch) as an ssdcli checkpoint."
EPILOG = """\
[bold]Examples[/]

  ssd import torchvision:ssd300_vgg16 --output ssd300_coco.pt
  ssd import torchvision:ssdlite320_mobilenet_v3_large --output ssdlite_coco.pt
  ssd import my_finetuned_ssd.pth --output mine.pt --classes classes.txt
  ssd import ssd300_mAP_77.43_v2.pth --format ssd.pytorch --output voc.pt
  ssd import ssd_300_VOC0712.pth --channel-order bgr --output voc_caffe.pt
  ssd detect photo.jpg --weights ssd300_coco.pt

[bold]Sources[/]: a state-dict file (.pth / .pt: bare, or inside a training checkpoint under \
"model" / "state_dict"), recognised from its keys with --format auto; or a name: \
torchvision:ssd300_vgg16, torchvision:ssdlite320_mobilenet_v3_large (torchvision's COCO weights, \
from torch.hub's cache or downloaded into it). Offline without the file, the error names the URL \
and the path to put it at. Files are read with weights_only=True: nothing in them is executed.

[bold]What travels[/]: class names (and COCO category ids for --coco-json and COCO eval), the \
source's default boxes, input size, channel order, normalisation and resize rule, and its \
post-processing rule (torchvision clips boxes before NMS). `ssd detect`, `ssd eval` and \
`ssd export` honour them. --weights torchvision:NAME on those commands imports on first use.
"""


class ImportFormat(str, Enum):
    auto = "auto"
    torchvision_ssd300 = "torchvision-ssd300"
    torchvision_ssdlite320 = "torchvision-ssdlite320"
    ssd_pytorch = "ssd.pytorch"


class ChannelOrder(str, Enum):
    rgb = "rgb"
    bgr = "bgr"


def read_class_file(path: Path) -> list[str]:
    """Class names, one per line (blank lines skipped).

    Raises:
        UserError: the file cannot be read or names no class.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"--classes {path}: cannot be read ({reason})") from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise UserError(f"--classes {path}: names no class; write one class name per line")
    return names


class DownloadBar:
    """A rich download bar on stderr, started at the first progress call (none for a cached file)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.progress is None:
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            self.progress = Progress(*columns, console=err, transient=True, disable=not err.is_terminal)
            self.progress.start()
            self.task = self.progress.add_task(escape(f"downloading {self.what}"), total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_lines(imported, output: Path) -> list[str]:
    from ssdcli.models import priors_for_model

    prep, rule = imported.preprocessing, imported.postprocess
    classes = imported.model.num_classes - len(imported.ignored_labels)
    ignored = f" ({len(imported.ignored_labels)} unused outputs ignored)" if imported.ignored_labels else ""
    ids = ", COCO category ids kept" if imported.category_ids is not None else ""
    shown = ", ".join(name for i, name in enumerate(imported.class_names, 1) if i not in imported.ignored_labels)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return [
        f"imported {imported.source} ({imported.source_format}) -> {output}",
        f"  network: {imported.model.arch}, {plural(classes, 'class', 'classes')}{ignored}{ids}: {shown}",
        f"  default boxes: {priors_for_model(imported.model).shape[0]} ({imported.model.prior_spec.name})",
        f"  input: {prep.image_size}x{prep.image_size} {prep.channel_order.upper()}, mean "
        f"{', '.join(f'{m:g}' for m in prep.mean)}, std {', '.join(f'{s:g}' for s in prep.std)} "
        f"(of pixel / 255), {prep.resize} resize",
        f"  post-processing: {rule.rule} rule ({'clip before NMS' if rule.rule == 'torchvision' else 'NMS, then clip'}), "
        f"score > {rule.score_threshold:g}, NMS IoU {rule.nms_iou:g}, {rule.top_k_candidates} candidates per class, "
        f"{rule.max_detections} per image",
    ]


@error_boundary
def import_command(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A state-dict file (.pth / .pt) or a name such as torchvision:ssd300_vgg16.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="The ssdcli checkpoint to write (.pt).", show_default=False)],
    source_format: Annotated[ImportFormat, typer.Option("--format", help="The layout of SOURCE; auto recognises it from its keys.")] = ImportFormat.auto,
    classes: Annotated[Optional[Path], typer.Option("--classes", help="Class names, one per line, background excluded (default: COCO for torchvision's 91 outputs, VOC / COCO for ssd.pytorch's 21 / 81).")] = None,
    channel_order: Annotated[Optional[ChannelOrder], typer.Option("--channel-order", help="ssd.pytorch only: the channel order the weights take (rgb: its own training; bgr: the weights converted from Caffe).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
) -> None:
    from ssdcli.files import check_file_target
    from ssdcli.pretrained import import_weights
    from ssdcli.pretrained.save import save_imported

    check_file_target(output, "--output")
    if output.exists() and not force:
        raise UserError(f"--output {output}: exists; choose another file or pass --force to replace it")
    names = read_class_file(classes) if classes is not None else None
    bar = DownloadBar(source)
    try:
        imported = import_weights(
            source, source_format.value, names, channel_order.value if channel_order else None, on_progress=bar
        )
    finally:
        bar.close()
    save_imported(imported, output)
    for line in summary_lines(imported, output):
        out.print(escape(line), highlight=False)


def resolve_weights_option(weights: Path) -> Path:
    """``--weights`` of detect / eval / export: a file as it is; a name (torchvision:NAME) imported
    on first use into the cache (one note saying where; a download shows a bar)."""
    from ssdcli.cli.runtime import print_note
    from ssdcli.pretrained.save import resolve_weights

    bar = DownloadBar(str(weights))
    try:
        return resolve_weights(weights, print_note, bar)
    finally:
        bar.close()
