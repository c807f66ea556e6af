"""Default boxes ("priors"): SSD paper sec. 2.2 "Choosing scales and aspect ratios".

A :class:`PriorSpec` describes, per source layer, the feature-map size, the step (pixels between
neighbouring centres), the min/max box sizes and the extra aspect ratios. :func:`generate_priors`
turns it into ``Tensor[P, 4]`` boxes ``cxcywh`` normalised to [0, 1], in exactly the order the
network's outputs use: layer by layer, then row-major over the feature map (y, then x), then the
boxes of one location.

The presets reproduce the authors' released Caffe configurations (``ssd_pascal.py``,
``ssd_pascal512.py``, ``ssd_coco.py``) and the box layout of Caffe's ``prior_box_layer.cpp``:
per location the min-size square, the sqrt(min * max) square, then ``ar`` and ``1 / ar`` for each
listed aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

VARIANCES: tuple[float, float] = (0.1, 0.2)
"""Caffe's ``prior_variance``: 0.1 for the centre deltas, 0.2 for the log-size deltas."""

CLIP_MODES: dict[bool | str, str] = {False: "none", True: "corners", "size": "size", "cxcywh": "cxcywh"}
"""Values of :attr:`PriorSpec.clip` -> the name of the rule (:attr:`PriorSpec.clip_mode`)."""


@dataclass(frozen=True)
class LayerPriors:
    """Default boxes of one source layer.

    Attributes:
        feature_map: side of the (square) feature map, in cells.
        step: distance in input pixels between neighbouring centres.
        min_size: side of the small square box, in input pixels.
        max_size: with ``min_size`` gives the second square, side ``sqrt(min_size * max_size)``.
        aspect_ratios: extra ratios ``w / h``; each adds ``ar`` and (flipped) ``1 / ar``.
    """

    feature_map: int
    step: float
    min_size: float
    max_size: float
    aspect_ratios: tuple[float, ...]

    @property
    def boxes_per_location(self) -> int:
        """Two squares plus two boxes (ar, 1/ar) per listed aspect ratio."""
        return 2 + 2 * len(self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        return self.feature_map * self.feature_map * self.boxes_per_location


@dataclass(frozen=True)
class PriorSpec:
    """All default boxes of a network with a square input of ``image_size`` pixels.

    Attributes:
        name: preset name (``ssd300`` ...), informative only.
        image_size: network input side in pixels.
        layers: one :class:`LayerPriors` per source layer, in output order.
        offset: centre offset within a cell, in cells (Caffe ``offset``, 0.5 = cell centre).
        clip: how boxes are clamped to [0, 1] after generation. ``False``: not at all (the
            released Caffe models); ``True``: Caffe's ``clip``, the corners; ``"size"``:
            torchvision's ``DefaultBoxGenerator(clip=True)``, only ``w`` and ``h`` (centres
            kept, so a box may still stick out); ``"cxcywh"``: ssd.pytorch's ``PriorBox``, all
            four cxcywh values. (Booleans for the first two, as checkpoints have always stored.)
        variances: ``(centre, size)`` variances used by the box codec.
    """

    name: str
    image_size: int
    layers: tuple[LayerPriors, ...]
    offset: float = 0.5
    clip: bool | str = False
    variances: tuple[float, float] = VARIANCES

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, bool) or self.clip in ("size", "cxcywh")):
            modes = ", ".join(repr(mode) for mode in CLIP_MODES)
            raise ValueError(f"prior clip {self.clip!r}: expected one of {modes}")

    @property
    def clip_mode(self) -> str:
        """``"none"``, ``"corners"`` (Caffe), ``"size"`` (torchvision) or ``"cxcywh"`` (ssd.pytorch)."""
        return CLIP_MODES[self.clip]

    @property
    def feature_maps(self) -> tuple[int, ...]:
        return tuple(layer.feature_map for layer in self.layers)

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        return tuple(layer.boxes_per_location for layer in self.layers)

    @property
    def num_priors(self) -> int:
        return sum(layer.num_priors for layer in self.layers)

    def with_feature_maps(self, feature_maps: tuple[int, ...] | list[int]) -> PriorSpec:
        """The same boxes laid on feature maps of other sizes (as measured on a network)."""
        if len(feature_maps) != len(self.layers):
            raise ValueError(
                f"{self.name}: {len(feature_maps)} feature maps given for {len(self.layers)} prior layers"
            )
        layers = tuple(replace(layer, feature_map=int(f)) for layer, f in zip(self.layers, feature_maps))
        return replace(self, layers=layers)

    def with_linear_scales(self, min_scale: float, max_scale: float) -> PriorSpec:
        """The same layout (feature maps, steps, aspect ratios) with sizes spread linearly over
        the layers, SSD paper eq. 4: layer k of m gets ``s_k = min + (max - min) k / (m - 1)`` of
        the input as its min size and ``s_{k+1}`` as its max size (the sqrt(min * max) square),
        with ``s_{m} = 1.0`` after the last layer (torchvision's ``DefaultBoxGenerator``).

        ``ssd train --prior-scales MIN MAX`` and ``ssd priors --prior-scales`` use this to fit
        the default boxes to a dataset's objects (``ssd priors --data`` shows how well they do).

        Raises:
            ValueError: unless ``0 < min_scale < max_scale <= 1``.
        """
        if not 0.0 < min_scale < max_scale <= 1.0:
            raise ValueError(f"prior scales {min_scale}, {max_scale}: need 0 < MIN < MAX <= 1")
        count = len(self.layers)
        scales = [min_scale + (max_scale - min_scale) * k / max(count - 1, 1) for k in range(count)] + [1.0]
        layers = tuple(
            replace(layer, min_size=self.image_size * lo, max_size=self.image_size * hi)
            for layer, lo, hi in zip(self.layers, scales[:-1], scales[1:])
        )
        return replace(self, name=f"{self.name}@{min_scale:g}-{max_scale:g}", layers=layers)

    def to_dict(self) -> dict:
        """Plain numbers and lists, as stored in checkpoints and export metadata."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "offset": self.offset,
            "clip": self.clip,
            "variances": list(self.variances),
            "layers": [
                {
                    "feature_map": layer.feature_map,
                    "step": layer.step,
                    "min_size": layer.min_size,
                    "max_size": layer.max_size,
                    "aspect_ratios": list(layer.aspect_ratios),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PriorSpec:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed mapping."""
        try:
            layers = tuple(
                LayerPriors(
                    feature_map=int(layer["feature_map"]),
                    step=float(layer["step"]),
                    min_size=float(layer["min_size"]),
                    max_size=float(layer["max_size"]),
                    aspect_ratios=tuple(float(a) for a in layer["aspect_ratios"]),
                )
                for layer in data["layers"]
            )
            return cls(
                name=str(data["name"]),
                image_size=int(data["image_size"]),
                layers=layers,
                offset=float(data["offset"]),
                clip=_clip_from_plain(data["clip"]),
                variances=(float(data["variances"][0]), float(data["variances"][1])),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"malformed prior settings: {exc!r}") from exc


def _clip_from_plain(value: object) -> bool | str:
    """A stored ``clip``: a bool (every checkpoint so far), or a mode name of :data:`CLIP_MODES`."""
    if isinstance(value, bool) or value in ("size", "cxcywh"):
        return value  # type: ignore[return-value]
    if value in ("none", "corners"):
        return value == "corners"
    raise ValueError(f"unknown prior clip {value!r}")


def _caffe_sizes(
    image_size: int, min_ratio: int, max_ratio: int, num_layers: int, first_min: int, first_max: int
) -> tuple[list[float], list[float]]:
    """Min/max sizes exactly as the authors' ``ssd_pascal*.py`` / ``ssd_coco.py`` compute them.

    The first layer (conv4_3) gets ``first_min`` / ``first_max`` percent of the input; the others
    are spread linearly from ``min_ratio`` to ``max_ratio`` percent in integer steps.
    """
    step = int(math.floor((max_ratio - min_ratio) / (num_layers - 2)))
    min_sizes, max_sizes = [], []
    for ratio in range(min_ratio, max_ratio + 1, step):
        min_sizes.append(image_size * ratio / 100.0)
        max_sizes.append(image_size * (ratio + step) / 100.0)
    min_sizes = [image_size * first_min / 100.0] + min_sizes
    max_sizes = [image_size * first_max / 100.0] + max_sizes
    return min_sizes, max_sizes


def _spec(
    name: str,
    image_size: int,
    feature_maps: tuple[int, ...],
    steps: tuple[float, ...],
    min_sizes: list[float],
    max_sizes: list[float],
    aspect_ratios: tuple[tuple[float, ...], ...],
) -> PriorSpec:
    layers = tuple(
        LayerPriors(feature_map=f, step=float(s), min_size=lo, max_size=hi, aspect_ratios=ar)
        for f, s, lo, hi, ar in zip(feature_maps, steps, min_sizes, max_sizes, aspect_ratios, strict=True)
    )
    return PriorSpec(name=name, image_size=image_size, layers=layers)


def ssd300_spec() -> PriorSpec:
    """SSD300, PASCAL VOC (Caffe ``ssd_pascal.py``): 8732 boxes.

    min sizes 30, 60, 111, 162, 213, 264; max sizes 60, 111, 162, 213, 264, 315.
    """
    min_sizes, max_sizes = _caffe_sizes(300, 20, 90, 6, first_min=10, first_max=20)
    return _spec(
        "ssd300",
        300,
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=min_sizes,
        max_sizes=max_sizes,
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    )


def ssd300_coco_spec() -> PriorSpec:
    """SSD300 with the COCO scales (Caffe ``ssd_coco.py``): smaller boxes, same 8732 layout.

    min sizes 21, 45, 99, 153, 207, 261; max sizes 45, 99, 153, 207, 261, 315.
    """
    min_sizes, max_sizes = _caffe_sizes(300, 15, 90, 6, first_min=7, first_max=15)
    base = ssd300_spec()
    layers = tuple(
        replace(layer, min_size=lo, max_size=hi)
        for layer, lo, hi in zip(base.layers, min_sizes, max_sizes, strict=True)
    )
    return replace(base, name="ssd300_coco", layers=layers)


def ssd512_spec() -> PriorSpec:
    """SSD512, PASCAL VOC (Caffe ``ssd_pascal512.py``): 24564 boxes on 7 layers.

    min sizes 35.84, 76.8, 153.6, 230.4, 307.2, 384, 460.8;
    max sizes 76.8, 153.6, 230.4, 307.2, 384, 460.8, 537.6.
    """
    min_sizes, max_sizes = _caffe_sizes(512, 15, 90, 7, first_min=7, first_max=15)
    return _spec(
        "ssd512",
        512,
        feature_maps=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=min_sizes,
        max_sizes=max_sizes,
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    )


def ssdlite320_spec() -> PriorSpec:
    """SSDLite320 (MobileNetV3-Large, torchvision ``ssdlite320_mobilenet_v3_large``): 3234 boxes.

    Scales spread linearly from 0.2 to 0.95 of the input as torchvision's ``DefaultBoxGenerator``
    (``min_ratio=0.2, max_ratio=0.95``, extra scale 1.0), in this module's box layout: min sizes
    64, 112, 160, 208, 256, 304; max sizes 112, 160, 208, 256, 304, 320; aspect ratios [2, 3] on
    every layer; centres at cell centres (step = 320 / feature map).

    The smallest box is 64 px: on the demo's shapes `ssd priors --data` finds 36 % of the objects
    (every small one) without a default box of IoU >= 0.5, and the demo trained on these boxes
    stops at VOC07 mAP 0.68. ``with_linear_scales(0.1, 0.95)`` (``--prior-scales 0.1 0.95``)
    leaves 5 % and the same run reaches 0.93, which is what the demo uses; on BCCD the same
    change trained worse than the preset (README "Measured accuracy"), so the published scales
    stay the preset (``ssd train --priors auto`` fits boxes to the data instead).
    """
    image_size, feature_maps = 320, (20, 10, 5, 3, 2, 1)
    percents = [20 + 15 * k for k in range(len(feature_maps))] + [100]  # 0.2 .. 0.95, then 1.0
    sizes = [image_size * p / 100.0 for p in percents]
    return _spec(
        "ssdlite320",
        image_size,
        feature_maps=feature_maps,
        steps=tuple(image_size / f for f in feature_maps),
        min_sizes=sizes[:-1],
        max_sizes=sizes[1:],
        aspect_ratios=((2, 3),) * len(feature_maps),
    )


PRESETS = {
    "ssd300": ssd300_spec,
    "ssd300_coco": ssd300_coco_spec,
    "ssd512": ssd512_spec,
    "ssdlite320": ssdlite320_spec,
}
"""Preset name -> function returning its :class:`PriorSpec`."""


def preset_spec(name: str, prior_scales: tuple[float, float] | None = None) -> PriorSpec:
    """The preset ``name``, or with ``prior_scales = (MIN, MAX)`` the same layout respread by
    :meth:`PriorSpec.with_linear_scales` (``--prior-scales``).

    Raises:
        ValueError: impossible scales.
    """
    spec = PRESETS[name]()
    return spec if prior_scales is None else spec.with_linear_scales(*prior_scales)


def layer_box_sizes(layer: LayerPriors) -> list[tuple[float, float]]:
    """``(w, h)`` in input pixels of the boxes at one location, in output order.

    Caffe ``prior_box_layer.cpp``: min square, sqrt(min * max) square, then ar and 1/ar.
    """
    sizes = [(layer.min_size, layer.min_size)]
    big = math.sqrt(layer.min_size * layer.max_size)
    sizes.append((big, big))
    for ar in layer.aspect_ratios:
        root = math.sqrt(ar)
        sizes.append((layer.min_size * root, layer.min_size / root))
        sizes.append((layer.min_size / root, layer.min_size * root))
    return sizes


def generate_layer_priors(spec: PriorSpec, layer: LayerPriors) -> Tensor:
    """Default boxes of one layer. Returns ``Tensor[f * f * A, 4]``, cxcywh normalised, float32."""
    f, a = layer.feature_map, layer.boxes_per_location
    # Caffe: center_x = (w + offset) * step_w, divided by the image width.
    centres = (torch.arange(f, dtype=torch.float64) + spec.offset) * layer.step / spec.image_size
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (f, f) each, row-major over y then x
    sizes = torch.tensor(layer_box_sizes(layer), dtype=torch.float64) / spec.image_size  # (A, 2)
    boxes = torch.empty(f, f, a, 4, dtype=torch.float64)
    boxes[..., 0] = cx[..., None]
    boxes[..., 1] = cy[..., None]
    boxes[..., 2:] = sizes  # broadcast over (f, f)
    boxes = boxes.reshape(-1, 4)  # (f*f*A, 4)
    mode = spec.clip_mode
    if mode == "corners":
        # Caffe prior_box_layer.cpp clips the corners, not the centre/size.
        x1y1 = (boxes[:, :2] - boxes[:, 2:] / 2).clamp(0, 1)
        x2y2 = (boxes[:, :2] + boxes[:, 2:] / 2).clamp(0, 1)
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim=1)
    elif mode == "size":
        boxes[:, 2:] = boxes[:, 2:].clamp(0, 1)  # torchvision anchor_utils.py: the (w, h) pairs only
    elif mode == "cxcywh":
        boxes = boxes.clamp(0, 1)  # ssd.pytorch prior_box.py: output.clamp_(max=1, min=0)
    return boxes.float()


def generate_priors(spec: PriorSpec) -> Tensor:
    """All default boxes. Returns ``Tensor[P, 4]``, cxcywh normalised to the input, float32.

    Order: layer by layer, row-major over each feature map, then the per-location order of
    :func:`layer_box_sizes`; this is the order of the network's output rows.
    """
    return torch.cat([generate_layer_priors(spec, layer) for layer in spec.layers], dim=0)


def prior_layer_index(spec: PriorSpec) -> Tensor:
    """For each default box, the index of its source layer. ``Tensor[P]`` int64."""
    counts = torch.tensor([layer.num_priors for layer in spec.layers])
    return torch.repeat_interleave(torch.arange(len(spec.layers)), counts)
