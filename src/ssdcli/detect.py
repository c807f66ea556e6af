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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssdcli.errors import UserError
from ssdcli.wording import plural
from ssdcli.files import check_file_target, check_folder_target
from ssdcli.inference import Detector, class_labels
from ssdcli.detect_results import DetectedImage, DetectEvents, DetectSummary, Sink, open_json
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

    def forward_batch(self, batch_size: int) -> int:
        """Images per forward pass of this plan's largest batch at ``--batch-size`` ``batch_size``:
        fewer for a few images, 1 for the webcam alone (what ``--backend auto`` times)."""
        if any(video.camera is None for video in self.videos):
            return batch_size
        return max(1, min(batch_size, len(self.images)))


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
    sink = Sink(DetectSummary(class_names=list(detector.class_names)), events, keep, options.show,
                 category_ids=getattr(detector, "category_ids", None))
    start = time.perf_counter()
    try:
        sink.json_writer = open_json(options.json_file, "--json")
        sink.coco_writer = open_json(options.coco_json, "--coco-json")
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
    detector: Detector, images: list[ImageSource], targets: list[Path] | None, sink: Sink, options: DetectOptions
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
    detector: Detector, video: VideoSource, target: Path | None, sink: Sink, options: DetectOptions
) -> None:
    """One video or the camera; an unreadable video file is skipped with a warning, and Ctrl-C
    stops a camera cleanly (a file is interrupted)."""
    from ssdcli.videos import probe_video

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
    detector: Detector, video: VideoSource, fps: float, target: Path | None, sink: Sink, batch_size: int,
    workers: int,
) -> None:
    """Detect on every frame of a video (or a camera until it ends), writing the rendered video
    to ``target`` at ``fps``, the source's frame rate."""
    from torch.utils.data import DataLoader

    from ssdcli.image_files import collate_items
    from ssdcli.inference import predict_batches, preprocessing_of_detector
    from ssdcli.render import open_video_writer
    from ssdcli.videos import VideoFrames

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
