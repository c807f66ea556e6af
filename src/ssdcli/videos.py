"""Video and webcam frames for ``ssd detect``: :func:`probe_video` reads what a source reports,
:class:`VideoFrames` (an ``IterableDataset``) reads and pre-processes its frames in a DataLoader
worker while the model runs on the current batch. The sources themselves are
:class:`ssdcli.sources.VideoSource`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from ssdcli.errors import UserError
from ssdcli.preprocessing import to_network_input
from ssdcli.sources import VideoSource

DEFAULT_FPS = 25.0
"""Frame rate assumed when a video or camera does not report one (OpenCV returns 0)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video or camera reports: frame size in pixels, frames per second, frame count
    (``None`` for a camera or when the container does not say)."""

    width: int
    height: int
    fps: float
    frames: int | None


def _open_capture(source: VideoSource):
    import cv2
    from cv2.utils import logging as cv2_logging

    # OpenCV logs every backend it tried on a failed open (several lines on stderr); the
    # UserError below is the one line the user needs.
    level = cv2_logging.getLogLevel()
    cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)
    try:
        capture = cv2.VideoCapture(str(source.path)) if source.path is not None else cv2.VideoCapture(source.camera)
    finally:
        cv2_logging.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        if source.path is not None:
            raise UserError(f"{source.path}: cannot open this video (OpenCV/FFmpeg cannot decode it)")
        raise UserError(
            f"--webcam {source.camera}: cannot open camera {source.camera}; check that it is connected, "
            "not used by another program, and that this user may access it (e.g. /dev/video*)"
        )
    return capture


def probe_video(source: VideoSource) -> VideoInfo:
    """Open ``source``, read its properties and close it again.

    Raises:
        UserError: the video or camera cannot be opened, or yields no frame.
    """
    import cv2

    capture = _open_capture(source)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if source.path is not None else 0
    finally:
        capture.release()
    if width <= 0 or height <= 0:
        raise UserError(f"{source.name}: reports no frame size; it may be empty or damaged")
    return VideoInfo(width, height, fps if fps > 0 else DEFAULT_FPS, count if count > 0 else None)


class VideoFrames(IterableDataset):
    """Frames of one video or camera, pre-processed as :class:`ssdcli.image_files.ImageFiles` does.

    Yields the items :func:`ssdcli.image_files.collate_items` batches: ``(input float Tensor[3, S, S]
    normalised, (width, height), frame index, None, read seconds, original uint8 Tensor[H, W, 3]
    RGB)``. Use it with at most one DataLoader worker: a video is read sequentially, and each
    worker would read every frame.
    """

    def __init__(
        self, source: VideoSource, size: int, mean: Sequence[float], std: Sequence[float], preprocessing=None
    ) -> None:
        from ssdcli.preprocessing import Preprocessing

        self.source = source
        self.size = size
        self.preprocessing = preprocessing or Preprocessing(size, "rgb", tuple(mean), tuple(std), "uint8")

    def __iter__(self) -> Iterator[tuple]:

        capture = _open_capture(self.source)
        try:
            index = 0
            while True:
                start = time.perf_counter()
                ok, frame_bgr = capture.read()
                if not ok:
                    return
                original = torch.from_numpy(np.ascontiguousarray(frame_bgr[:, :, ::-1]))  # (H, W, 3) RGB
                height, width = original.shape[:2]
                chw = original.permute(2, 0, 1)  # (3, H, W)
                tensor: Tensor = to_network_input(chw, self.preprocessing)  # (3, S, S)
                yield tensor, (width, height), index, None, time.perf_counter() - start, original
                index += 1
        finally:
            capture.release()
