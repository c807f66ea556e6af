"""torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` as ssdcli networks.

Both are our architectures with another module layout (``benchmarks/reference.py`` shows the
raw outputs equal for SSD300). Key correspondence, ours -> torchvision:

=======================================  ===============================================
``backbone.vgg.{0..22}`` conv1..4_3      ``backbone.features.{0..22}``
``backbone.vgg.{23..29}`` pool4..5_3     ``backbone.extra.0.{0..6}``
``backbone.vgg.31`` / ``.33`` fc6 / fc7  ``backbone.extra.0.7.1`` / ``.3`` (``.0`` = pool5)
``backbone.conv4_3_norm.weight``         ``backbone.scale_weight``
``backbone.extras.{j}``                  ``backbone.extra.{j + 1}``
``backbone.stage16.{i}`` (SSDLite)       ``backbone.features.0.{i}``
``backbone.stage32.{j}``, j < r          ``backbone.features.1.0.{j + 1}`` (r = 3: the split
                                         block's depthwise, SE and projection keep their
                                         indices in torchvision's ``block[1:]`` slice)
``backbone.stage32.{j}``, j >= r         ``backbone.features.1.{j - r + 1}``
``backbone.extras.{j}`` (SSDLite)        ``backbone.extra.{j}``
``loc_heads.{i}`` / ``conf_heads.{i}``   ``head.regression_head.module_list.{i}`` /
                                         ``head.classification_head.module_list.{i}``
=======================================  ===============================================

Row order and columns of the heads agree (torchvision views ``(N, A*K, H, W)`` as
``(N, A, K, H, W)`` and permutes to ``(N, H, W, A, K)``), and so does the order of the default
boxes of a location; BatchNorm eps is 0.001 on both sides (the momentum differs, 0.03 there,
which only matters for training). SSDLite comes with MobileNetV3's reduced tail (torchvision's COCO
weights) or its full tail (any model built around ImageNet weights), told apart by the width of
the first extra block's input. What differs from our presets, and is therefore imported:

- default boxes: SSD300 scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 (not Caffe's 30/300 ...);
  both models clamp each box's ``w, h`` to [0, 1] (``clip="size"``), not its corners;
- input: RGB in [0, 1], normalised (SSD300: mean 0.48235, 0.45882, 0.40784 with std 1/255,
  i.e. 0-255 values minus the mean; SSDLite: 0.5 / 0.5), then resized as a float image;
- post-processing: every decoded box clipped to the image before NMS; SSD300 score 0.01, NMS 0.45,
  400 candidates per class, 200 per image; SSDLite 0.001, 0.55, 300, 300.

Numerics that differ without mattering: torchvision's L2 norm divides by ``max(|x|, 1e-12)``
(``F.normalize``), ours by ``sqrt(|x|^2 + 1e-10)``; the two agree to float rounding unless a
conv4_3 location has a norm below about 1e-4 (ReLU features of a real image do not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch import Tensor

from ssdcli.models import build_model
from ssdcli.models.mobilenet import MobileNetV3Backbone
from ssdcli.pretrained.convert import classes_from_heads, load_mapped
from ssdcli.pretrained.info import ImportedModel, PostprocessRule, Preprocessing
from ssdcli.pretrained.labels import coco91_labels, label_space
from ssdcli.priors import PriorSpec, ssd300_spec, ssdlite320_spec

SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
"""torchvision ``ssd300_vgg16``: ``DefaultBoxGenerator(scales=...)``, one more than layers."""

POOL4, POOL5, FC6, FC7 = 23, 30, 31, 33  # indices in VGG16 ``features`` / our ``backbone.vgg``

KNOWN_LABELS = {91: coco91_labels}
"""torchvision's COCO models have 91 outputs; other counts get generic names unless given."""

SSD300_PREPROCESSING = Preprocessing(300, "rgb", (0.48235, 0.45882, 0.40784), (1 / 255,) * 3, "float")
SSDLITE320_PREPROCESSING = Preprocessing(320, "rgb", (0.5,) * 3, (0.5,) * 3, "float")
SSD300_POSTPROCESS = PostprocessRule("torchvision", 0.01, 0.45, 400, 200)
SSDLITE320_POSTPROCESS = PostprocessRule("torchvision", 0.001, 0.55, 300, 300)


def torchvision_ssd300_spec() -> PriorSpec:
    """torchvision ``ssd300_vgg16``'s default boxes: our SSD300 layout with its scales, 8732 boxes."""
    base = ssd300_spec()
    layers = tuple(
        replace(layer, min_size=base.image_size * lo, max_size=base.image_size * hi)
        for layer, lo, hi in zip(base.layers, SSD300_SCALES[:-1], SSD300_SCALES[1:], strict=True)
    )
    return replace(base, name="torchvision_ssd300", layers=layers, clip="size")


def torchvision_ssdlite320_spec() -> PriorSpec:
    """torchvision ``ssdlite320_mobilenet_v3_large``'s default boxes (``min_ratio=0.2,
    max_ratio=0.95``, centres ``(i + 0.5) / f``): our ``ssdlite320`` preset, clipped as theirs."""
    return replace(ssdlite320_spec(), name="torchvision_ssdlite320", clip="size")


def ssd300_key(key: str) -> str:
    """The torchvision ``ssd300_vgg16`` key of one of our SSD300 keys (module docstring table)."""
    parts = key.split(".")
    if parts[:2] == ["backbone", "vgg"]:
        index, rest = int(parts[2]), ".".join(parts[3:])
        if index < POOL4:
            return f"backbone.features.{index}.{rest}"
        if index < POOL5:
            return f"backbone.extra.0.{index - POOL4}.{rest}"
        if index in (FC6, FC7):
            return f"backbone.extra.0.7.{index - POOL5}.{rest}"
    elif key == "backbone.conv4_3_norm.weight":
        return "backbone.scale_weight"
    elif parts[:2] == ["backbone", "extras"]:
        return f"backbone.extra.{int(parts[2]) + 1}.{'.'.join(parts[3:])}"
    elif parts[0] in ("loc_heads", "conf_heads"):
        return _head_key(parts)
    raise KeyError(f"no torchvision ssd300_vgg16 counterpart for {key!r}")


def ssdlite320_key(key: str, split_rest: int) -> str:
    """The torchvision ``ssdlite320_mobilenet_v3_large`` key of one of our ssdlite320 keys.

    ``split_rest``: :attr:`MobileNetV3Backbone.split_rest` (3 for MobileNetV3-Large).
    """
    parts = key.split(".")
    if parts[:2] == ["backbone", "stage16"]:
        return f"backbone.features.0.{'.'.join(parts[2:])}"
    if parts[:2] == ["backbone", "stage32"]:
        index, rest = int(parts[2]), ".".join(parts[3:])
        if index < split_rest:
            return f"backbone.features.1.0.{index + 1}.{rest}"
        return f"backbone.features.1.{index - split_rest + 1}.{rest}"
    if parts[:2] == ["backbone", "extras"]:
        return f"backbone.extra.{'.'.join(parts[2:])}"
    if parts[0] in ("loc_heads", "conf_heads"):
        return _head_key(parts)
    raise KeyError(f"no torchvision ssdlite320_mobilenet_v3_large counterpart for {key!r}")


def _head_key(parts: list[str]) -> str:
    head = "regression_head" if parts[0] == "loc_heads" else "classification_head"
    return f"head.{head}.module_list.{'.'.join(parts[1:])}"


def convert_ssd300(
    state: Mapping[str, Tensor], source: str, class_names: Sequence[str] | None = None
) -> ImportedModel:
    """A torchvision ``ssd300_vgg16`` state dict (any number of classes) as an :class:`ImportedModel`.

    Raises:
        UserError: not exactly that layout (module docstring), or wrong ``class_names``.
    """
    layout = "torchvision ssd300_vgg16"
    spec = torchvision_ssd300_spec()
    keys = [f"head.classification_head.module_list.{i}.weight" for i in range(len(spec.layers))]
    outputs = classes_from_heads(state, keys, spec.boxes_per_location, source, layout)
    labels = label_space(outputs, class_names, source, KNOWN_LABELS)
    model = build_model("ssd300", num_classes=outputs - 1, prior_spec=spec)
    load_mapped(model, state, ssd300_key, source, layout)
    return _imported(model, source, "torchvision-ssd300", labels, SSD300_PREPROCESSING, SSD300_POSTPROCESS)


FULL_TAIL_CHANNELS = 960
"""Input channels of the first extra block when MobileNetV3's last stage has full width."""


def has_full_tail(state: Mapping[str, Tensor]) -> bool:
    """Whether a torchvision SSDLite state dict has MobileNetV3's full last stage.

    torchvision builds the reduced tail (half width, 480 channels at the end) when there are no
    ImageNet backbone weights, as for its COCO weights, and the full one (960) around them, the
    default of ``ssdlite320_mobilenet_v3_large(weights=None)``: what most fine-tuned models have.
    """
    first_extra = state.get("backbone.extra.0.0.0.weight")
    return first_extra is not None and first_extra.dim() == 4 and first_extra.shape[1] == FULL_TAIL_CHANNELS


def convert_ssdlite320(
    state: Mapping[str, Tensor], source: str, class_names: Sequence[str] | None = None
) -> ImportedModel:
    """A torchvision ``ssdlite320_mobilenet_v3_large`` state dict (width 1.0; reduced or full
    tail, see :func:`has_full_tail`) as an :class:`ImportedModel`.

    Raises:
        UserError: not exactly that layout, or wrong ``class_names``.
    """
    full_tail = has_full_tail(state)
    layout = f"torchvision ssdlite320_mobilenet_v3_large (width 1.0, {'full' if full_tail else 'reduced'} tail)"
    spec = torchvision_ssdlite320_spec()
    keys = [f"head.classification_head.module_list.{i}.1.weight" for i in range(len(spec.layers))]
    outputs = classes_from_heads(state, keys, spec.boxes_per_location, source, layout)
    labels = label_space(outputs, class_names, source, KNOWN_LABELS)
    model = build_model(
        "ssdlite320", num_classes=outputs - 1, prior_spec=spec, width_mult=1.0, reduced_tail=not full_tail
    )
    backbone = model.backbone
    assert isinstance(backbone, MobileNetV3Backbone)
    load_mapped(model, state, lambda key: ssdlite320_key(key, backbone.split_rest), source, layout)
    return _imported(model, source, "torchvision-ssdlite320", labels, SSDLITE320_PREPROCESSING, SSDLITE320_POSTPROCESS)


def _imported(model, source, source_format, labels, prep: Preprocessing, rule: PostprocessRule) -> ImportedModel:
    model.mean, model.std = prep.mean, prep.std
    names, category_ids, ignored = labels
    return ImportedModel(model.eval(), source, source_format, names, category_ids, ignored, prep, rule)
