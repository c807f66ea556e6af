"""The SSD network: a backbone of source feature maps plus one pair of prediction heads per map.

SSD paper sec. 2.1: every source layer gets a small convolution that predicts, at each location
and for each of its ``A`` default boxes, ``num_classes + 1`` class scores (0 = background) and 4
box deltas. The network is pure: ``forward`` returns raw logits and deltas; matching, loss,
decoding and NMS live in their own modules.

The output rows follow the priors of :mod:`ssdcli.priors` exactly: layer by layer, row-major over
each feature map (y, then x), then the ``A`` boxes of one location. Feature-map sizes are measured
on the backbone (a shape-only pass on the meta device) and checked against the prior spec when the
model is built, so the output count always equals the number of priors.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ssdcli.priors import PriorSpec

HeadFactory = Callable[[int, int], nn.Module]
"""``factory(in_channels, out_channels) -> module`` mapping ``(N, in, H, W)`` to ``(N, out, H, W)``."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""RGB mean/std in [0, 1] units that torchvision's ImageNet weights expect (input = RGB / 255)."""


def _meta_call(module: nn.Module, *inputs: Tensor) -> object:
    """``module(*inputs)`` with its weights swapped for meta tensors: shapes only, no compute."""
    tensors = itertools.chain(module.named_parameters(), module.named_buffers())
    meta_state = {name: tensor.to("meta") for name, tensor in tensors}
    with torch.no_grad():
        return functional_call(module, meta_state, inputs)


def _meta_images(image_size: int) -> Tensor:
    # Batch 2, not 1: BatchNorm in training mode refuses one value per channel (1x1 maps).
    return torch.empty(2, 3, image_size, image_size, device="meta")


def measure_feature_maps(backbone: nn.Module, image_size: int) -> tuple[int, ...]:
    """Side of each source feature map that ``backbone`` yields for a square ``image_size`` input.

    Raises ``ValueError`` if a map is not square (the priors assume square maps).
    """
    sizes = []
    for index, feature in enumerate(_meta_call(backbone, _meta_images(image_size))):
        height, width = feature.shape[-2:]
        if height != width:
            raise ValueError(f"source layer {index}: feature map {height}x{width} is not square")
        sizes.append(int(height))
    return tuple(sizes)


def _flatten_predictions(prediction: Tensor, values_per_box: int) -> Tensor:
    """``(N, A*K, H, W)`` head output -> ``(N, H*W*A, K)`` rows in prior order (y, x, then box)."""
    n = prediction.shape[0]
    prediction = prediction.permute(0, 2, 3, 1)  # (N, H, W, A*K)
    return prediction.reshape(n, -1, values_per_box)  # (N, H*W*A, K)


class SSD(nn.Module):
    """Single Shot MultiBox Detector: images -> (class logits, box deltas) for every default box.

    Args:
        arch: architecture name (``ssd300`` ...), stored for checkpoints.
        backbone: module mapping ``images`` to a list of source feature maps ``Tensor[N, C_i, f_i,
            f_i]``; it must have an ``out_channels`` sequence with the ``C_i``.
        prior_spec: the default boxes; its feature-map sizes must equal the backbone's.
        num_classes: object classes, background excluded (the logits have ``num_classes + 1``).
        head_factory: builds one prediction head (already initialised) per source layer.
        mean, std: RGB normalisation the inputs must have had, in [0, 1] units.
        options: arch-specific build options (e.g. ``width_mult``), stored for checkpoints.

    Raises:
        ValueError: the backbone's source layers or feature-map sizes differ from ``prior_spec``,
            or a head does not give ``A * 4`` / ``A * (num_classes + 1)`` channels.
    """

    def __init__(
        self,
        arch: str,
        backbone: nn.Module,
        prior_spec: PriorSpec,
        num_classes: int,
        head_factory: HeadFactory,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        options: dict | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.arch = arch
        self.num_classes = num_classes
        self.prior_spec = prior_spec
        self.image_size = prior_spec.image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.options = dict(options or {})
        self.backbone = backbone
        _check_feature_maps(arch, measure_feature_maps(backbone, self.image_size), prior_spec)

        channels = list(backbone.out_channels)
        anchors = prior_spec.boxes_per_location
        self.loc_heads = nn.ModuleList(head_factory(c, a * 4) for c, a in zip(channels, anchors))
        self.conf_heads = nn.ModuleList(
            head_factory(c, a * (num_classes + 1)) for c, a in zip(channels, anchors)
        )
        self._check_heads()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw predictions for every default box.

        Args:
            images: Tensor[N, 3, S, S], RGB / 255 normalised with ``self.mean`` / ``self.std``,
                ``S == self.image_size``.

        Returns:
            cls_logits: Tensor[N, P, num_classes + 1], unnormalised scores; column 0 = background.
            box_deltas: Tensor[N, P, 4], ``(dcx, dcy, dw, dh)`` relative to the priors
                (see :mod:`ssdcli.codec`), in the order of :func:`ssdcli.priors.generate_priors`.
        """
        features = self.backbone(images)
        logits, deltas = [], []
        # enumerate over the heads (not zip with the features): TorchScript needs a static length.
        for index, (loc_head, conf_head) in enumerate(zip(self.loc_heads, self.conf_heads)):
            deltas.append(_flatten_predictions(loc_head(features[index]), 4))
            logits.append(_flatten_predictions(conf_head(features[index]), self.num_classes + 1))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)

    def feature_map_sizes(self) -> tuple[int, ...]:
        """Side of each source feature map for a ``image_size`` input, measured on the backbone."""
        return measure_feature_maps(self.backbone, self.image_size)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, image_size={self.image_size}"

    def _check_heads(self) -> None:
        """Every head must give ``A * 4`` / ``A * (K + 1)`` channels, so rows == priors."""
        features = _meta_call(self.backbone, _meta_images(self.image_size))
        anchors = self.prior_spec.boxes_per_location
        for index, (feature, a) in enumerate(zip(features, anchors)):
            for kind, head, per_box in (
                ("box", self.loc_heads[index], 4),
                ("class", self.conf_heads[index], self.num_classes + 1),
            ):
                got = tuple(_meta_call(head, feature).shape[1:])
                want = (a * per_box, *feature.shape[-2:])
                if got != want:
                    raise ValueError(
                        f"{self.arch}: {kind} head of source layer {index} gives output {got}, "
                        f"expected {want} ({a} boxes x {per_box}) for prior spec "
                        f"{self.prior_spec.name!r}"
                    )


def _check_feature_maps(arch: str, measured: tuple[int, ...], spec: PriorSpec) -> None:
    if len(measured) != len(spec.layers):
        raise ValueError(
            f"{arch}: the network has {len(measured)} source layers {measured} but prior spec "
            f"{spec.name!r} has {len(spec.layers)} layers {spec.feature_maps}"
        )
    for index, (got, want) in enumerate(zip(measured, spec.feature_maps)):
        if got != want:
            raise ValueError(
                f"{arch}: source layer {index} has a {got}x{got} feature map for a "
                f"{spec.image_size}px input, but prior spec {spec.name!r} expects {want}x{want} "
                f"(network maps {measured}, spec maps {spec.feature_maps})"
            )
