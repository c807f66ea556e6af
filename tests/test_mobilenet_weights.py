"""ImageNet MobileNetV3-Large weights into the ssdlite320 backbone (--backbone-weights)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.models import mobilenet_v3_large

from ssdcli import downloads
from ssdcli.errors import UserError
from ssdcli.models import build_from_settings, build_model, model_settings
from ssdcli.models.mobilenet_weights import load_mobilenet_v3_backbone, resolve_mobilenet_backbone_weights


@pytest.fixture(scope="module")
def imagenet_like():
    """A seeded torchvision mobilenet_v3_large classifier with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = mobilenet_v3_large(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.num_batches_tracked.fill_(1234)
    return model.eval()


def test_full_tail_option_round_trips_through_settings() -> None:
    model = build_model("ssdlite320", num_classes=2, reduced_tail=False)
    assert model.backbone.out_channels[:2] == [672, 960]
    assert model_settings(model)["options"] == {"width_mult": 1.0, "reduced_tail": 0.0}
    rebuilt = build_from_settings(model_settings(model))
    assert not rebuilt.backbone.reduced_tail
    assert build_model("ssdlite320", num_classes=2).options == {"width_mult": 1.0}  # unchanged default


def test_imagenet_features_load_one_to_one(imagenet_like) -> None:
    model = build_model("ssdlite320", num_classes=3, reduced_tail=False).eval()
    extras_before = {k: v.clone() for k, v in model.backbone.extras.state_dict().items()}
    load_mobilenet_v3_backbone(model, imagenet_like.state_dict())
    backbone = model.backbone
    ours = backbone.state_dict()
    assert ours["stage16.0.1.num_batches_tracked"].item() == 1234
    x = torch.randn(2, 3, 320, 320)
    split = backbone.split_index
    with torch.no_grad():
        c4 = imagenet_like.features[split].block[0](imagenet_like.features[:split](x))  # (2, 672, 20, 20)
        end = imagenet_like.features(x)  # (2, 960, 10, 10)
        sources = backbone(x)
    assert torch.equal(sources[0], c4)
    assert torch.equal(sources[1], end)
    # Only the MobileNetV3 part changed.
    assert all(torch.equal(v, extras_before[k]) for k, v in backbone.extras.state_dict().items())


def test_backbones_that_cannot_take_imagenet_weights(imagenet_like) -> None:
    state = imagenet_like.state_dict()
    with pytest.raises(UserError, match="full tail"):
        load_mobilenet_v3_backbone(build_model("ssdlite320", num_classes=3), state)
    with pytest.raises(UserError, match="full tail"):
        load_mobilenet_v3_backbone(build_model("ssdlite320", num_classes=3, width_mult=0.5, reduced_tail=False), state)
    model = build_model("ssdlite320", num_classes=3, reduced_tail=False)
    partial = {k: v for k, v in state.items() if not k.startswith("features.16.")}
    missing = r"not a torchvision mobilenet_v3_large state dict, missing features.16.0.weight"
    with pytest.raises(UserError, match=missing):
        load_mobilenet_v3_backbone(model, partial)
    with pytest.raises(UserError, match=r"unexpected backbone.x"):
        load_mobilenet_v3_backbone(model, {**state, "backbone.x": torch.zeros(1)})


def test_files_and_the_cache(imagenet_like, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(downloads, "urlopen", offline)
    assert resolve_mobilenet_backbone_weights("none") is None
    with pytest.raises(UserError, match=r"--backbone-weights .*nope.pth: no such file"):
        resolve_mobilenet_backbone_weights(tmp_path / "nope.pth")
    with pytest.raises(UserError) as info:
        resolve_mobilenet_backbone_weights(None)
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth"
    message = str(info.value)
    assert message.startswith("offline: the ImageNet MobileNetV3-Large weights")
    assert "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth" in message
    assert str(cached) in message and "--backbone-weights none" in message
    cached.parent.mkdir(parents=True, exist_ok=True)  # the failed download made it, as torch.hub does
    torch.save(imagenet_like.state_dict(), cached)
    assert resolve_mobilenet_backbone_weights(None) == cached
    model = build_model("ssdlite320", num_classes=3, reduced_tail=False)
    load_mobilenet_v3_backbone(model, cached)
    assert torch.equal(model.backbone.stage16[0][0].weight, imagenet_like.features[0][0].weight)
