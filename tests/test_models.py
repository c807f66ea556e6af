"""SSD networks: output shapes and order, the Caffe VGG16 details, init, prior checks, weights."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from ssdcli.errors import UserError
from ssdcli.models import (
    ARCHS,
    build_from_settings,
    build_model,
    load_backbone_weights,
    load_vgg16_backbone,
    model_settings,
    priors_for_model,
    resolve_backbone_weights,
)
from ssdcli import downloads
from ssdcli.models import mobilenet_weights, vgg_weights
from ssdcli.models.ssd import SSD, measure_feature_maps
from ssdcli.models.vgg import CONV6, CONV7, POOL3, L2Norm
from ssdcli.priors import LayerPriors, PriorSpec, ssd300_spec, ssd512_spec


@pytest.fixture(scope="module")
def ssd300_model() -> SSD:
    torch.manual_seed(0)
    return build_model("ssd300", num_classes=20).eval()


@pytest.fixture(scope="module")
def ssdlite_model() -> SSD:
    torch.manual_seed(0)
    return build_model("ssdlite320", num_classes=3)


# --- output shapes and feature maps ---------------------------------------------------------


def test_ssd300_outputs_one_row_per_prior(ssd300_model: SSD) -> None:
    with torch.no_grad():
        logits, deltas = ssd300_model(torch.randn(2, 3, 300, 300))
    # 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1^2*4 = 5776 + 2166 + 600 + 150 + 36 + 4 = 8732
    assert logits.shape == (2, 8732, 21)
    assert deltas.shape == (2, 8732, 4)
    assert torch.isfinite(logits).all() and torch.isfinite(deltas).all()
    assert priors_for_model(ssd300_model).shape == (8732, 4)


def test_ssd512_outputs_one_row_per_prior() -> None:
    model = build_model("ssd512", num_classes=3).eval()
    assert model.feature_map_sizes() == (64, 32, 16, 8, 4, 2, 1)
    with torch.no_grad():
        logits, deltas = model(torch.randn(1, 3, 512, 512))
    # 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4 = 16384+6144+1536+384+96+16+4 = 24564
    assert logits.shape == (1, 24564, 4)
    assert deltas.shape == (1, 24564, 4)


def test_ssd300_feature_maps_and_attributes(ssd300_model: SSD) -> None:
    assert ssd300_model.feature_map_sizes() == (38, 19, 10, 5, 3, 1)
    assert ssd300_model.backbone.out_channels == [512, 1024, 512, 256, 256, 256]
    assert ssd300_model.image_size == 300 and ssd300_model.num_classes == 20
    assert ssd300_model.arch == "ssd300" and ssd300_model.prior_spec == ssd300_spec()
    assert ssd300_model.mean == pytest.approx((0.485, 0.456, 0.406))
    assert ssd300_model.std == pytest.approx((0.229, 0.224, 0.225))
    # The meta-device measure agrees with a real forward pass.
    with torch.no_grad():
        features = ssd300_model.backbone(torch.zeros(1, 3, 300, 300))
    assert tuple(f.shape[-1] for f in features) == (38, 19, 10, 5, 3, 1)


def test_pool3_ceil_mode_gives_38_not_37() -> None:
    model = build_model("ssd300", num_classes=1)
    pool3 = model.backbone.vgg[POOL3]
    assert isinstance(pool3, nn.MaxPool2d) and pool3.ceil_mode
    # 300 -> 150 -> 75 -> ceil(75 / 2) = 38 -> pool4 19. With floor: 37 -> 18, off the priors.
    pool3.ceil_mode = False
    assert measure_feature_maps(model.backbone, 300)[:2] == (37, 18)


def test_vgg_layers_as_in_the_caffe_model(ssd300_model: SSD) -> None:
    vgg = ssd300_model.backbone.vgg
    pool5 = vgg[30]
    assert (pool5.kernel_size, pool5.stride, pool5.padding) == (3, 1, 1)
    conv6, conv7 = vgg[CONV6], vgg[CONV7]
    assert conv6.weight.shape == (1024, 512, 3, 3)
    assert conv6.dilation == (6, 6) and conv6.padding == (6, 6)
    assert conv7.weight.shape == (1024, 1024, 1, 1)
    last = build_model("ssd512", num_classes=1).backbone.extras[-1][2]
    assert last.kernel_size == (4, 4) and last.padding == (1, 1)  # Caffe conv10_2: 2x2 -> 1x1


def test_ssdlite320_shapes_and_backward(ssdlite_model: SSD) -> None:
    assert ssdlite_model.feature_map_sizes() == (20, 10, 5, 3, 2, 1)
    ssdlite_model.train()
    logits, deltas = ssdlite_model(torch.randn(2, 3, 320, 320))
    # (20^2 + 10^2 + 5^2 + 3^2 + 2^2 + 1) * 6 = 539 * 6 = 3234
    assert logits.shape == (2, 3234, 4) and deltas.shape == (2, 3234, 4)
    (logits.logsumexp(-1).mean() + deltas.abs().mean()).backward()
    grads = [p.grad for p in ssdlite_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert ssdlite_model.backbone.stage16[0][0].weight.grad.abs().sum() > 0  # reaches the stem


def test_ssdlite320_width_mult_halves_channels() -> None:
    model = build_model("ssdlite320", num_classes=2, width_mult=0.5)
    assert model.backbone.out_channels == [336, 240, 256, 128, 128, 64]
    assert model.feature_map_sizes() == (20, 10, 5, 3, 2, 1)



def test_ssdlite320_priors_equal_torchvision_default_box_generator() -> None:
    # torchvision's own generator for ssdlite320_mobilenet_v3_large (clip off, as our presets).
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    generator = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95, clip=False)
    expected = generator._grid_default_boxes([[f, f] for f in (20, 10, 5, 3, 2, 1)], [320, 320])
    priors = priors_for_model(build_model("ssdlite320", num_classes=1))
    assert priors.shape == (3234, 4)
    torch.testing.assert_close(priors, expected.float(), rtol=0, atol=1e-6)
    # first box: cx = cy = 0.5 / 20, side 0.2 (= 64 / 320)
    assert priors[0].tolist() == pytest.approx([0.025, 0.025, 0.2, 0.2])

# --- output order == prior order ---------------------------------------------------------------


class _PixelBackbone(nn.Module):
    """One source map: the first image channel itself (so feature value = pixel value)."""

    out_channels = [1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images[:, :1]]


def _scaling_head(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv: output channel j = (j + 1) * input, so channel j is recognisable."""
    head = nn.Conv2d(in_channels, out_channels, 1)
    with torch.no_grad():
        head.weight.copy_(torch.arange(1.0, out_channels + 1).view(-1, 1, 1, 1))
        head.bias.zero_()
    return head


def test_output_rows_follow_prior_order_y_then_x_then_box() -> None:
    layer = LayerPriors(feature_map=2, step=1.0, min_size=1.0, max_size=2.0, aspect_ratios=(2.0,))
    spec = PriorSpec(name="tiny", image_size=2, layers=(layer,))  # A = 4 boxes per location
    model = SSD("tiny", _PixelBackbone(), spec, num_classes=1, head_factory=_scaling_head)
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = torch.tensor([[10.0, 20.0], [30.0, 40.0]])  # pixel (y, x)
    logits, deltas = model(image)
    priors = priors_for_model(model)
    assert logits.shape == (1, 16, 2) and deltas.shape == (1, 16, 4) and priors.shape == (16, 4)
    for y in range(2):
        for x in range(2):
            for a in range(4):
                row = (y * 2 + x) * 4 + a
                pixel = image[0, 0, y, x]
                # Head channel a*K + k carries (a*K + k + 1) * pixel.
                assert deltas[0, row].tolist() == [(a * 4 + k + 1) * pixel for k in range(4)]
                assert logits[0, row].tolist() == [(a * 2 + k + 1) * pixel for k in range(2)]
                # ... and prior row `row` sits at the same location: cx = (x + 0.5) * 1 / 2.
                assert priors[row, :2].tolist() == [(x + 0.5) / 2, (y + 0.5) / 2]


# --- L2Norm, init --------------------------------------------------------------------------------


def test_l2norm_starts_at_20_and_gives_norm_20_per_location(ssd300_model: SSD) -> None:
    norm = ssd300_model.backbone.conv4_3_norm
    assert isinstance(norm, L2Norm)
    assert norm.weight.shape == (512,) and torch.equal(norm.weight, torch.full((512,), 20.0))
    x = torch.randn(2, 512, 5, 7) * 50
    out = norm(x)
    torch.testing.assert_close(out.norm(dim=1), torch.full((2, 5, 7), 20.0))
    # Direction per location is unchanged: out = 20 * x / |x|.
    torch.testing.assert_close(out, 20 * x / x.norm(dim=1, keepdim=True))


def test_l2norm_scale_is_learned() -> None:
    norm = L2Norm(4)
    norm(torch.randn(1, 4, 2, 2)).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def _xavier_bound(conv: nn.Conv2d) -> float:
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_heads_and_extras_xavier_uniform_zero_bias(ssd300_model: SSD) -> None:
    convs = [
        m
        for part in (ssd300_model.loc_heads, ssd300_model.conf_heads, ssd300_model.backbone.extras)
        for m in part.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert len(convs) == 6 + 6 + 8
    for conv in convs:
        bound = _xavier_bound(conv)  # Glorot & Bengio: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
        assert torch.count_nonzero(conv.bias) == 0
        assert conv.weight.abs().max() <= bound
        # PyTorch's default init has bound 1/sqrt(fan_in), well below; uniform fills its range.
        assert conv.weight.abs().max() > 0.9 * bound
    heads = ssd300_model.conf_heads
    assert [h.out_channels for h in heads] == [4 * 21, 6 * 21, 6 * 21, 6 * 21, 4 * 21, 4 * 21]
    assert all(h.kernel_size == (3, 3) and h.padding == (1, 1) for h in heads)


# --- prior checks ------------------------------------------------------------------------------------


def test_mismatched_feature_map_size_raises() -> None:
    spec = ssd300_spec().with_feature_maps((37, 19, 10, 5, 3, 1))
    with pytest.raises(ValueError, match=r"source layer 0 has a 38x38 .* expects 37x37"):
        build_model("ssd300", num_classes=2, prior_spec=spec)


def test_mismatched_layer_count_raises() -> None:
    with pytest.raises(ValueError, match=r"6 source layers .* 7 layers"):
        build_model("ssd300", num_classes=2, prior_spec=ssd512_spec())


def test_head_with_wrong_channels_raises() -> None:
    layer = LayerPriors(feature_map=2, step=1.0, min_size=1.0, max_size=2.0, aspect_ratios=())
    spec = PriorSpec(name="tiny", image_size=2, layers=(layer,))

    def bad_head(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels + 4, 1)  # one box too many

    with pytest.raises(ValueError, match=r"box head of source layer 0 gives output \(12, 2, 2\)"):
        SSD("tiny", _PixelBackbone(), spec, num_classes=1, head_factory=bad_head)


def test_unknown_arch_and_option_raise() -> None:
    with pytest.raises(ValueError, match="ssd300, ssd512, ssdlite320"):
        build_model("yolo", num_classes=2)
    with pytest.raises(ValueError, match="width_mult"):
        build_model("ssd300", num_classes=2, width_mult=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ssdlite320", num_classes=0)


def test_settings_round_trip() -> None:
    model = build_model("ssdlite320", num_classes=5, width_mult=0.5)
    settings = model_settings(model)
    settings = json.loads(json.dumps(settings))  # plain values only
    assert settings["arch"] == "ssdlite320" and settings["options"] == {"width_mult": 0.5}
    rebuilt = build_from_settings(settings)
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameters and shapes
    assert rebuilt.prior_spec == model.prior_spec and rebuilt.num_classes == 5
    assert set(ARCHS) == {"ssd300", "ssd512", "ssdlite320"}
    with pytest.raises(ValueError, match="malformed model settings"):
        build_from_settings({"arch": "ssd300"})


# --- ImageNet VGG16 weights ----------------------------------------------------------------------


def _fake_vgg16_state(model: SSD) -> dict[str, torch.Tensor]:
    """A torchvision vgg16 state dict with the right keys and shapes, random conv weights.

    fc6 (4096 x 25088 floats, 411 MB) is ``torch.empty``: the allocator maps fresh pages that
    are never touched except where the test writes, so it costs almost no memory.
    """
    state = {}
    for index, layer in enumerate(model.backbone.vgg[:CONV6]):
        if isinstance(layer, nn.Conv2d):
            state[f"features.{index}.weight"] = torch.randn_like(layer.weight)
            state[f"features.{index}.bias"] = torch.randn_like(layer.bias)
    state["classifier.0.weight"] = torch.empty(4096, 25088)
    state["classifier.0.bias"] = torch.arange(4096.0)
    state["classifier.3.weight"] = torch.arange(4096.0 * 4096).view(4096, 4096)
    state["classifier.3.bias"] = -torch.arange(4096.0)
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # the ImageNet classifier: ignored
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


def test_load_vgg16_subsamples_fc6_fc7_into_conv6_conv7() -> None:
    model = build_model("ssd300", num_classes=2)
    state = _fake_vgg16_state(model)
    fc6 = state["classifier.0.weight"]
    # fc6 input index of pool5 (channel c, row r, col k) = c * 49 + r * 7 + k (torch's flatten).
    fc6[0, 0] = 1.5  # out 0, c 0, (0, 0) -> conv6[0, 0, 0, 0]
    fc6[8, 5 * 49 + 3 * 7 + 6] = 2.5  # out 8, c 5, (3, 6) -> conv6[2, 5, 1, 2]
    fc6[4092, 511 * 49 + 6 * 7 + 3] = 3.5  # out 4092, c 511, (6, 3) -> conv6[1023, 511, 2, 1]
    fc6[4, 7 * 49 + 1 * 7 + 0] = 12345.0  # tap (1, 0) is not kept
    fc6[5, 0] = 12345.0  # output 5 is not a multiple of 4
    extras_before = model.backbone.extras[0][0].weight.clone()

    load_vgg16_backbone(model, state)

    vgg = model.backbone.vgg
    conv6, conv7 = vgg[CONV6], vgg[CONV7]
    assert conv6.weight[0, 0, 0, 0] == 1.5
    assert conv6.weight[2, 5, 1, 2] == 2.5
    assert conv6.weight[1023, 511, 2, 1] == 3.5
    assert not (conv6.weight == 12345.0).any()
    assert conv6.bias[[0, 1, 1023]].tolist() == [0.0, 4.0, 4092.0]  # fc6 bias[::4]
    # fc7[o, i] = o * 4096 + i; conv7[p, q] = fc7[4p, 4q].
    assert conv7.weight[0, 0, 0, 0] == 0.0
    assert conv7.weight[1, 2, 0, 0] == 4 * 4096 + 8
    assert conv7.weight[1023, 1023, 0, 0] == 4092 * 4096 + 4092
    assert conv7.bias[[0, 3, 1023]].tolist() == [0.0, -12.0, -4092.0]
    # conv1_1 .. conv5_3 are copied as they are, at torchvision's indices.
    for index in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
        assert torch.equal(vgg[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(vgg[index].bias, state[f"features.{index}.bias"])
    assert torch.equal(model.backbone.extras[0][0].weight, extras_before)
    assert torch.equal(model.backbone.conv4_3_norm.weight, torch.full((512,), 20.0))


def test_load_vgg16_refuses_wrong_keys_and_shapes_without_touching_the_model(tmp_path) -> None:
    model = build_model("ssd300", num_classes=2)
    before = model.backbone.vgg[0].weight.clone()
    small = {"features.0.weight": torch.zeros(64, 3, 3, 3)}
    path = tmp_path / "resnet.pth"
    torch.save(small, path)
    with pytest.raises(UserError, match=r"resnet.pth: not a torchvision vgg16 state dict, missing features.0.bias"):
        load_vgg16_backbone(model, path)

    state = _fake_vgg16_state(model)
    state["features.28.weight"] = torch.zeros(512, 512, 1, 1)
    with pytest.raises(UserError, match=r"features.28.weight has shape \(512, 512, 1, 1\), expected \(512, 512, 3, 3\)"):
        load_vgg16_backbone(model, state)
    assert torch.equal(model.backbone.vgg[0].weight, before)


def test_load_vgg16_refuses_missing_and_unsafe_files(tmp_path) -> None:
    model = build_model("ssdlite320", num_classes=2)
    with pytest.raises(UserError, match="ssd300 and ssd512 only"):
        load_vgg16_backbone(model, tmp_path / "x.pth")
    model = build_model("ssd300", num_classes=2)
    with pytest.raises(UserError, match=r"missing.pth: no such file"):
        load_vgg16_backbone(model, tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"notes.pth: not a PyTorch state dict"):
        load_vgg16_backbone(model, text)
    pickled = tmp_path / "object.pth"
    torch.save({"features.0.weight": _Payload()}, pickled)  # a pickled class: refused, never run
    with pytest.raises(UserError, match=r"object.pth: not a PyTorch state dict that loads with weights_only=True"):
        load_vgg16_backbone(model, pickled)


class _Payload:
    pass


def test_the_arch_table_says_which_archs_take_imagenet_weights(tmp_path, monkeypatch, ssdlite_model) -> None:
    assert ARCHS["ssd300"].backbone_weights is vgg_weights.load_imagenet_vgg16
    assert ARCHS["ssd512"].backbone_weights is vgg_weights.load_imagenet_vgg16
    assert ARCHS["ssdlite320"].backbone_weights is mobilenet_weights.load_imagenet_mobilenet_v3
    assert ARCHS["ssdlite320"].options == ("width_mult", "reduced_tail") and ARCHS["ssd300"].options == ()

    # "none": nothing is looked at, nothing changes.
    before = {k: v.clone() for k, v in ssdlite_model.state_dict().items()}
    assert load_backbone_weights(ssdlite_model, "none") is True
    assert all(torch.equal(v, before[k]) for k, v in ssdlite_model.state_dict().items())

    # A VGG16 SSD: the file --backbone-weights names is resolved and loaded; "none" loads nothing.
    loaded = []
    monkeypatch.setattr(vgg_weights, "load_vgg16_backbone", lambda model, path: loaded.append((model, path)))
    monkeypatch.setattr(mobilenet_weights, "load_mobilenet_v3_backbone", lambda model, path: loaded.append((model, path)))
    model = build_model("ssd300", num_classes=2)
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"")
    assert load_backbone_weights(model, str(weights)) is True and loaded == [(model, weights)]
    assert load_backbone_weights(model, "none") is True and len(loaded) == 1
    with pytest.raises(UserError, match=r"--backbone-weights .*missing.pth: no such file"):
        load_backbone_weights(model, str(tmp_path / "missing.pth"))

    # An ssdlite320 at the full tail: the MobileNetV3 file is resolved and loaded the same way.
    lite = build_model("ssdlite320", num_classes=2, reduced_tail=False)
    assert load_backbone_weights(lite, str(weights)) is True and loaded[-1] == (lite, weights)


# --- resolving --backbone-weights ----------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch.hub cache and a download that always fails (tests never hit the network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(downloads, "download_file", no_network)
    return tmp_path


def test_resolve_none_and_file(offline) -> None:
    assert resolve_backbone_weights("none") is None
    assert resolve_backbone_weights("NONE") is None
    weights = offline / "vgg.pth"
    weights.write_bytes(b"")
    assert resolve_backbone_weights(str(weights)) == weights
    with pytest.raises(UserError, match=r"--backbone-weights .*missing.pth: no such file"):
        resolve_backbone_weights(offline / "missing.pth")


def test_resolve_default_uses_torch_hub_cache(offline) -> None:
    cached = offline / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert vgg_weights.default_weights_path() == cached
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_backbone_weights(None) == cached


def test_resolve_default_offline_says_what_to_do(offline) -> None:
    announced = []
    with pytest.raises(UserError) as info:
        resolve_backbone_weights(None, on_download=lambda url, dest: announced.append(url))
    message = str(info.value)
    assert message.startswith("offline")
    assert str(offline / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "--backbone-weights FILE" in message and "--backbone-weights none" in message
    assert announced == ["https://download.pytorch.org/models/vgg16-397923af.pth"]


def test_prior_spec_dict_round_trip_keeps_arch_checks() -> None:
    spec = replace(ssd300_spec(), name="custom")
    model = build_model("ssd300", num_classes=1, prior_spec=spec)
    assert build_from_settings(model_settings(model)).prior_spec.name == "custom"


def test_forward_in_slices_equals_one_call() -> None:
    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=2, width_mult=0.25).eval()
    images = torch.randn(3, 3, 320, 320)
    from ssdcli.models import forward_in_slices

    with torch.no_grad():
        whole = model(images)
        for micro_batch in (None, 1, 2, 5):
            sliced = forward_in_slices(model, images, micro_batch)
            for a, b in zip(sliced, whole):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_default_download_reports_its_progress(offline, monkeypatch) -> None:
    """The ~528 MB VGG16 download goes through ssdcli.downloads, whose progress `ssd train` draws."""

    def fake_download(url, destination, on_progress=None):
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(b"weights")
        on_progress(0, 7)
        on_progress(7, 7)

    monkeypatch.setattr(downloads, "download_file", fake_download)
    progress = []
    path = resolve_backbone_weights(None, on_progress=lambda done, total: progress.append((done, total)))
    assert path == offline / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth" and path.read_bytes() == b"weights"
    assert progress == [(0, 7), (7, 7)]
