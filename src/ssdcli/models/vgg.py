"""SSD300 and SSD512 on VGG16, as in the SSD paper (Fig. 2, sec. 3) and the authors' Caffe model.

The authors' ``VGGNetBody(fully_conv=True, reduced=True, dilated=True)`` (``model_libs.py``):

* VGG16 conv1_1 .. conv5_3 (3x3, ReLU); pool1..pool4 2x2 stride 2, pool3 in ceil mode so that
  300 -> 150 -> 75 -> 38 (Caffe pooling always rounds up); pool5 3x3 stride 1 pad 1;
* fc6 as a 3x3 convolution with 1024 channels and dilation 6 (the "a trous" algorithm), fc7 as a
  1x1 convolution with 1024 channels;
* conv4_3 L2-normalised per location with a learnable per-channel scale initialised to 20
  (ParseNet, Caffe ``Normalize`` layer with ``across_spatial: false``, ``channel_shared: false``);
* extra layers (the paper's conv8_2 .. conv11_2, Caffe's conv6_2 .. conv9_2; SSD512 adds conv10_2
  with a 4x4 kernel), 3x3 prediction heads, Xavier initialisation with zero bias.

The VGG part keeps torchvision's ``vgg16().features`` indices (``vgg.N`` here is ``features.N``
there; conv6 / conv7 follow at 31 / 33) so ImageNet weights map one to one
(:mod:`ssdcli.models.vgg_weights`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssdcli.models.packed import PackedConv2d, run_sequential, sequential_outputs
from ssdcli.models.ssd import IMAGENET_MEAN, IMAGENET_STD, SSD
from ssdcli.models.winograd import WinogradConv2d
from ssdcli.priors import PriorSpec

CONV4_3_RELU = 22
"""Index of conv4_3's ReLU in :attr:`VGG16Backbone.vgg` (torchvision ``features[22]``)."""
POOL3 = 16
CONV6 = 31
CONV7 = 33

# (output channels, convolutions) of VGG16's five stages (configuration "D").
_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# Extra layers: (in, 1x1 bottleneck, out, kernel, stride, padding) per block. Caffe
# ``AddExtraLayers`` in ssd_pascal.py / ssd_pascal512.py.
_SSD300_EXTRAS = (
    (1024, 256, 512, 3, 2, 1),  # conv8_2: 19 -> 10
    (512, 128, 256, 3, 2, 1),  # conv9_2: 10 -> 5
    (256, 128, 256, 3, 1, 0),  # conv10_2: 5 -> 3
    (256, 128, 256, 3, 1, 0),  # conv11_2: 3 -> 1
)
_SSD512_EXTRAS = (
    (1024, 256, 512, 3, 2, 1),  # 32 -> 16
    (512, 128, 256, 3, 2, 1),  # 16 -> 8
    (256, 128, 256, 3, 2, 1),  # 8 -> 4
    (256, 128, 256, 3, 2, 1),  # 4 -> 2
    (256, 128, 256, 4, 1, 1),  # 2 -> 1: Caffe conv10_2, kernel 4, pad 1
)


class L2Norm(nn.Module):
    """Per-location L2 normalisation with a learnable per-channel scale (ParseNet, SSD sec. 3.1).

    ``y[n, c, h, w] = weight[c] * x[n, c, h, w] / sqrt(sum_c x[n, c, h, w]^2 + eps)``, as Caffe's
    ``Normalize`` layer. Input and output: Tensor[N, C, H, W].
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        # Sum of squares in float32: conv4_3 activations reach the hundreds, and 512 squares of
        # those overflow float16 under autocast.
        x32 = x.float()
        norm = (x32.pow(2).sum(dim=1, keepdim=True) + self.eps).sqrt()  # (N, 1, H, W)
        return (x32 / norm * self.weight.view(1, -1, 1, 1)).to(x.dtype)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed on channels-last memory (a no-op conversion when it already is).

    Winograd convolutions (:mod:`ssdcli.models.winograd`) hand back NCHW tensors, and torch's CPU
    max pooling is far slower on NCHW than converting and pooling channels-last (README "CPU
    speed notes").
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


def _vgg16_layers() -> nn.Sequential:
    """VGG16 conv1_1 .. fc7 (as convolutions), indexed like torchvision's ``vgg16().features``."""
    layers: list[nn.Module] = []
    in_channels = 3
    for stage, (width, convs) in enumerate(_VGG16_STAGES):
        for _ in range(convs):
            layers += [WinogradConv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
        if stage < 4:
            # pool3 (stage 2) rounds up as Caffe does: 75 -> 38 for SSD300 (floor would give 37).
            layers.append(ChannelsLastMaxPool2d(2, stride=2, ceil_mode=stage == 2))
    layers.append(ChannelsLastMaxPool2d(3, stride=1, padding=1))  # pool5: keeps fc6 at stride 16
    layers += [
        PackedConv2d(512, 1024, 3, padding=6, dilation=6),  # fc6, atrous (dilation 6)
        nn.ReLU(inplace=True),
        PackedConv2d(1024, 1024, 1),  # fc7
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


def _extra_block(in_channels: int, mid: int, out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        PackedConv2d(in_channels, mid, 1),
        nn.ReLU(inplace=True),
        PackedConv2d(mid, out, kernel, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
    )


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights, zero bias for every convolution (Caffe ``weight_filler: xavier``).

    Glorot's bound ``sqrt(6 / (fan_in + fan_out))`` as torchvision's SSD and most PyTorch ports;
    Caffe's own XavierFiller uses ``sqrt(3 / fan_in)``, a difference that training absorbs.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class VGG16Backbone(nn.Module):
    """VGG16 + extras: ``images Tensor[N, 3, S, S] -> [conv4_3 (L2-normalised), fc7, extras...]``.

    Attributes:
        vgg: conv1_1 .. fc7 with torchvision ``features`` indices (conv6 at 31, conv7 at 33).
        conv4_3_norm: :class:`L2Norm` on conv4_3.
        extras: one block (1x1 then 3x3/4x4) per extra source layer.
        out_channels: channels of each source feature map.
    """

    def __init__(self, extras: tuple[tuple[int, int, int, int, int, int], ...]) -> None:
        super().__init__()
        self.vgg = _vgg16_layers()
        self.conv4_3_index = CONV4_3_RELU  # an attribute, not a global, so TorchScript sees it
        self.conv4_3_norm = L2Norm(512, scale=20.0)
        self.extras = nn.ModuleList(_extra_block(*cfg) for cfg in extras)
        self.out_channels = [512, 1024] + [cfg[2] for cfg in extras]
        # Scratch init for the VGG part as torchvision's VGG (normally replaced by ImageNet
        # weights); the extras follow the Caffe model.
        for layer in self.vgg:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        _xavier_init(self.extras)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Source feature maps: list of Tensor[N, C_i, f_i, f_i] with ``C_i = out_channels[i]``."""
        sources = []
        # NHWC: oneDNN's convolutions run faster on it on CPU than on NCHW (README "CPU speed
        # notes"), and the heads' (N, H, W, C) permute becomes a view. A no-op when the input is
        # already channels-last; the weights are converted when the model is built.
        # Each convolution + ReLU runs as one call (ssdcli.models.packed).
        x = images.contiguous(memory_format=torch.channels_last)
        for index, x in sequential_outputs(self.vgg, x):
            if index == self.conv4_3_index:
                sources.append(self.conv4_3_norm(x))
        sources.append(x)  # fc7
        for block in self.extras:
            x = run_sequential(block, x)
            sources.append(x)
        return sources


def _vgg_head(in_channels: int, out_channels: int) -> nn.Module:
    """3x3 prediction convolution (SSD sec. 2.1), Xavier-uniform weights and zero bias."""
    head = WinogradConv2d(in_channels, out_channels, 3, padding=1)
    _xavier_init(head)
    return head


def ssd300(num_classes: int, prior_spec: PriorSpec) -> SSD:
    """SSD300 on VGG16: source maps 38, 19, 10, 5, 3, 1 for a 300x300 input."""
    backbone = VGG16Backbone(_SSD300_EXTRAS)
    model = SSD("ssd300", backbone, prior_spec, num_classes, _vgg_head, IMAGENET_MEAN, IMAGENET_STD)
    return model.to(memory_format=torch.channels_last)


def ssd512(num_classes: int, prior_spec: PriorSpec) -> SSD:
    """SSD512 on VGG16: source maps 64, 32, 16, 8, 4, 2, 1 for a 512x512 input."""
    backbone = VGG16Backbone(_SSD512_EXTRAS)
    model = SSD("ssd512", backbone, prior_spec, num_classes, _vgg_head, IMAGENET_MEAN, IMAGENET_STD)
    return model.to(memory_format=torch.channels_last)
