"""The detection pipeline behind ``ssd detect``: sources in, each result drawn and written as it comes.

:func:`plan_detection` expands the source arguments (``ssdcli.sources``) and decides where each
rendered copy goes; :func:`run_detection` runs a :class:`~ssdcli.inference.Detector` over them.
Images are read and pre-processed in DataLoader workers while the model runs, each result is
drawn, written and appended to the json files as soon as its batch is done, and nothing per
image is kept except counters, so memory stays flat over any number of images. The json files
are closed as valid lists however the run ends, Ctrl-C included.

Progress, warnings and per-image results reach the caller through :class:`DetectEvents`; this
module never prints.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.wording import plural
from ssdcli.files import JsonListWriter, check_file_target, check_folder_target
from ssdcli.inference import Detector, Timings, class_labels, detection_entries
from ssdcli.postprocess import Detections
from ssdcli.sources import ImageSource, VideoSource, expand_sources, plan_outputs

@dataclass(frozen=True)
class DetectOptions:
    """What to do with the detections: ``ssd detect``'s flags, checked when built.

    Post-processing (``--min-score``, ``--nms-iou``, ``--top-k``) is not here: it belongs to the
    detector (:func:`ssdcli.inference.load_detector`), which an exported model must check when it
    is loaded.

    Attributes:
        output: folder for the rendered images and videos (``<stem>.mp4``); ``None``: none.
        json_file: ``--json``: one entry per image (per frame for videos).
        coco_json: ``--coco-json``: the detections as COCO results.
        classes: keep only detections of these class names; ``None`` keeps every class.
        batch_size: images per forward pass, >= 1 (a webcam always uses 1).
        workers: image-reading worker processes, >= 0 (0 = read in this process).
        webcam: also read camera N, after the other sources, until Ctrl-C or the stream ends.
        show: also show each rendered image in a window (q or Esc stops the run).
    """

    output: Path | None = None
    json_file: Path | None = None
    coco_json: Path | None = None
    classes: tuple[str, ...] | None = None
    batch_size: int = 8
    workers: int = 2
    webcam: int | None = None
    show: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise UserError("--batch-size must be >= 1 and --workers >= 0")
        for target, flag in ((self.json_file, "--json"), (self.coco_json, "--coco-json")):
            if target is not None:
                check_file_target(target, flag)
        if self.output is not None:
            check_folder_target(self.output, "--output")


@dataclass
class DetectPlan:
    """The sources expanded, and where each rendered copy goes.

    Attributes:
        images: image files in source order.
        videos: video files in source order, then the webcam.
        image_targets, video_targets: ``targets[i]`` is the rendered copy of ``images[i]`` /
            ``videos[i]`` under ``--output``; ``None`` without ``--output``.
        warnings: one message per missing source, unsupported file or renamed target.
    """

    images: list[ImageSource]
    videos: list[VideoSource]
    image_targets: list[Path] | None = None
    video_targets: list[Path] | None = None
    warnings: list[str] = field(default_factory=list)


class DetectedImage(NamedTuple):
    """One image's (or video frame's) result, after the class filter.

    Attributes:
        file: the image path, or the video's name (``webcam:N`` for a camera).
        image_id: its COCO ``image_id``: the file stem, ``<stem>_<frame:06d>`` for a frame.
        size: ``(width, height)`` of the original image in pixels.
        frame: frame index within the video; ``None`` for an image file.
        detections: boxes xyxy in original-image pixels.
    """

    file: str
    image_id: str
    size: tuple[int, int]
    frame: int | None
    detections: Detections


class DetectEvents:
    """Hooks the caller implements to follow a run; every method is optional (no-op here).

    An exception raised in a hook ends the run there, as Ctrl-C would (the json files are closed
    valid).
    """

    def on_progress_start(self, description: str, total: int | None) -> None:
        """A stretch of work starts: ``images`` (``total`` files) or one video (total unknown)."""

    def on_progress_advance(self, count: int) -> None:
        """``count`` more images or frames of the current stretch are done."""

    def on_warning(self, message: str) -> None:
        """Something was skipped (a missing source, an unreadable image or video, ...)."""

    def on_result(self, result: DetectedImage) -> None:
        """One image or frame is done: written to the json files and drawn."""


@dataclass
class DetectSummary:
    """What a run did.

    Attributes:
        class_names: the detector's; label ``i`` is ``class_names[i - 1]``.
        images, frames: image files and video frames detected on.
        unreadable: images and videos skipped because they could not be read.
        detections_per_class: 1-based label -> detections kept.
        images_per_class: 1-based label -> images and frames with at least one of them.
        timings: seconds per stage, summed over the images (reading overlaps the rest).
        seconds: wall clock of the whole run, drawing and writing included.
        json_entries, coco_entries: entries written to ``--json`` / ``--coco-json`` (``None``: not asked).
        stopped: the camera whose reading Ctrl-C ended, if one did.
    """

    class_names: list[str]
    images: int = 0
    frames: int = 0
    unreadable: int = 0
    detections_per_class: Counter = field(default_factory=Counter)
    images_per_class: Counter = field(default_factory=Counter)
    timings: Timings = field(default_factory=Timings)
    seconds: float = 0.0
    json_entries: int | None = None
    coco_entries: int | None = None
    stopped: str | None = None


def plan_detection(sources: Sequence[str | os.PathLike[str]], options: DetectOptions) -> DetectPlan:
    """Expand the source arguments (no file is opened) and plan the outputs.

    Raises:
        UserError: no source and no webcam, none of the sources exists, ``--show`` without a
            display, or a rendered copy would overwrite an input.
    """
    names = [os.fspath(source) for source in sources]
    if not names and options.webcam is None:
        raise UserError("give at least one SOURCE (image, folder, glob or video) or --webcam N")
    if options.show:
        from ssdcli.render import check_display

        check_display()
    found = expand_sources(names)
    if not found.images and not found.videos and options.webcam is None:
        raise UserError("; ".join(found.missing + found.unsupported + found.skipped))
    plan = DetectPlan(images=found.images, videos=list(found.videos))
    plan.warnings = found.missing + [f"{message}; skipped" for message in found.unsupported] + found.skipped
    if options.webcam is not None:
        plan.videos.append(VideoSource(camera=options.webcam))
    if options.output is not None:
        plan.image_targets, plan.video_targets, renamed = plan_outputs(plan.images, plan.videos, options.output)
        plan.warnings += renamed
    return plan


def run_detection(
    detector: Detector,
    sources: Sequence[str | os.PathLike[str]] | DetectPlan,
    options: DetectOptions,
    events: DetectEvents | None = None,
) -> DetectSummary:
    """Detect on every source: images first, then each video, then the webcam.

    Args:
        detector: the model (:func:`ssdcli.inference.load_detector`); its post-processing applies.
        sources: source arguments (files, folders, glob patterns, videos), or a plan made
            beforehand by :func:`plan_detection` (whose warnings the caller has then reported).
        options: outputs, class filter, batching.
        events: progress, warnings and per-image results.

    Returns:
        Counts and timings; the images, videos and json files are written.

    Raises:
        UserError: as :func:`plan_detection`; ``--classes`` names an unknown class; a json file
            or the ``--show`` window cannot be opened; a camera cannot be opened; nothing could
            be read. An unreadable image or video among others is a warning, not an error.
        KeyboardInterrupt: Ctrl-C while reading files (a camera stops cleanly instead); the json
            files hold every result finished before it.
    """
    events = events if events is not None else DetectEvents()
    if isinstance(sources, DetectPlan):
        plan = sources
    else:
        plan = plan_detection(sources, options)
        for message in plan.warnings:
            events.on_warning(message)
    keep = class_labels(options.classes, detector.class_names) if options.classes is not None else None
    sink = _Sink(DetectSummary(class_names=list(detector.class_names)), events, keep, options.show,
                 category_ids=getattr(detector, "category_ids", None))
    start = time.perf_counter()
    try:
        sink.json_writer = _open_json(options.json_file, "--json")
        sink.coco_writer = _open_json(options.coco_json, "--coco-json")
        if plan.images:
            _run_images(detector, plan.images, plan.image_targets, sink, options)
        for index, video in enumerate(plan.videos):
            if sink.stop:
                break
            target = plan.video_targets[index] if plan.video_targets is not None else None
            _run_source_video(detector, video, target, sink, options)
    finally:
        sink.close()
        sink.summary.seconds = time.perf_counter() - start
    summary = sink.summary
    if summary.images + summary.frames == 0 and summary.unreadable:
        raise UserError(f"none of the {plural(summary.unreadable, 'image or video', 'images and videos')} could be "
                        "read (see the warnings above)" if summary.unreadable > 1
                        else "the only image or video could not be read (see the warning above)")
    if summary.images + summary.frames and not summary.detections_per_class:
        from ssdcli.score_hint import no_detection_message

        threshold = detector.settings.score_threshold if hasattr(detector, "settings") else 0.0
        t = summary.timings
        events.on_warning(no_detection_message(threshold, t.best_scores, t.hidden_below, summary.images, summary.frames, keep))
    return summary


def _run_images(
    detector: Detector, images: list[ImageSource], targets: list[Path] | None, sink: _Sink, options: DetectOptions
) -> None:
    """Detect on image files, writing each rendered copy to ``targets[i]`` when given."""
    from ssdcli.inference import image_loader, predict_batches
    from ssdcli.render import write_image

    sink.events.on_progress_start("images", len(images))
    loader = image_loader([item.path for item in images], detector, options.batch_size, options.workers,
                          keep_original=targets is not None or sink.show)
    for batch in predict_batches(detector, loader, sink.summary.timings):
        for _, message in batch.errors:
            sink.summary.unreadable += 1
            sink.events.on_warning(f"{message}; skipped")
        for index, size, detections, original in zip(batch.indices, batch.sizes, batch.detections, batch.originals):
            item = images[index]
            result = sink.add(DetectedImage(str(item.path), item.path.stem, size, None, detections))
            if original is not None:
                drawn = sink.render(original, result.detections)
                if targets is not None:
                    write_image(targets[index], drawn)
            sink.events.on_result(result)
        sink.events.on_progress_advance(len(batch.indices) + len(batch.errors))
        if sink.stop:
            return


def _run_source_video(
    detector: Detector, video: VideoSource, target: Path | None, sink: _Sink, options: DetectOptions
) -> None:
    """One video or the camera; an unreadable video file is skipped with a warning, and Ctrl-C
    stops a camera cleanly (a file is interrupted)."""
    from ssdcli.sources import probe_video

    try:
        fps = probe_video(video).fps
    except UserError as exc:
        if video.camera is not None:
            raise
        # An unreadable video is one bad source among others, like an unreadable image.
        sink.summary.unreadable += 1
        sink.events.on_warning(f"{exc}; skipped")
        return
    sink.events.on_progress_start(video.name, None)
    try:
        _run_video(detector, video, fps, target, sink, options.batch_size if video.camera is None else 1,
                   options.workers)
    except KeyboardInterrupt:
        if video.camera is None:
            raise
        sink.summary.stopped = video.name
        sink.stop = True


def _run_video(
    detector: Detector, video: VideoSource, fps: float, target: Path | None, sink: _Sink, batch_size: int,
    workers: int,
) -> None:
    """Detect on every frame of a video (or a camera until it ends), writing the rendered video
    to ``target`` at ``fps``, the source's frame rate."""
    from torch.utils.data import DataLoader

    from ssdcli.image_files import collate_items
    from ssdcli.inference import predict_batches, preprocessing_of_detector
    from ssdcli.render import open_video_writer
    from ssdcli.sources import VideoFrames

    prep = preprocessing_of_detector(detector)
    frames = VideoFrames(video, prep.image_size, prep.mean, prep.std, prep)
    # One worker at most: frames come in order from one reader (each worker would read them all).
    loader = DataLoader(frames, batch_size=batch_size, num_workers=min(workers, 1), collate_fn=collate_items)
    writer = None
    try:
        for batch in predict_batches(detector, loader, sink.summary.timings):
            for frame, size, detections, original in zip(batch.indices, batch.sizes, batch.detections, batch.originals):
                result = sink.add(DetectedImage(video.name, f"{video.stem}_{frame:06d}", size, frame, detections))
                if target is not None or sink.show:
                    drawn = sink.render(original, result.detections)
                    if target is not None:
                        if writer is None:
                            writer = open_video_writer(target, fps, size)
                        writer.write(np.ascontiguousarray(drawn))
                sink.events.on_result(result)
            sink.events.on_progress_advance(len(batch.indices))
            if sink.stop:
                return
    finally:
        if writer is not None:
            writer.release()


def _open_json(path: Path | None, flag: str) -> JsonListWriter | None:
    if path is None:
        return None
    try:
        return JsonListWriter(path)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


@dataclass
class _Sink:
    """Everything one result goes to: the summary's counters, the json files, the window."""

    summary: DetectSummary
    events: DetectEvents
    keep: Tensor | None = None
    show: bool = False
    json_writer: JsonListWriter | None = None
    coco_writer: JsonListWriter | None = None
    stop: bool = False
    category_ids: list[int] | None = None  # the model's COCO ids (an imported COCO model), else labels

    def add(self, result: DetectedImage) -> DetectedImage:
        """Count and write one result; returns it after the ``--classes`` filter."""
        from ssdcli.inference import detections_to_coco, keep_labels

        if self.keep is not None:
            result = result._replace(detections=keep_labels(result.detections, self.keep))
        summary = self.summary
        if result.frame is None:
            summary.images += 1
        else:
            summary.frames += 1
        labels = result.detections.labels.tolist()
        summary.detections_per_class.update(labels)
        summary.images_per_class.update(set(labels))
        if self.json_writer is not None:
            entry: dict = {"file": result.file, "width": result.size[0], "height": result.size[1]}
            if result.frame is not None:
                entry["frame"] = result.frame
            entry["detections"] = detection_entries(result.detections, summary.class_names)
            self.json_writer.add(entry)
        if self.coco_writer is not None:
            for item in detections_to_coco(result.image_id, result.detections, self.category_ids):
                self.coco_writer.add(item)
        return result

    def render(self, original: Tensor, detections: Detections) -> np.ndarray:
        """The image (uint8 Tensor[H, W, 3] RGB) with its detections drawn, BGR for OpenCV."""
        from ssdcli.render import draw_detections

        image_bgr = original.numpy()[:, :, ::-1]  # RGB -> BGR view
        drawn = draw_detections(
            image_bgr, detections.boxes_xyxy, detections.labels, detections.scores, self.summary.class_names
        )
        if self.show:
            from ssdcli.render import show_image

            self.stop = show_image(drawn) or self.stop
        return drawn

    def close(self) -> None:
        """End the json lists (valid files whatever happened) and close the window."""
        for name in ("json_writer", "coco_writer"):
            writer = getattr(self, name)
            if writer is not None:
                writer.close()
        if self.json_writer is not None:
            self.summary.json_entries = self.json_writer.count
        if self.coco_writer is not None:
            self.summary.coco_entries = self.coco_writer.count
        if self.show:
            from ssdcli.render import close_windows

            close_windows()
