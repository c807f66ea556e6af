"""Named weights: ``torchvision:NAME`` -> the file torchvision publishes, through its own enums.

The URLs and categories come from torchvision's weights enums (``SSD300_VGG16_Weights.COCO_V1``
...), never typed here, so they follow the installed torchvision. :func:`fetch_named` returns
the local file (torch.hub's cache, or a download with progress: :mod:`ssdcli.downloads`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ssdcli.downloads import ProgressCallback, cache_path, fetch_cached
from ssdcli.errors import UserError

NAME_PATTERN = re.compile(r"^(?P<namespace>[A-Za-z][A-Za-z0-9_.-]+):(?P<model>[^/\\]*)$")
"""``namespace:model``; a one-letter namespace would be a Windows drive (``C:``), not a name."""


@dataclass(frozen=True)
class PublishedWeights:
    """A weights file published by another project.

    Attributes:
        name: how users write it (``torchvision:ssd300_vgg16``).
        url: download address; its file name is the torch.hub cache name.
        what: a plural noun phrase for messages ("torchvision's COCO ssd300_vgg16 weights").
        format: the import format (:data:`ssdcli.pretrained.state_dict.FORMATS`), ``None`` for
            backbones.
    """

    name: str
    url: str
    what: str
    format: str | None

    @property
    def cache_path(self) -> Path:
        return cache_path(self.url)


def detectors() -> dict[str, PublishedWeights]:
    """The detectors ``ssd import`` and ``--weights`` accept by name."""
    from torchvision.models.detection import SSD300_VGG16_Weights, SSDLite320_MobileNet_V3_Large_Weights

    entries = (
        ("torchvision:ssd300_vgg16", SSD300_VGG16_Weights.COCO_V1, "torchvision-ssd300"),
        (
            "torchvision:ssdlite320_mobilenet_v3_large",
            SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
            "torchvision-ssdlite320",
        ),
    )
    return {
        name: PublishedWeights(name, weights.url, f"torchvision's COCO {name.split(':')[1]} weights", fmt)
        for name, weights, fmt in entries
    }


def backbones() -> dict[str, PublishedWeights]:
    """ImageNet backbones for ``--backbone-weights`` (keyed by our arch family)."""
    from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights

    return {
        "vgg16": PublishedWeights(
            "torchvision:vgg16", VGG16_Weights.IMAGENET1K_V1.url, "the ImageNet VGG16 weights", None
        ),
        "mobilenet_v3_large": PublishedWeights(
            "torchvision:mobilenet_v3_large",
            MobileNet_V3_Large_Weights.IMAGENET1K_V1.url,
            "the ImageNet MobileNetV3-Large weights",
            None,
        ),
    }


def is_model_name(source: str) -> bool:
    """Whether ``source`` is written as a name (``torchvision:...``) rather than a file path."""
    return bool(NAME_PATTERN.match(source)) and not Path(source).exists()


def lookup(name: str) -> PublishedWeights:
    """The published detector called ``name``.

    Raises:
        UserError: unknown name; the message lists the known ones.
    """
    known = detectors()
    if name not in known:
        raise UserError(f"unknown model name {name!r}; known names: {', '.join(known)}")
    return known[name]


def fetch_named(weights: PublishedWeights, on_progress: ProgressCallback | None = None, advice: str = "") -> Path:
    """The local file of ``weights`` (cached, or downloaded with ``on_progress``).

    Raises:
        UserError: offline without the file: names the URL and the path to put the file at.
    """
    return fetch_cached(weights.url, weights.what, on_progress, advice)
