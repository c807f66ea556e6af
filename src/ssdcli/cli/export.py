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

HELP = (
    "Export a checkpoint to ONNX or TorchScript (optionally with decoding + NMS inside) and check it against PyTorch."
)
EPILOG = """\
[bold]Examples[/]

  ssd export --weights runs/train/best.pt --format onnx --output best.onnx
  ssd export --weights runs/train/best.pt --format onnx --output best.onnx --dynamic-batch --min-score 0.05
  ssd export --weights runs/train/best.pt --format onnx --output raw.onnx --no-postprocess --opset 18
  ssd export --weights runs/train/best.pt --format torchscript --output best.torchscript.pt
  ssd detect photos/ --weights best.onnx --output shown/

[bold]Inputs[/]: images float32 [N, 3, S, S]: RGB, /255, then (x - mean) / std, resized to S x S without
keeping the aspect ratio; S, mean and std are in the file's metadata (with the class names).

[bold]Outputs[/] with --postprocess (default): boxes [K, 4] xyxy normalised to [0, 1] of the original
image, scores [K], labels [K] (1-based index into class_names), batch_index [K]. With
--no-postprocess: cls_logits [N, P, C+1] (column 0 = background), box_deltas [N, P, 4] and the
constant priors [P, 4] cxcywh normalised.

After writing, the file is run (onnxruntime on CPU / torch.jit.load) on two sample images and
compared with PyTorch; above tolerance nothing is kept and the command exits 1. TorchScript uses
torch.jit, which PyTorch has deprecated: it still loads with torch.jit.load, but prefer ONNX.
"""


class Format(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


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


@error_boundary
def export(
    weights: Annotated[Path, typer.Option("--weights", help="The checkpoint to export (best.pt / last.pt).")],
    format: Annotated[Format, typer.Option("--format", help="onnx or torchscript.")] = Format.onnx,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="File to write; default next to the checkpoint: best.onnx, best-raw.onnx, best.torchscript.pt.",
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
        bool, typer.Option("--dynamic-batch", help="ONNX: any batch size (default: batch 1).")
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
) -> None:
    from ssdcli.export import ExportOptions, default_output, export_checkpoint

    options = ExportOptions(
        format=format.value,
        postprocess=postprocess,
        opset=opset,
        dynamic_batch=dynamic_batch,
        score_threshold=min_score,
        nms_iou=nms_iou,
        max_detections=top_k,
    )
    target = output if output is not None else default_output(weights, format.value, postprocess)
    with err.status("exporting", spinner="dots") as status:
        report = export_checkpoint(weights, target, options, progress=lambda message: status.update(escape(message)))
    out.print(parity_table(report))
    if not report.passed:
        err.print(
            f"[bold red]error:[/] the exported {report.format} model differs from PyTorch beyond tolerance "
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
    err.print(f"wrote {escape(str(target))} ({report.metadata.arch}, {embedded}, {_size(report.size_bytes)})", highlight=False)
