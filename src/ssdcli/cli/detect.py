"""`ssd detect`: the flags, a progress bar and the summary tables around
:func:`ssdcli.detect.run_detection` (the pipeline itself, streaming included, is there)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ssdcli.cli.common import Device, err, error_boundary, out
from ssdcli.cli.runtime import (
    RUNTIME_EPILOG, BackendOption, CalibrationOption, PrecisionOption, print_note, runtime_options,
)
from ssdcli.errors import UserError
from ssdcli.wording import plural

if TYPE_CHECKING:
    from ssdcli.detect import DetectedImage, DetectSummary

HELP = "Detect objects in images, folders, glob patterns, videos or a webcam; draw them and write json."
EPILOG = """\
[bold]Examples[/]

  ssd detect photo.jpg                       # newest best.pt under runs/
  ssd detect photo.jpg --weights torchvision:ssd300_vgg16   # COCO-trained
  ssd detect photos/ --output rendered/ --json dets.json
  ssd detect "shots/**/*.png" --min-score 0.5 --classes person,dog
  ssd detect clip.mp4 --output rendered/     # rendered/clip.mp4, same fps
  ssd detect --webcam 0 --output live/       # until Ctrl-C; --show: window
  ssd detect imgs/ --min-score 0.01 --coco-json dets.json --weights best.pt
  ssd eval --detections dets.json --data VOC # ...and score them
  ssd detect photos/ --backend openvino --precision bf16
  ssd detect photos/ --precision int8 --calibration-data my_data/

[bold]Sources[/]: image files; folders (searched recursively, only image extensions are taken, \
sub-folders are kept under --output); glob patterns, quoted so ssd expands them (** recurses); \
video files, read frame by frame. A missing source is reported and the others are processed; \
when none exists, exit 2. Unreadable images are reported one line each and skipped.

[bold]Outputs[/]: --json writes one entry per image (per frame for videos, with "frame"): \
{"file", "width", "height", "detections": \\[{"class_id", "label", "score", "box": \\[x1, y1, x2, y2]}]}, \
boxes in original-image pixels, class_id 1-based. --coco-json writes the same detections as COCO \
results (image_id = file stem, category_id = class_id, or the COCO category id for a model \
imported with COCO's ids), the format `ssd eval --detections` scores. \
When nothing scores above --min-score, a warning gives the best score seen and a threshold that would show it.

[bold]Weights[/]: without --weights, the newest best.pt anywhere under runs/ in the current folder \
(e.g. runs/demo/train/best.pt after `make demo`; else the newest last.pt), named on stderr. \
Pre-processing (channel order, normalisation, resize rule), class names, COCO category ids \
(--coco-json) and the post-processing rule come from the checkpoint. torchvision:ssd300_vgg16 and \
torchvision:ssdlite320_mobilenet_v3_large are imported on first use (`ssd import`) into the cache.

""" + RUNTIME_EPILOG + """
[bold]CPU speed[/]: large JPEGs are decoded at 1/2-1/8 scale while they keep twice the network's input size (detections stay in the file's pixels). SSDCLI_WINOGRAD=1 in the environment computes SSD300 / SSD512's large 3x3 convolutions with Winograd's algorithm (NNPACK, inside torch): faster on some CPUs, slower on others (measure: benchmarks/run.py --only forward_ssd300,forward_ssd300_winograd); outputs move by ~1e-5 of their largest value. SSDCLI_EXACT_CONV=1 computes every convolution directly. SSD300 / SSD512 run with their convolution weights packed for oneDNN once and the ReLUs fused (the same outputs; SSDCLI_UNPACKED_CONV=1 turns it off).
"""


class ProgressEvents:
    """:class:`ssdcli.detect.DetectEvents` drawn as a rich progress bar (one task per stretch of
    work) with warnings printed above it, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None

    def on_progress_start(self, description: str, total: int | None) -> None:
        self.task = self.progress.add_task(escape(description), total=total)

    def on_progress_advance(self, count: int) -> None:
        self.progress.advance(self.task, count)

    def on_warning(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def on_result(self, result: DetectedImage) -> None:
        pass


def summary_tables(summary: DetectSummary, runtime: str = "") -> list[Table]:
    """Counts per class and the time per image by stage (``runtime``: e.g. ``onnxruntime fp32``)."""
    counts = Table(title=f"detections: {plural(summary.images, 'image')}, {plural(summary.frames, 'video frame')}"
                   + (f", {summary.unreadable} unreadable" if summary.unreadable else ""))
    counts.add_column("class")
    counts.add_column("detections", justify="right")
    counts.add_column("images / frames with it", justify="right")
    for label in sorted(summary.detections_per_class):
        counts.add_row(escape(summary.class_names[label - 1]), str(summary.detections_per_class[label]),
                       str(summary.images_per_class[label]))
    counts.add_row("[bold]all", f"[bold]{sum(summary.detections_per_class.values())}", "", end_section=False)

    timings, wall_seconds = summary.timings, summary.seconds
    done = max(timings.images, 1)
    times = Table(title="time per image (ms)" + (f", {runtime}" if runtime else ""))
    times.add_column("stage")
    times.add_column("ms / image", justify="right")
    times.add_row("read + pre-process (in loader workers, overlaps the rest)", f"{1000 * timings.read / done:.1f}")
    times.add_row("forward", f"{1000 * timings.forward / done:.1f}")
    times.add_row("post-process (decode + NMS)", f"{1000 * timings.post / done:.1f}")
    times.add_row("end to end (wall clock, incl. drawing and writing)", f"{1000 * wall_seconds / done:.1f}")
    times.add_row("throughput", f"{timings.images / max(wall_seconds, 1e-9):.1f} images/s")
    return [counts, times]


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


@error_boundary
def detect(
    sources: Annotated[
        Optional[list[str]], typer.Argument(metavar="SOURCE", help="Image files, folders, quoted glob patterns or video files.", show_default=False)
    ] = None,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Checkpoint (.pt), exported model (.onnx, OpenVINO .xml) or a pretrained name (torchvision:ssd300_vgg16, imported on first use); default: the newest best.pt under runs/, else last.pt.")
    ] = None,
    min_score: Annotated[float, typer.Option("--min-score", help="Keep detections scoring above this (0-1).")] = 0.3,
    nms_iou: Annotated[Optional[float], typer.Option("--nms-iou", help="NMS: drop a box overlapping a better one of its class by more than this IoU; default: the model's (0.45 for ssdcli-trained models).", show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="At most this many detections per image; default: the model's (200 for ssdcli-trained models).", show_default=False)] = None,
    classes: Annotated[
        Optional[str], typer.Option("--classes", help="Keep only these classes: comma-separated names of the model's classes.")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", help="Write rendered images and videos (.mp4) into this folder.")
    ] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write all detections as json (see below).")] = None,
    coco_json: Annotated[
        Optional[Path], typer.Option("--coco-json", help="Write all detections as COCO results json (for ssd eval).")
    ] = None,
    device: Annotated[Device, typer.Option(help="auto = CUDA when available.")] = Device.auto,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (a webcam always uses 1).")] = 8,
    workers: Annotated[int, typer.Option(help="Image-reading worker processes (0 = read in the main process).")] = 2,
    webcam: Annotated[
        Optional[int], typer.Option("--webcam", help="Also read camera N (e.g. 0) until Ctrl-C or the stream ends.")
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Also show the rendered images in a window (q to stop).")] = False,
    backend: BackendOption = None,
    precision: PrecisionOption = None,
    calibration_data: CalibrationOption = None,
) -> None:
    from ssdcli.detect import DetectOptions, plan_detection, run_detection
    from ssdcli.inference import load_detector
    from ssdcli.runs import find_default_weights
    from ssdcli.postprocess import PostprocessSettings

    # the model's own post-processing (its rule, candidates per class) with the flags given
    settings = {"score_threshold": min_score, "nms_iou": nms_iou, "max_detections": top_k}
    PostprocessSettings(**{k: v for k, v in settings.items() if v is not None})  # the flags' ranges, now
    options = DetectOptions(
        output=output, json_file=json_file, coco_json=coco_json,
        classes=tuple(classes.split(",")) if classes is not None else None,
        batch_size=batch_size, workers=workers, webcam=webcam, show=show,
    )
    plan = plan_detection(sources or [], options)  # before loading a model: a wrong path fails fast
    for message in plan.warnings:
        _warn(message)
    if weights is None:
        weights = find_default_weights(Path("."))
        if weights is None:
            raise UserError("no best.pt or last.pt under runs/ in the current folder; pass --weights CKPT")
        why = "the newest best.pt under runs/" if weights.name == "best.pt" else "no best.pt under runs/; the newest last.pt"
        err.print(f"using {escape(str(weights))} ({why}; pass --weights to choose)", highlight=False)
    from ssdcli.cli.import_model import resolve_weights_option

    weights = resolve_weights_option(weights)
    runtime = runtime_options(backend, precision, calibration_data, plan.forward_batch(options.batch_size))
    detector = load_detector(weights, device.value, settings, runtime, notes=print_note)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        summary = run_detection(detector, plan, options, ProgressEvents(progress))
    if summary.stopped is not None:
        err.print(f"stopped reading {escape(summary.stopped)}", highlight=False)
    for table in summary_tables(summary, f"{getattr(detector, 'backend', '')} {getattr(detector, 'precision', '')}".strip()):
        out.print(table)
    for path, count in ((json_file, summary.json_entries), (coco_json, summary.coco_entries)):
        if count is not None:
            err.print(f"wrote {escape(str(path))} ({plural(count, 'entry', 'entries')})", highlight=False)
    if output is not None:
        err.print(f"rendered images and videos are in {escape(str(output))}", highlight=False)
