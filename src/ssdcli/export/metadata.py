"""What an exported model says about itself: names, input format, classes, post-processing.

``ssd export`` stores :class:`ExportMetadata` in the file (ONNX ``metadata_props``, all strings,
lists and dicts as json; TorchScript ``_extra_files["ssdcli.json"]``) so that a deployment needs
nothing else: :mod:`ssdcli.export.runtime` and ``examples/onnx_inference.py`` read it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ssdcli.postprocess import PostprocessSettings
from ssdcli.preprocessing import Preprocessing
from ssdcli.priors import PriorSpec

RESIZE_WORDS = {
    "uint8": "bilinear, no antialias, on the uint8 image, rounded to uint8, before normalising",
    "float": "bilinear, align_corners=False, on the normalised float image",
    "cv2": "cv2.resize INTER_LINEAR on the uint8 image, before normalising",
}

RAW_OUTPUTS: tuple[str, ...] = ("cls_logits", "box_deltas", "priors")
DETECTION_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "labels", "batch_index")
INPUT_NAME = "images"

_METADATA_JSON_KEYS = (
    "class_names",
    "mean",
    "std",
    "postprocess_settings",
    "variances",
    "prior_spec",
    "outputs",
    "category_ids",
    "ignored_labels",
)


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself; stored as strings (ONNX) or json (TorchScript).

    Attributes:
        arch: architecture name (``ssd300`` ...).
        class_names: the classes; label ``i`` (1-based) is ``class_names[i - 1]``.
        image_size: input side S; images are resized to S x S without keeping the aspect ratio.
        mean, std: per-channel RGB normalisation for pixels scaled to [0, 1].
        postprocess: True when the graph outputs detections, False for raw outputs.
        settings: the embedded post-processing (detections) or the recommended one (raw).
        variances: box-coding variances ``(centre, size)`` of :mod:`ssdcli.codec`: the
            checkpoint's own (its prior spec), which the graph decodes with.
        prior_spec: :meth:`ssdcli.priors.PriorSpec.to_dict` of the default boxes.
        ssdcli_version: the version that wrote the file.
        channel_order, resize: the input's channel order (``rgb`` / ``bgr``) and resize rule
            (:data:`ssdcli.preprocessing.RESIZE_RULES`); files without them are ``rgb`` / ``uint8``.
        category_ids: the COCO category id of each label, or ``None``.
        ignored_labels: labels that are no class; a ``--postprocess`` graph never outputs them,
            a raw one does and its user drops them.
    """

    arch: str
    class_names: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    postprocess: bool
    settings: PostprocessSettings
    variances: tuple[float, float]
    prior_spec: dict = field(default_factory=dict)
    ssdcli_version: str = ""
    channel_order: str = "rgb"
    resize: str = "uint8"
    category_ids: list[int] | None = None
    ignored_labels: tuple[int, ...] = ()

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.channel_order, tuple(self.mean), tuple(self.std), self.resize)

    @property
    def outputs(self) -> tuple[str, ...]:
        return DETECTION_OUTPUTS if self.postprocess else RAW_OUTPUTS

    def to_dict(self) -> dict[str, Any]:
        """Every key with its value, plus human-readable descriptions of input and outputs."""
        size = self.image_size
        if self.postprocess:
            coordinates = (
                "boxes: xyxy normalised to [0, 1] of the original image (x by its width, y by its height); "
                "scores: class probability, descending within an image; labels: 1-based index into "
                "class_names; batch_index: the input image of each detection"
            )
        else:
            coordinates = (
                "priors: cxcywh normalised to [0, 1]; box_deltas (dcx, dcy, dw, dh): cx = pcx + dcx * v0 * pw, "
                "cy = pcy + dcy * v0 * ph, w = pw * exp(dw * v1), h = ph * exp(dh * v1) with variances "
                "[v0, v1]; cls_logits: column 0 is background, softmax over the last axis"
            )
        return {
            "ssdcli_version": self.ssdcli_version,
            "ssdcli_export": "detections" if self.postprocess else "raw",
            "arch": self.arch,
            "class_names": list(self.class_names),
            "num_classes": len(self.class_names),
            "image_size": size,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_name": INPUT_NAME,
            "channel_order": self.channel_order,
            "resize": self.resize,
            "input_format": (
                f"float32 [N, 3, {size}, {size}]: {self.channel_order.upper()}, /255, then (x-mean)/std "
                f"(mean and std in that channel order), resized to {size}x{size} without keeping aspect "
                f"({RESIZE_WORDS[self.resize]})"
            ),
            "category_ids": self.category_ids,
            "ignored_labels": list(self.ignored_labels),
            "outputs": list(self.outputs),
            "coordinates": coordinates,
            "postprocess_settings": self.settings.to_dict(),
            "variances": list(self.variances),
            "prior_spec": self.prior_spec,
        }

    def to_strings(self) -> dict[str, str]:
        """ONNX ``metadata_props``: plain strings, lists and dicts as json."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExportMetadata:
        """Inverse of :meth:`to_dict` (and, for string values, of :meth:`to_strings`).

        Raises:
            ValueError: a key is missing or malformed.
        """
        try:
            parsed = {
                k: json.loads(v) if k in _METADATA_JSON_KEYS and isinstance(v, str) else v for k, v in values.items()
            }
            kind = parsed["ssdcli_export"]
            if kind not in ("raw", "detections"):
                raise ValueError(f"ssdcli_export is {kind!r}, expected 'raw' or 'detections'")
            return cls(
                arch=str(parsed["arch"]),
                class_names=[str(name) for name in parsed["class_names"]],
                image_size=int(parsed["image_size"]),
                mean=tuple(float(m) for m in parsed["mean"]),
                std=tuple(float(s) for s in parsed["std"]),
                postprocess=kind == "detections",
                # exports written before the rule existed clipped every box first
                settings=PostprocessSettings(**{"rule": "torchvision", **parsed["postprocess_settings"]}),
                variances=_pair(parsed["variances"]),
                prior_spec=dict(parsed.get("prior_spec", {})),
                ssdcli_version=str(parsed.get("ssdcli_version", "")),
                channel_order=str(parsed.get("channel_order", "rgb")),
                resize=str(parsed.get("resize", "uint8")),
                category_ids=None if parsed.get("category_ids") is None else [int(i) for i in parsed["category_ids"]],
                ignored_labels=tuple(int(i) for i in parsed.get("ignored_labels", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed ssdcli export metadata: {exc!r}") from exc


def _pair(values: Any) -> tuple[float, float]:
    """``[v0, v1]`` -> ``(v0, v1)`` as floats; anything else is malformed."""
    centre, size = values  # ValueError / TypeError unless exactly two
    return float(centre), float(size)


def metadata_for(checkpoint: dict, postprocess: bool, settings: PostprocessSettings) -> ExportMetadata:
    """The metadata an export of ``checkpoint`` carries."""
    from ssdcli import __version__

    spec = PriorSpec.from_dict(checkpoint["priors"])
    return ExportMetadata(
        arch=str(checkpoint["arch"]),
        class_names=[str(name) for name in checkpoint["class_names"]],
        image_size=int(checkpoint["image_size"]),
        mean=tuple(float(m) for m in checkpoint["mean"]),
        std=tuple(float(s) for s in checkpoint["std"]),
        postprocess=postprocess,
        settings=settings,
        variances=spec.variances,
        prior_spec=dict(checkpoint["priors"]),
        ssdcli_version=__version__,
        channel_order=str(checkpoint.get("channel_order", "rgb")),
        resize=str(checkpoint.get("resize", "uint8")),
        category_ids=checkpoint.get("category_ids"),
        ignored_labels=tuple(checkpoint.get("ignored_labels", ())),
    )
