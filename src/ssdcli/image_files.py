"""Image files as network inputs for inference: the DataLoader dataset of ``ssd detect``,
``ssd eval --weights`` and int8 calibration, and the batch collation they share with video frames."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ssdcli.data.images import read_image_rgb, read_image_rgb_at_least
from ssdcli.data.resolution import inference_side
from ssdcli.errors import DataError
from ssdcli.preprocessing import Preprocessing, to_network_input


class ImageFiles(Dataset):
    """Image files -> ``(input float Tensor[3, S, S] normalised, (width, height), index, error,
    read seconds, original)``.

    An unreadable image yields ``error`` (a message) and an empty input instead of raising, so a
    folder with some bad files still processes the rest; the caller decides what an error means.
    ``original`` is the decoded image, uint8 Tensor[H, W, 3] RGB, when ``keep_original`` (for
    drawing on it; a tensor so the worker hands it over in shared memory), else ``None``.

    The input is :func:`ssdcli.preprocessing.to_network_input` with ``preprocessing`` (default:
    this project's own, RGB and the ``uint8`` resize, with ``mean`` / ``std``). A large JPEG is
    decoded reduced (:mod:`ssdcli.data.resolution`) only under the ``uint8`` rule: an imported
    model's rule is its source's, applied to the full image.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        keep_original: bool = False,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.preprocessing = preprocessing or Preprocessing(size, "rgb", tuple(mean), tuple(std), "uint8")
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        start = time.perf_counter()
        try:
            # A large JPEG decoded reduced, still >= 2 S pixels a side (ssdcli.data.resolution).
            side = inference_side(self.size) if self.preprocessing.resize == "uint8" else 1 << 30
            decoded = read_image_rgb_at_least(self.paths[index], side, side)
            full = decoded.rgb if decoded.scale == 1 or not self.keep_original else read_image_rgb(self.paths[index])
        except DataError as exc:
            return torch.zeros(3, self.size, self.size), (0, 0), index, str(exc), time.perf_counter() - start, None
        chw = torch.from_numpy(decoded.rgb).permute(2, 0, 1)  # (3, h, w) uint8 RGB
        tensor = to_network_input(chw, self.preprocessing)  # (3, S, S)
        kept = torch.from_numpy(full) if self.keep_original else None  # (H, W, 3) uint8 RGB, full size
        return tensor, (decoded.width, decoded.height), index, None, time.perf_counter() - start, kept


def collate_items(batch):
    """Batch :class:`ImageFiles` / :class:`ssdcli.videos.VideoFrames` items:
    ``(inputs Tensor[B, 3, S, S], sizes, indices, errors, read seconds summed, originals)``."""
    images = torch.stack([item[0] for item in batch])  # (B, 3, S, S)
    return (
        images,
        [item[1] for item in batch],
        [item[2] for item in batch],
        [item[3] for item in batch],
        sum(item[4] for item in batch),
        [item[5] for item in batch],
    )
