"""`ssd detect`: run a model on images, folders, globs, videos or a webcam; draw, write json.

Streaming: images are read and pre-processed in DataLoader workers while the model runs, each
result is drawn, written and appended to the json files as soon as its batch is done, and
nothing per image is kept except counters, so memory stays flat over any number of images.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Optional

import numpy as np
import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ssdcli.cli.common import Device, err, error_boundary, out
from ssdcli.errors import UserError
from ssdcli.inference import Detector, PostprocessSettings, Timings
from ssdcli.postprocess import Detections
from ssdcli.sources import ImageSource, SourcePlan, VideoSource, expand_sources

HELP = "Detect objects in images, folders, glob patterns, videos or a webcam; draw them and write json."
EPILOG = """\
[bold]Examples[/]

  ssd detect photo.jpg                       # newest runs/*/best.pt
  ssd detect photos/ --output rendered/ --json dets.json
  ssd detect "shots/**/*.png" --min-score 0.5 --classes person,dog
  ssd detect clip.mp4 --output rendered/     # rendered/clip.mp4, same fps
  ssd detect --webcam 0 --output live/       # until Ctrl-C; --show: window
  ssd detect imgs/ --min-score 0.01 --coco-json dets.json --weights best.pt
  ssd eval --detections dets.json --data VOC # ...and score them

[bold]Sources[/]: image files; folders (searched recursively, only image extensions are taken, \
sub-folders are kept under --output); glob patterns, quoted so ssd expands them (** recurses); \
video files, read frame by frame. A missing source is reported and the others are processed; \
when none exists, exit 2. Unreadable images are reported one line each and skipped.

[bold]Outputs[/]: --json writes one entry per image (per frame for videos, with "frame"): \
{"file", "width", "height", "detections": \\[{"class_id", "label", "score", "box": \\[x1, y1, x2, y2]}]}, \
boxes in original-image pixels, class_id 1-based. --coco-json writes the same detections as COCO \
results (image_id = file stem, category_id = class_id), the format `ssd eval --detections` scores.

[bold]Weights[/]: without --weights, the newest runs/*/best.pt under the current folder (else the \
newest last.pt). Pre-processing and class names come from the checkpoint.

[bold]CPU speed[/]: SSD300 / SSD512 compute their large 3x3 convolutions with Winograd's algorithm (NNPACK, inside torch), about a third faster; outputs move by ~1e-5 of their largest value. SSDCLI_EXACT_CONV=1 in the environment computes them directly.
"""

# Extensions cv2.imwrite encodes; a rendered copy of any other image type is written as .png.
_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


# --------------------------------------------------------------------------------------------
# Weights and model


def find_default_weights(root: Path) -> Path | None:
    """The newest ``runs/*/best.pt`` below ``root`` by modification time, else the newest
    ``runs/*/last.pt``, else ``None``."""
    for name in ("best.pt", "last.pt"):
        found = [p for p in (root / "runs").glob(f"*/{name}") if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def load_detector(weights: Path, device_name: str, settings: PostprocessSettings) -> Detector:
    """The :class:`~ssdcli.inference.Detector` for a weights file: the one place that chooses
    a backend by file type (an exported ONNX model gets its branch here).

    Raises:
        UserError: unusable file or device.
    """
    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.inference import TorchDetector, resolve_device
    from ssdcli.models import model_from_checkpoint

    if weights.suffix.lower() == ".onnx":
        from ssdcli.export.runtime import OnnxDetector

        return OnnxDetector(weights, settings)
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(weights)
    model = model_from_checkpoint(checkpoint).to(device)
    # AMP on CUDA as `ssd eval` does, so both commands give the same detections on one device.
    return TorchDetector(model, device, settings, amp=device.type == "cuda", class_names=checkpoint["class_names"])


def parse_classes(text: str, class_names: list[str]) -> torch.Tensor:
    """``--classes a,b`` -> Tensor[L] int64 of their 1-based labels.

    Raises:
        UserError: a name the model does not know, listing the model's classes.
    """
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in class_names]
    if unknown or not wanted:
        raise UserError(
            f"--classes: {', '.join(unknown) or '(empty)'} not among the model's classes: {', '.join(class_names)}"
        )
    return torch.tensor([class_names.index(name) + 1 for name in wanted], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# Outputs


class JsonListWriter:
    """A json list written one entry at a time, so nothing accumulates in memory; :meth:`close`
    ends the list (also after Ctrl-C), leaving a valid file."""

    def __init__(self, path: Path, flag: str) -> None:
        self.path = path
        self.flag = flag
        self.count = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle: IO[str] = path.open("w", encoding="utf-8")
            self.handle.write("[")
        except OSError as exc:
            raise UserError(f"{flag} {path}: cannot write there ({exc.strerror})") from None

    def add(self, entry: dict) -> None:
        self.handle.write(("\n" if self.count == 0 else ",\n") + json.dumps(entry))
        self.count += 1

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.write("\n]\n")
            self.handle.close()


def plan_outputs(plan: SourcePlan, output: Path) -> tuple[list[Path], list[Path], list[str]]:
    """Where each image's and video's rendered copy goes under ``output``.

    Returns:
        ``(image targets, video targets, warnings)``; a name already taken by an earlier source
        gets ``-2``, ``-3``, ... appended (with a warning). Videos become ``<stem>.mp4``.

    Raises:
        UserError: a target would overwrite an input (e.g. ``--output`` is an input folder).
    """
    inputs = {item.path.resolve() for item in plan.images} | {v.path.resolve() for v in plan.videos if v.path}
    taken: set[Path] = set()
    warnings: list[str] = []

    def unique(relative: Path, source: Path) -> Path:
        target = output / relative
        n = 2
        while target in taken:
            target = output / relative.with_name(f"{relative.stem}-{n}{relative.suffix}")
            n += 1
        if target != output / relative:
            warnings.append(f"{source}: {output / relative} is taken by another source; writing {target}")
        if target.resolve() in inputs:
            raise UserError(
                f"--output {output}: would overwrite the input {target}; choose a folder that is not an input"
            )
        taken.add(target)
        return target

    images = []
    for item in plan.images:
        relative = item.relative if item.relative.suffix.lower() in _WRITABLE else item.relative.with_suffix(".png")
        images.append(unique(relative, item.path))
    videos = [unique(Path(f"{video.stem}.mp4"), Path(video.name)) for video in plan.videos]
    return images, videos, warnings


def detection_entries(detections: Detections, class_names: list[str]) -> list[dict]:
    """The ``detections`` list of a --json entry: boxes xyxy in original-image pixels."""
    boxes = detections.boxes_xyxy.tolist()
    return [
        {
            "class_id": label,
            "label": class_names[label - 1],
            "score": round(score, 5),
            "box": [round(v, 2) for v in box],
        }
        for box, label, score in zip(boxes, detections.labels.tolist(), detections.scores.tolist())
    ]


@dataclass
class Sink:
    """Everything one result goes to: counters, the json files, the rendered output, a window."""

    class_names: list[str]
    keep: torch.Tensor | None = None
    json_writer: JsonListWriter | None = None
    coco_writer: JsonListWriter | None = None
    show: bool = False
    images: int = 0
    frames: int = 0
    unreadable: int = 0
    per_class: Counter = field(default_factory=Counter)
    images_with: Counter = field(default_factory=Counter)
    stop: bool = False

    def add(self, file: str, image_id: str, size: tuple[int, int], detections: Detections, frame: int | None) -> Detections:
        """Record one image's (or frame's) detections; returns them after the --classes filter."""
        from ssdcli.inference import detections_to_coco, keep_labels

        if self.keep is not None:
            detections = keep_labels(detections, self.keep)
        if frame is None:
            self.images += 1
        else:
            self.frames += 1
        labels = detections.labels.tolist()
        self.per_class.update(labels)
        self.images_with.update(set(labels))
        if self.json_writer is not None:
            entry = {"file": file, "width": size[0], "height": size[1]}
            if frame is not None:
                entry["frame"] = frame
            entry["detections"] = detection_entries(detections, self.class_names)
            self.json_writer.add(entry)
        if self.coco_writer is not None:
            for item in detections_to_coco(image_id, detections, None):
                self.coco_writer.add(item)
        return detections

    def render(self, original: torch.Tensor, detections: Detections) -> np.ndarray:
        """The image (uint8 Tensor[H, W, 3] RGB) with its detections drawn, BGR for OpenCV."""
        from ssdcli.render import draw_detections

        image_bgr = original.numpy()[:, :, ::-1]  # RGB -> BGR view
        drawn = draw_detections(image_bgr, detections.boxes_xyxy, detections.labels, detections.scores, self.class_names)
        if self.show:
            self._show(drawn)
        return drawn

    def _show(self, image_bgr: np.ndarray) -> None:
        import cv2

        try:
            cv2.imshow("ssd detect", image_bgr)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            raise UserError(f"--show: cannot open a window ({exc.msg.strip()}); use --output DIR instead") from None
        if key in (ord("q"), 27):  # q or Esc closes the window and stops
            self.stop = True


def check_display() -> None:
    """``--show`` needs a display; on Linux without one OpenCV would abort the process."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set; use --output DIR")


# --------------------------------------------------------------------------------------------
# Running


def run_images(
    detector: Detector, images: list[ImageSource], targets: list[Path] | None, sink: Sink, batch_size: int,
    workers: int, timings: Timings, progress: Progress, task,
) -> None:
    """Detect on image files, writing each rendered copy to ``targets[i]`` when given."""
    from ssdcli.inference import image_loader, predict_batches
    from ssdcli.render import write_image

    keep_original = targets is not None or sink.show
    loader = image_loader([item.path for item in images], detector, batch_size, workers, keep_original)
    for batch in predict_batches(detector, loader, timings):
        for index, message in batch.errors:
            sink.unreadable += 1
            progress.console.print(f"[yellow]warning:[/] {message}; skipped", highlight=False)
        for index, size, detections, original in zip(batch.indices, batch.sizes, batch.detections, batch.originals):
            item = images[index]
            detections = sink.add(str(item.path), item.path.stem, size, detections, frame=None)
            if original is not None:
                drawn = sink.render(original, detections)
                if targets is not None:
                    write_image(targets[index], drawn)
        progress.advance(task, len(batch.indices) + len(batch.errors))
        if sink.stop:
            return


def run_video(
    detector: Detector, video: VideoSource, target: Path | None, sink: Sink, batch_size: int, workers: int,
    timings: Timings, progress: Progress, task,
) -> None:
    """Detect on every frame of a video (or a camera until it ends or Ctrl-C), writing the
    rendered video to ``target`` with the source's frame rate."""
    from torch.utils.data import DataLoader

    from ssdcli.inference import collate_items, predict_batches
    from ssdcli.render import open_video_writer
    from ssdcli.sources import VideoFrames, probe_video

    info = probe_video(video)
    frames = VideoFrames(video, detector.image_size, detector.mean, detector.std)
    # One worker at most: frames come in order from one reader (each worker would read them all).
    loader = DataLoader(frames, batch_size=batch_size, num_workers=min(workers, 1), collate_fn=collate_items)
    writer = None
    try:
        for batch in predict_batches(detector, loader, timings):
            for frame, size, detections, original in zip(batch.indices, batch.sizes, batch.detections, batch.originals):
                image_id = f"{video.stem}_{frame:06d}"
                detections = sink.add(video.name, image_id, size, detections, frame=frame)
                if target is not None or sink.show:
                    drawn = sink.render(original, detections)
                    if target is not None:
                        if writer is None:
                            writer = open_video_writer(target, info.fps, size)
                        writer.write(np.ascontiguousarray(drawn))
            progress.advance(task, len(batch.indices))
            if sink.stop:
                return
    finally:
        if writer is not None:
            writer.release()


def summary_tables(sink: Sink, timings: Timings, wall_seconds: float) -> list[Table]:
    """Counts per class and the time per image by stage."""
    counts = Table(title=f"detections: {sink.images} images, {sink.frames} video frames"
                   + (f", {sink.unreadable} unreadable" if sink.unreadable else ""))
    counts.add_column("class")
    counts.add_column("detections", justify="right")
    counts.add_column("images / frames with it", justify="right")
    for label in sorted(sink.per_class):
        counts.add_row(sink.class_names[label - 1], str(sink.per_class[label]), str(sink.images_with[label]))
    counts.add_row("[bold]all", f"[bold]{sum(sink.per_class.values())}", "", end_section=False)

    done = max(timings.images, 1)
    times = Table(title="time per image (ms)")
    times.add_column("stage")
    times.add_column("ms / image", justify="right")
    times.add_row("read + pre-process (in loader workers, overlaps the rest)", f"{1000 * timings.read / done:.1f}")
    times.add_row("forward", f"{1000 * timings.forward / done:.1f}")
    times.add_row("post-process (decode + NMS)", f"{1000 * timings.post / done:.1f}")
    times.add_row("end to end (wall clock, incl. drawing and writing)", f"{1000 * wall_seconds / done:.1f}")
    times.add_row("throughput", f"{timings.images / max(wall_seconds, 1e-9):.1f} images/s")
    return [counts, times]


@error_boundary
def detect(
    sources: Annotated[
        Optional[list[str]], typer.Argument(metavar="SOURCE", help="Image files, folders, quoted glob patterns or video files.", show_default=False)
    ] = None,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Checkpoint (.pt) or exported model (.onnx); default: the newest runs/*/best.pt, else last.pt.")
    ] = None,
    min_score: Annotated[float, typer.Option("--min-score", help="Keep detections scoring above this (0-1).")] = 0.3,
    nms_iou: Annotated[float, typer.Option("--nms-iou", help="NMS: drop a box overlapping a better one of its class by more than this IoU.")] = 0.45,
    top_k: Annotated[int, typer.Option("--top-k", help="At most this many detections per image.")] = 200,
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
) -> None:
    if not sources and webcam is None:
        raise UserError("give at least one SOURCE (image, folder, glob or video) or --webcam N")
    if not 0.0 <= min_score < 1.0 or not 0.0 < nms_iou <= 1.0 or top_k < 1:
        raise UserError("--min-score must be in [0, 1), --nms-iou in (0, 1] and --top-k >= 1")
    if batch_size < 1 or workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    if show:
        check_display()

    plan = expand_sources(sources or [])
    if not plan.images and not plan.videos and webcam is None:
        raise UserError("; ".join(plan.missing + plan.unsupported))
    for message in plan.missing + [f"{m}; skipped" for m in plan.unsupported]:
        err.print(f"[yellow]warning:[/] {message}", highlight=False)
    if webcam is not None:
        plan.videos.append(VideoSource(camera=webcam))
    image_targets = video_targets = None
    if output is not None:
        image_targets, video_targets, collisions = plan_outputs(plan, output)
        for message in collisions:
            err.print(f"[yellow]warning:[/] {message}", highlight=False)

    if weights is None:
        weights = find_default_weights(Path("."))
        if weights is None:
            raise UserError("no runs/*/best.pt or runs/*/last.pt under the current folder; pass --weights CKPT")
        err.print(f"using {weights} (the newest runs/*/{weights.name}; pass --weights to choose)", highlight=False)
    settings = PostprocessSettings(score_threshold=min_score, nms_iou=nms_iou, top_k_candidates=400, max_detections=top_k)
    detector = load_detector(weights, device.value, settings)
    sink = Sink(class_names=detector.class_names, show=show)
    if classes is not None:
        sink.keep = parse_classes(classes, detector.class_names)

    timings = Timings()
    start = time.perf_counter()
    try:
        sink.json_writer = JsonListWriter(json_file, "--json") if json_file is not None else None
        sink.coco_writer = JsonListWriter(coco_json, "--coco-json") if coco_json is not None else None
        _run_all(detector, plan, image_targets, video_targets, sink, batch_size, workers, timings)
    finally:
        for writer in (sink.json_writer, sink.coco_writer):
            if writer is not None:
                writer.close()
        if show:
            import cv2

            cv2.destroyAllWindows()
    if sink.images + sink.frames == 0 and sink.unreadable:
        raise UserError(f"none of the {sink.unreadable} image(s) / video(s) could be read (see the warnings above)")
    for table in summary_tables(sink, timings, time.perf_counter() - start):
        out.print(table)
    for flag, writer in (("--json", sink.json_writer), ("--coco-json", sink.coco_writer)):
        if writer is not None:
            err.print(f"wrote {writer.path} ({writer.count} entries)", highlight=False)
    if output is not None:
        err.print(f"rendered images and videos are in {output}", highlight=False)


def _run_all(
    detector: Detector, plan: SourcePlan, image_targets: list[Path] | None, video_targets: list[Path] | None,
    sink: Sink, batch_size: int, workers: int, timings: Timings,
) -> None:
    """Images first, then each video; a webcam stops cleanly on Ctrl-C."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        if plan.images:
            task = progress.add_task("images", total=len(plan.images))
            run_images(detector, plan.images, image_targets, sink, batch_size, workers, timings, progress, task)
        for index, video in enumerate(plan.videos):
            if sink.stop:
                return
            target = video_targets[index] if video_targets is not None else None
            task = progress.add_task(video.name, total=None)
            try:
                run_video(detector, video, target, sink, batch_size if video.camera is None else 1, workers,
                          timings, progress, task)
            except UserError as exc:
                if video.camera is not None:
                    raise
                # An unreadable video is one bad source among others, like an unreadable image.
                sink.unreadable += 1
                progress.console.print(f"[yellow]warning:[/] {exc}; skipped", highlight=False)
            except KeyboardInterrupt:
                if video.camera is None:
                    raise
                progress.console.print(f"stopped reading {video.name}", highlight=False)
                return
