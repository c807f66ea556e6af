"""SSDLite320: a light SSD on MobileNetV3-Large that trains from scratch on a CPU.

Follows torchvision's ``ssdlite320_mobilenet_v3_large`` (itself the MobileNetV3 paper, sec. 6.3):

* MobileNetV3-Large features with the "reduced tail" (last stage at half width; the full tail
  with ``reduced_tail=False``, as torchvision builds it around ImageNet weights) and BatchNorm
  ``eps=0.001`` (momentum 0.1, see ``_norm_layer``), tapped at the expansion layer of the last stride-2 block (1/16 of
  the input: 20x20 for 320) and at the end of the features (1/32: 10x10);
* four extra blocks (1x1 to half width, 3x3 depthwise stride 2, 1x1) giving 5, 3, 2, 1;
* depthwise-separable heads: 3x3 depthwise conv + BN + ReLU6, then a 1x1 convolution;
* from-scratch initialisation N(0, 0.03) for every convolution, zero bias.

It uses this project's priors (``ssdlite320`` preset), box codec, matching and loss, so its
outputs follow the same contract as SSD300. Inputs are normalised with ImageNet mean/std.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large
from torchvision.ops import Conv2dNormActivation

from ssdcli.models.ssd import IMAGENET_MEAN, IMAGENET_STD, SSD
from ssdcli.priors import PriorSpec

# eps from torchvision's ssdlite.py (the TensorFlow reference). Its momentum of 0.03 is made for
# 600-epoch runs: after 50 steps 22 % of the initial running statistics remain (0.97^50), so a
# model trained for minutes on a CPU evaluates with wrong statistics (measured: VOC07 mAP 0.0 on
# the very images it fits). PyTorch's default 0.1 forgets them in ~50 steps (0.9^50 = 0.5 %).
_norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)


def _normal_init(module: nn.Module) -> None:
    """torchvision ssdlite ``_normal_init``: conv weights N(0, 0.03), zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=0.03)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 to ``out / 2``, 3x3 depthwise stride 2, 1x1 to ``out``; each with BN and ReLU6."""
    mid = out_channels // 2
    conv = partial(Conv2dNormActivation, norm_layer=_norm_layer, activation_layer=nn.ReLU6)
    return nn.Sequential(
        conv(in_channels, mid, kernel_size=1),
        conv(mid, mid, kernel_size=3, stride=2, groups=mid),
        conv(mid, out_channels, kernel_size=1),
    )


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large features + extras: ``images Tensor[N, 3, S, S]`` -> 6 source maps.

    Attributes:
        stage16: stem .. expansion 1x1 of the last stride-2 block (1/16 of the input).
        stage32: the rest of MobileNetV3's features (1/32).
        extras: four stride-2 depthwise-separable blocks.
        out_channels: channels of each source map (672, 480, 512, 256, 256, 128 at width 1;
            672, 960, ... with the full tail).
        split_index: index in torchvision's ``features`` of the block split between the stages.
        split_rest: modules of that block after its expansion: the first ``split_rest`` modules
            of ``stage32`` (``features[split_index].block[1:]``); then ``features[split_index + 1:]``.
    """

    def __init__(self, width_mult: float = 1.0, min_depth: int = 16, reduced_tail: bool = True) -> None:
        super().__init__()
        features = mobilenet_v3_large(
            weights=None, width_mult=width_mult, reduced_tail=reduced_tail, norm_layer=_norm_layer
        ).features
        # torchvision marks the stride-2 blocks with ``_is_cn`` and its ssdlite taps the last one.
        strided = [index for index, block in enumerate(features) if getattr(block, "_is_cn", False)]
        if not strided:
            raise RuntimeError("torchvision's MobileNetV3 no longer marks its stride-2 blocks (_is_cn)")
        c4 = strided[-1]
        expansion = features[c4].block[0]
        self.stage16 = nn.Sequential(*features[:c4], expansion)
        self.stage32 = nn.Sequential(*features[c4].block[1:], *features[c4 + 1 :])
        self.split_index = c4
        self.split_rest = len(features[c4].block) - 1
        self.reduced_tail = reduced_tail

        def depth(channels: int) -> int:
            return max(min_depth, int(channels * width_mult))

        widths = [features[-1].out_channels, depth(512), depth(256), depth(256), depth(128)]
        self.extras = nn.ModuleList(_extra_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out_channels = [expansion.out_channels] + widths
        _normal_init(self)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Source feature maps: list of Tensor[N, C_i, f_i, f_i] (20, 10, 5, 3, 2, 1 for 320)."""
        x = self.stage16(images)
        sources = [x]
        x = self.stage32(x)
        sources.append(x)
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


def _separable_head(in_channels: int, out_channels: int) -> nn.Module:
    """3x3 depthwise + BN + ReLU6, then a 1x1 projection (torchvision ``_prediction_block``)."""
    head = nn.Sequential(
        Conv2dNormActivation(
            in_channels,
            in_channels,
            kernel_size=3,
            groups=in_channels,
            norm_layer=_norm_layer,
            activation_layer=nn.ReLU6,
        ),
        nn.Conv2d(in_channels, out_channels, 1),
    )
    _normal_init(head)
    return head


def ssdlite320(
    num_classes: int, prior_spec: PriorSpec, width_mult: float = 1.0, reduced_tail: bool | float = True
) -> SSD:
    """SSDLite on MobileNetV3-Large for a 320x320 input; ``width_mult`` scales every width.

    ``reduced_tail=False`` (stored as an option only then; checkpoints keep options as numbers,
    so 0.0 means False) gives MobileNetV3's full last stage, the one ImageNet weights have.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    reduced_tail = bool(reduced_tail)
    options: dict[str, float] = {"width_mult": float(width_mult)}
    if not reduced_tail:
        options["reduced_tail"] = 0.0
    backbone = MobileNetV3Backbone(width_mult=width_mult, reduced_tail=reduced_tail)
    return SSD(
        "ssdlite320",
        backbone,
        prior_spec,
        num_classes,
        _separable_head,
        IMAGENET_MEAN,
        IMAGENET_STD,
        options=options,
    )
