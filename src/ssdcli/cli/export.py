"""`ssd export`: a checkpoint to ONNX or TorchScript, checked against PyTorch before it is kept."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ssdcli.cli.common import EXIT_INTERNAL, err, error_boundary, out
from ssdcli.wording import plural
from ssdcli.errors import UserError

HELP = (
    "Export a checkpoint to ONNX, OpenVINO or TorchScript (optionally with decoding + NMS inside) and check it "
    "against PyTorch."
)
EPILOG = """\
[bold]Examples[/]

  ssd export --weights runs/train/best.pt --format onnx --output best.onnx
  ssd export --weights runs/train/best.pt --format onnx --output best.onnx --dynamic-batch --min-score 0.05
  ssd export --weights runs/train/best.pt --format onnx --output raw.onnx --no-postprocess --opset 18
  ssd export --weights runs/train/best.pt --format torchscript --output best.torchscript.pt
  ssd export --weights runs/train/best.pt --format openvino --output best.xml
  ssd export --weights runs/train/best.pt --format openvino --precision int8 --no-postprocess --calibration-data my_data/ --output best-int8.xml
  ssd export --weights runs/train/best.pt --format openvino --precision bf16 --no-postprocess --val-data my_data/ --output best-bf16.xml
  ssd detect photos/ --weights best.onnx --output shown/
  ssd export --weights torchvision:ssdlite320_mobilenet_v3_large --format onnx   # ssdlite320_mobilenet_v3_large.onnx

[bold]Inputs[/]: images float32 [N, 3, S, S]: RGB, /255, then (x - mean) / std, resized to S x S without
keeping the aspect ratio; S, mean and std are in the file's metadata (with the class names).

[bold]Outputs[/] with --postprocess (default): boxes [K, 4] xyxy normalised to [0, 1] of the original
image, scores [K], labels [K] (1-based index into class_names), batch_index [K]. With
--no-postprocess: cls_logits [N, P, C+1] (column 0 = background), box_deltas [N, P, 4] and the
constant priors [P, 4] cxcywh normalised.

After writing, the file is run (onnxruntime on CPU / torch.jit.load) on two sample images and
compared with PyTorch; above tolerance nothing is kept and the command exits 1. TorchScript uses
torch.jit, which PyTorch has deprecated: it still loads with torch.jit.load, but prefer ONNX.

[bold]OpenVINO[/] (pip install 'ssdcli\\[openvino]'): an IR (.xml + .bin) converted from the checked ONNX \
export, any batch size, with the same metadata (in its rt_info) plus the precision it runs at. fp32 is \
compared with PyTorch like ONNX. bf16 and int8 (NNCF post-training quantization on --calibration-data) are \
judged by their VOC07 mAP change against fp32 on annotated images (--val-data, else the calibration data): \
above --max-map-drop points nothing is kept and the command exits 1. bf16 and int8 models hold raw outputs \
(--no-postprocess): OpenVINO 2026.4's bf16 mode crashes on an embedded NMS that keeps nothing.
"""


class Format(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    torchscript = "torchscript"


class IrPrecision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _runs(batch_sizes: list[int]) -> str:
    """``[1, 1]`` -> "2 runs at batch size 1"; ``[1, 3]`` -> "batch sizes 1 and 3"."""
    if len(set(batch_sizes)) == 1:
        return f"{plural(len(batch_sizes), 'run')} at batch size {batch_sizes[0]}"
    return "batch sizes " + ", ".join(map(str, batch_sizes[:-1])) + f" and {batch_sizes[-1]}"


def _diff(value: float, integer: bool) -> str:
    if math.isnan(value):
        return "shape differs"
    return str(int(value)) if integer else f"{value:.2e}"


def parity_table(report) -> Table:
    """Output name, shapes over the runs, max difference, tolerance and pass/fail per output."""
    table = Table(
        title=f"{report.format} vs PyTorch, {_runs(report.batch_sizes)} ({_size(report.size_bytes)})"
    )
    table.add_column("output")
    table.add_column("shape (exported vs PyTorch)")
    table.add_column("max diff", justify="right")
    table.add_column("tolerance", justify="right")
    table.add_column("result")
    for check in report.checks:
        counted = check.name == "detections"
        table.add_row(
            check.name if not counted else "detections (unmatched)",
            check.shape,
            _diff(check.max_diff, counted),
            _diff(check.tolerance, counted),
            "[green]pass[/]" if check.passed else "[bold red]FAIL[/]",
        )
    return table


def accuracy_table(check) -> Table:
    """fp32 and lowered-precision VOC07 mAP, the change and the allowed drop."""
    table = Table(title=f"{check.precision} vs fp32: VOC07 mAP on {check.images} images of {escape(str(check.data))}")
    for column in ("fp32 mAP (%)", f"{check.precision} mAP (%)", "change (points)", "allowed drop", "result"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{100 * check.fp32_map:.2f}", f"{100 * check.map:.2f}", f"{check.change_points:+.2f}", f"{check.max_drop:g}",
        "[green]pass[/]" if check.passed else "[bold red]FAIL[/]",
    )
    return table


@error_boundary
def export(
    weights: Annotated[Path, typer.Option("--weights", help="The checkpoint to export (best.pt / last.pt), or a pretrained name (torchvision:ssd300_vgg16).")],
    format: Annotated[Format, typer.Option("--format", help="onnx, openvino (IR .xml + .bin) or torchscript.")] = Format.onnx,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="File to write; default next to the checkpoint: best.onnx, best-raw.onnx, best.xml, best.torchscript.pt.",
        ),
    ] = None,
    postprocess: Annotated[
        bool,
        typer.Option(
            "--postprocess/--no-postprocess",
            help="Embed softmax, box decoding and NMS (final detections out), or output raw logits, deltas and priors.",
        ),
    ] = True,
    opset: Annotated[int, typer.Option(help="ONNX opset, 17 to 20.")] = 17,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="ONNX: any batch size (default: batch 1; OpenVINO: always any).")
    ] = False,
    min_score: Annotated[
        float | None,
        typer.Option(help="Embedded post-processing: keep scores above this (default: the checkpoint's, 0.01)."),
    ] = None,
    nms_iou: Annotated[
        float | None, typer.Option(help="Embedded post-processing: NMS IoU (default: the checkpoint's, 0.45).")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Embedded post-processing: detections per image (default: the checkpoint's, 200)."),
    ] = None,
    precision: Annotated[
        IrPrecision, typer.Option("--precision", help="OpenVINO: fp32, bf16 or int8 (stored in the IR; it runs at it).")
    ] = IrPrecision.fp32,
    calibration_data: Annotated[
        Path | None,
        typer.Option("--calibration-data", help="int8: a few hundred images of your data (a dataset or a folder of images)."),
    ] = None,
    val_data: Annotated[
        Path | None,
        typer.Option("--val-data", help="bf16 / int8: annotated images for the mAP check (default: --calibration-data)."),
    ] = None,
    max_map_drop: Annotated[
        float, typer.Option("--max-map-drop", help="bf16 / int8: fail when VOC07 mAP falls more than this many points.")
    ] = 1.0,
) -> None:
    from ssdcli.export import ExportOptions, default_output, export_checkpoint

    if format is not Format.openvino and (precision is not IrPrecision.fp32 or calibration_data or val_data):
        raise UserError("--precision, --calibration-data and --val-data are for --format openvino")
    overrides = {"score_threshold": min_score, "nms_iou": nms_iou, "max_detections": top_k}
    from ssdcli.cli.import_model import resolve_weights_option

    given, weights = str(weights), resolve_weights_option(weights)
    named = given if str(weights) != given else None
    # a name's default output is in the current folder (ssd300_vgg16.onnx), not in the cache
    stem = Path(named.split(":", 1)[1] + ".pt") if named else weights
    target = output if output is not None else default_output(stem, format.value, postprocess, precision.value)
    if format is Format.openvino:
        from ssdcli.export.ir import OpenVinoOptions, export_openvino

        options = OpenVinoOptions(precision=precision.value, postprocess=postprocess, calibration_data=calibration_data,
                                  check_data=val_data, max_map_drop=max_map_drop, **overrides)
        run = lambda step: export_openvino(weights, target, options, progress=step)  # noqa: E731
    else:
        options = ExportOptions(format=format.value, postprocess=postprocess, opset=opset, dynamic_batch=dynamic_batch,
                                **overrides)
        run = lambda step: export_checkpoint(weights, target, options, progress=step)  # noqa: E731
    with err.status("exporting", spinner="dots") as status:
        report = run(lambda message: status.update(escape(message)))
    _report(report, target, postprocess, format is Format.openvino)


def _report(report, target: Path, postprocess: bool, openvino: bool) -> None:
    """The parity (and accuracy) tables; exit 1 when a check failed, else the line of what was written."""
    out.print(parity_table(report))
    if getattr(report, "accuracy", None) is not None:
        out.print(accuracy_table(report.accuracy))
    if not report.passed:
        what = "loses more VOC07 mAP than --max-map-drop allows" if report.checks and all(c.passed for c in report.checks) \
            else "differs from PyTorch beyond tolerance"
        err.print(
            f"[bold red]error:[/] the exported {report.format} model {what} "
            f"(table above); {escape(str(target))} was not written." + (f" Likely cause: {escape(report.note)}." if report.note else ""),
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERNAL)
    settings = report.metadata.settings
    embedded = (
        f"min score {settings.score_threshold}, NMS IoU {settings.nms_iou}, {settings.max_detections} per image"
        if postprocess
        else "raw outputs"
    )
    kind = f", {report.precision}" if openvino else ""
    err.print(f"wrote {escape(str(target))} ({report.metadata.arch}{kind}, {embedded}, {_size(report.size_bytes)})",
              highlight=False)
