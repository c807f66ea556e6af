"""Winograd (NNPACK) 3x3 convolutions for CPU inference: off unless asked for, when they run, that
they agree with the direct convolution computed in float64, and the fall-back when torch lacks
NNPACK's private entry points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssdcli.models import build_model, winograd
from ssdcli.models.vgg import ChannelsLastMaxPool2d
from ssdcli.models.winograd import WinogradConv2d

needs_nnpack = pytest.mark.skipif(not winograd.nnpack_ready(), reason="NNPACK does not run on this CPU")


@pytest.fixture(autouse=True)
def no_switch_in_the_environment(monkeypatch):
    """Each test starts with neither SSDCLI_EXACT_CONV nor SSDCLI_WINOGRAD set."""
    monkeypatch.delenv(winograd.EXACT_ENV, raising=False)
    monkeypatch.delenv(winograd.WINOGRAD_ENV, raising=False)


@pytest.fixture
def forced():
    """The Winograd path wherever it applies."""
    with winograd.winograd_convolutions():
        yield


@pytest.fixture
def nnpack_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Input shapes of every NNPACK call made through WinogradConv2d."""
    calls: list[tuple[int, ...]] = []
    original = torch._nnpack_spatial_convolution

    def spy(x, *args):
        calls.append(tuple(x.shape))
        return original(x, *args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", spy)
    return calls


def _conv(in_channels: int, out_channels: int, **options) -> WinogradConv2d:
    torch.manual_seed(0)
    conv = WinogradConv2d(in_channels, out_channels, 3, padding=1, **options)
    return conv.eval()


def _exact64(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(
        x.double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding, conv.dilation, conv.groups
    )


@needs_nnpack
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_matches_float64_direct_convolution(nnpack_calls, forced, memory_format) -> None:
    conv = _conv(64, 96).to(memory_format=memory_format)
    x = torch.randn(1, 64, 40, 33).contiguous(memory_format=memory_format)  # odd width: partial tiles
    with torch.inference_mode():
        fast = conv(x)
    assert nnpack_calls == [(1, 64, 40, 33)]
    exact = _exact64(conv, x)
    assert fast.shape == exact.shape == (1, 96, 40, 33)
    # F(6x6, 3x3) sums in another order: ~1e-5 of the largest output, vs ~3e-7 for oneDNN
    error = (fast.double() - exact).abs().max() / exact.abs().max()
    assert 0 < error < 1e-4


@needs_nnpack
def test_batches_are_convolved_image_by_image_equally(nnpack_calls, forced) -> None:
    conv = _conv(64, 64)
    x = torch.randn(3, 64, 32, 32)
    with torch.inference_mode():
        batch = conv(x)
        single = torch.cat([conv(image[None]) for image in x])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)
    assert len(nnpack_calls) == 4


@needs_nnpack
@pytest.mark.parametrize(
    "case",
    [
        "training", "small map", "few channels", "stride 2", "dilated", "float64", "exact env",
        "traced", "direct block", "direct block inside forced",
    ],
)
def test_direct_convolution_where_winograd_does_not_apply(nnpack_calls, monkeypatch, case) -> None:
    size, in_channels, options = 32, 64, {}
    if case == "small map":
        size = winograd.MIN_SIDE - 1  # SSD300's 19x19 conv5: oneDNN is faster there
    if case == "few channels":
        in_channels = 3  # conv1_1
    if case == "stride 2":
        options = {"stride": 2}
    if case == "dilated":
        options = {"dilation": 2, "padding": 2}
    conv = WinogradConv2d(in_channels, 64, 3, **{"padding": 1, **options})
    conv.train(case == "training")
    x = torch.randn(1, in_channels, size, size)
    if case == "float64":
        conv, x = conv.double(), x.double()
    if case == "exact env":
        monkeypatch.setenv(winograd.EXACT_ENV, "1")  # after import: read at each call
    with winograd.winograd_convolutions():  # only the case itself may turn the fast path off
        if case == "traced":
            with torch.no_grad():
                traced = torch.jit.trace(conv, (x,), check_trace=False)
            out = traced(x)
        elif case.startswith("direct block"):
            with winograd.direct_convolutions():
                out = conv(x)
        else:
            out = conv(x)
    assert nnpack_calls == []
    torch.testing.assert_close(out.double(), _exact64(conv, x), rtol=1e-5, atol=1e-5)


@needs_nnpack
def test_exact_env_zero_keeps_the_fast_path(nnpack_calls, forced, monkeypatch) -> None:
    monkeypatch.setenv(winograd.EXACT_ENV, "0")
    with torch.inference_mode():
        _conv(64, 64)(torch.randn(1, 64, 32, 32))
    assert len(nnpack_calls) == 1


@needs_nnpack
def test_gradients_flow_through_the_fast_path_in_eval_mode(nnpack_calls, forced) -> None:
    conv = _conv(64, 64)
    x = torch.randn(1, 64, 32, 32, requires_grad=True)
    conv(x).square().sum().backward()
    reference = nn.Conv2d(64, 64, 3, padding=1)
    reference.load_state_dict(conv.state_dict())
    y = x.detach().clone().requires_grad_()
    reference(y).square().sum().backward()
    assert len(nnpack_calls) == 1
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, rtol=1e-3, atol=1e-3)


@needs_nnpack
def test_ssd300_inference_uses_winograd_on_the_large_maps_and_agrees(nnpack_calls, forced, monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model("ssd300", num_classes=20).eval()
    images = torch.randn(1, 3, 300, 300)
    with torch.inference_mode():
        fast = model(images)
        monkeypatch.setenv(winograd.EXACT_ENV, "1")
        exact = model(images)
    # conv1_2 (300 px), conv2_x (150), conv3_x (75), conv4_x (38) and the 38x38 class head; not
    # conv1_1 (3 channels), conv5_x (19 px), the 38x38 box head (16 channels) or anything smaller.
    sides = [shape[-1] for shape in nnpack_calls]
    assert sides == [300, 150, 150, 75, 75, 75, 38, 38, 38, 38]
    for a, b in zip(fast, exact):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


@needs_nnpack
def test_off_by_default_on_every_shape_it_could_take(nnpack_calls) -> None:
    torch.manual_seed(0)
    model = build_model("ssd300", num_classes=20).eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 300, 300))
    assert nnpack_calls == []


@needs_nnpack
@pytest.mark.parametrize(("value", "used"), [("1", True), ("yes", True), ("0", False), ("", False), (" ", False)])
def test_the_environment_switch_is_read_at_each_call(nnpack_calls, monkeypatch, value, used) -> None:
    conv = _conv(64, 64)
    x = torch.randn(1, 64, 32, 32)
    with torch.inference_mode():
        conv(x)
        monkeypatch.setenv(winograd.WINOGRAD_ENV, value)  # after import and after a first call
        out = conv(x)
        monkeypatch.delenv(winograd.WINOGRAD_ENV)
        conv(x)
    assert len(nnpack_calls) == (1 if used else 0)
    torch.testing.assert_close(out.double(), _exact64(conv, x), rtol=1e-4, atol=1e-4)


@needs_nnpack
def test_exact_env_and_direct_block_win_over_the_winograd_switch(nnpack_calls, monkeypatch) -> None:
    monkeypatch.setenv(winograd.WINOGRAD_ENV, "1")
    conv = _conv(64, 64)
    x = torch.randn(1, 64, 32, 32)
    with torch.inference_mode():
        with winograd.direct_convolutions():
            conv(x)
        monkeypatch.setenv(winograd.EXACT_ENV, "1")
        with winograd.winograd_convolutions():
            conv(x)
    assert nnpack_calls == []


@pytest.mark.parametrize("missing", ["_nnpack_spatial_convolution", "_nnpack_available"])
def test_without_nnpack_entry_points_every_convolution_is_direct(monkeypatch, missing) -> None:
    monkeypatch.delattr(torch, missing, raising=False)
    monkeypatch.setenv(winograd.WINOGRAD_ENV, "1")
    assert not winograd.nnpack_ready()
    conv = _conv(64, 64)
    x = torch.randn(1, 64, 32, 32)
    with torch.inference_mode():
        by_env = conv(x)
        with winograd.winograd_convolutions():
            by_block = conv(x)
    for out in (by_env, by_block):
        torch.testing.assert_close(out.double(), _exact64(conv, x), rtol=1e-5, atol=1e-5)


def test_nnpack_that_fails_to_initialise_counts_as_missing(monkeypatch) -> None:
    def broken() -> bool:
        raise RuntimeError("nnpack init failed")

    monkeypatch.setattr(torch, "_nnpack_available", broken, raising=False)
    assert winograd.nnpack_ready() is False


def test_state_dict_is_that_of_plain_conv2d() -> None:
    conv = _conv(64, 64)
    plain = nn.Conv2d(64, 64, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert conv.state_dict().keys() == plain.state_dict().keys()


def test_channels_last_max_pool_equals_max_pool() -> None:
    x = torch.randn(2, 8, 75, 75)
    pool = ChannelsLastMaxPool2d(2, stride=2, ceil_mode=True)
    out = pool(x)
    assert out.shape == (2, 8, 38, 38)  # pool3: 75 -> 38 as in Caffe
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, nn.MaxPool2d(2, stride=2, ceil_mode=True)(x))

