"""What a detection run produces (:class:`DetectedImage`, :class:`DetectSummary`), the hooks that
follow it (:class:`DetectEvents`), and :class:`Sink`: where each result goes (the counters, the
json files, the window). :mod:`ssdcli.detect` runs the pipeline over them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.files import JsonListWriter
from ssdcli.inference import Timings, detection_entries
from ssdcli.postprocess import Detections


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


def open_json(path: Path | None, flag: str) -> JsonListWriter | None:
    if path is None:
        return None
    try:
        return JsonListWriter(path)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


@dataclass
class Sink:
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
