"""Detectors trained elsewhere, as ssdcli networks: torchvision's SSD300 / SSDLite, ssd.pytorch.

:func:`import_weights` turns a state-dict file, or a name such as ``torchvision:ssd300_vgg16``,
into an :class:`ImportedModel`: our network with the weights loaded, plus everything else the
source model needs to give the source's detections (default boxes, class names and COCO ids,
preprocessing, post-processing). One module per source holds its conventions, with citations:
:mod:`~ssdcli.pretrained.torchvision_ssd`, :mod:`~ssdcli.pretrained.ssd_pytorch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ssdcli.downloads import ProgressCallback
from ssdcli.errors import UserError
from ssdcli.pretrained.info import ImportedModel, PostprocessRule, Preprocessing
from ssdcli.pretrained.names import detectors, fetch_named, is_model_name, lookup
from ssdcli.pretrained.ssd_pytorch import convert_ssd_pytorch
from ssdcli.pretrained.state_dict import FORMATS, SIGNATURES, read_state_dict, recognise_format
from ssdcli.pretrained.torchvision_ssd import convert_ssd300, convert_ssdlite320

__all__ = [
    "FORMATS",
    "ImportedModel",
    "PostprocessRule",
    "Preprocessing",
    "detectors",
    "import_weights",
    "is_model_name",
]

CONVERTERS: dict[str, Callable[..., ImportedModel]] = {
    "torchvision-ssd300": convert_ssd300,
    "torchvision-ssdlite320": convert_ssdlite320,
    "ssd.pytorch": convert_ssd_pytorch,
}
"""Import format -> ``converter(state, source, class_names=None, **options) -> ImportedModel``."""


def import_weights(
    source: str | Path,
    source_format: str = "auto",
    class_names: Sequence[str] | None = None,
    channel_order: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> ImportedModel:
    """Convert another project's SSD weights into an ssdcli network.

    Args:
        source: a state-dict file (bare, or inside a training checkpoint dict under ``model`` /
            ``state_dict`` ...), or a name of :func:`detectors` (``torchvision:ssd300_vgg16``).
        source_format: ``auto`` (recognised from the keys) or one of :data:`FORMATS`.
        class_names: names of the classes, background excluded, overriding the defaults (COCO
            for 91 torchvision outputs, VOC / COCO for 21 / 81 ssd.pytorch outputs, else
            ``class_1`` ...).
        channel_order: ``rgb`` or ``bgr`` for ssd.pytorch weights (default ``rgb``; see
            :mod:`~ssdcli.pretrained.ssd_pytorch`); other formats have a fixed order.
        on_progress: download progress of a name that is not cached yet.

    Raises:
        UserError: unknown name or format, offline without the file, an unreadable or unsafe
            file, or a state dict that is not exactly the format's layout (one line naming the
            file and what is wrong).
    """
    if source_format not in ("auto", *FORMATS):
        raise UserError(f"unknown import format {source_format!r}; choose auto, {', '.join(FORMATS)}")
    record = str(source)
    if isinstance(source, str) and is_model_name(source):
        weights = lookup(source)
        if source_format not in ("auto", weights.format):
            raise UserError(f"--format {source_format} does not apply to {source}, which is {weights.format}")
        path = fetch_named(weights, on_progress)
        source_format = weights.format or source_format
    else:
        path = Path(source).expanduser()
        record = str(path)
    state = read_state_dict(path)
    label = str(path)
    if source_format == "auto":
        source_format = recognise_format(state, label)
    else:
        _check_forced_format(state, source_format, label)
    options = {}
    if channel_order is not None:
        if source_format != "ssd.pytorch":
            raise UserError(
                f"{label}: a channel order is only chosen for ssd.pytorch weights; {source_format} takes RGB"
            )
        options["channel_order"] = channel_order
    imported = CONVERTERS[source_format](state, label, class_names, **options)
    return replace(imported, source=record)


def _check_forced_format(state, source_format: str, label: str) -> None:
    """A forced format whose signature keys are absent while another format's are present is a
    clear mistake: say which layout the file has."""
    present = [name for name, keys in SIGNATURES.items() if all(key in state for key in keys)]
    if source_format not in present and len(present) == 1:
        raise UserError(
            f"{label}: --format {source_format} given, but its keys are those of {present[0]} "
            f"({', '.join(SIGNATURES[present[0]])}); use --format {present[0]} or auto"
        )

