"""ssd.pytorch weights: a seeded network in its layout, its own forward and preprocessing written
out here (after amdegroot/ssd.pytorch ``ssd.py``, ``layers/modules/l2norm.py``,
``data/__init__.py`` and ``data/voc0712.py``), against the imported model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssdcli.codec import decode
from ssdcli.data.voc import VOC_CLASSES
from ssdcli.models.winograd import direct_convolutions
from ssdcli.pretrained import import_weights
from ssdcli.pretrained.preprocess import to_network_input
from ssdcli.pretrained.ssd_pytorch import preprocessing
from ssdcli.priors import generate_priors

pytestmark = pytest.mark.slow

MEANS = (104, 117, 123)  # data/config.py, BGR


class L2Norm(nn.Module):
    """ssd.pytorch's: the epsilon is added to the norm, not under the square root."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * torch.div(x, norm)


def _vgg() -> list[nn.Module]:
    layers, channels = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
        if v in ("M", "C"):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=v == "C"))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return layers + [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),
        nn.ReLU(inplace=True),
    ]


def _extras() -> list[nn.Module]:
    cfg, layers, channels, flag = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256], [], 1024, False
    for k, v in enumerate(cfg):
        if channels != "S":
            if v == "S":
                layers.append(nn.Conv2d(channels, cfg[k + 1], kernel_size=(1, 3)[flag], stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(channels, v, kernel_size=(1, 3)[flag]))
            flag = not flag
        channels = v
    return layers


class SsdPytorchSSD(nn.Module):
    """``build_ssd('train', 300, num_classes)``: raw (loc, conf) outputs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(_vgg())
        self.L2Norm = L2Norm(512, 20)
        self.extras = nn.ModuleList(_extras())
        mbox = [4, 6, 6, 6, 4, 4]
        sources = [512, 1024] + [layer.out_channels for layer in self.extras[1::2]]
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(sources, mbox))
        self.conf = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(sources, mbox))

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat([l(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1) for s, l in zip(sources, self.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(s.shape[0], -1) for s, c in zip(sources, self.conf)], 1)
        return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, self.num_classes)


def _their_input(path, channel_order: str) -> torch.Tensor:
    """``BaseTransform`` on ``cv2.imread``; ``pull_item`` then turns it to RGB (``rgb``), ``test.py``
    and the Caffe-converted weights keep BGR (``bgr``)."""
    image = cv2.imread(str(path))
    x = cv2.resize(image, (300, 300)).astype(np.float32)
    x -= np.array(MEANS, dtype=np.float32)
    if channel_order == "rgb":
        x = x[:, :, (2, 1, 0)]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def network_file(tmp_path_factory):
    torch.manual_seed(0)
    network = SsdPytorchSSD(num_classes=21).eval()
    with torch.no_grad():
        for conf in network.conf:
            conf.weight.mul_(4.0)  # spread the scores of a random head
    path = tmp_path_factory.mktemp("ssd_pytorch") / "ssd300_VOC_seeded.pth"
    torch.save(network.state_dict(), path)
    return network, path


@pytest.mark.parametrize("channel_order", ["rgb", "bgr"])
def test_import_reproduces_ssd_pytorch_forward(network_file, shared_data, channel_order) -> None:
    network, path = network_file
    imported = import_weights(path, channel_order=channel_order)
    assert imported.source_format == "ssd.pytorch" and imported.class_names == tuple(VOC_CLASSES)
    assert imported.model.prior_spec.name == "ssd.pytorch_voc" and imported.model.prior_spec.clip == "cxcywh"
    files = sorted((shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:2]
    theirs_x = torch.stack([_their_input(f, channel_order) for f in files])
    # Same decoder for both sides (cv2), so only resize, channel order and mean are compared.
    rgb = [torch.from_numpy(cv2.imread(str(f))[:, :, ::-1].copy()).permute(2, 0, 1) for f in files]
    ours_x = torch.stack([to_network_input(image, imported.preprocessing) for image in rgb])
    assert torch.equal(ours_x, theirs_x)
    other = preprocessing("bgr" if channel_order == "rgb" else "rgb")
    assert not torch.equal(to_network_input(rgb[0], other), theirs_x[0])  # the order is what matters
    with torch.no_grad(), direct_convolutions():
        loc, conf = network(theirs_x)
        cls_logits, box_deltas = imported.model(ours_x)
    torch.testing.assert_close(cls_logits / conf.abs().max(), conf / conf.abs().max(), rtol=0, atol=1e-5)
    torch.testing.assert_close(box_deltas / loc.abs().max(), loc / loc.abs().max(), rtol=0, atol=1e-5)
    # Scores spread (the test means something) and decode as ssd.pytorch's box_utils.decode does.
    scores = conf.softmax(-1)
    assert (scores[..., 1:] > 0.5).sum() > 100
    priors = generate_priors(imported.model.prior_spec)
    centres = priors[:, :2] + loc[0, :, :2] * 0.1 * priors[:, 2:]  # layers/box_utils.py decode
    sizes = priors[:, 2:] * torch.exp(loc[0, :, 2:] * 0.2)
    ours = decode(box_deltas[0], priors, imported.model.prior_spec.variances)
    torch.testing.assert_close(ours, torch.cat((centres, sizes), 1), rtol=1e-4, atol=1e-5)
