"""Packed oneDNN convolutions with the ReLU fused (ssdcli.models.packed): the outputs of
``nn.Conv2d`` + ``nn.ReLU``, taken only for inference where torch itself runs oneDNN, packed
again when the weights change, and the fall-back when torch lacks (or fails in) the private ops."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssdcli.models import build_model, packed
from ssdcli.models.packed import PackedConv2d, run_sequential, sequential_outputs, unpacked_convolutions

needs_onednn = pytest.mark.skipif(not packed.packed_ready(), reason="torch has no usable oneDNN here")


@pytest.fixture(autouse=True)
def no_switch_in_the_environment(monkeypatch):
    monkeypatch.delenv(packed.UNPACKED_ENV, raising=False)


@pytest.fixture
def calls(monkeypatch) -> dict[str, list[tuple[int, ...]]]:
    """Input shapes of every call of the two private ops, by op name."""
    seen: dict[str, list[tuple[int, ...]]] = {"_convolution_pointwise": [], "_reorder_convolution_weight": []}
    original = packed._op

    def spying(name):
        op = original(name)
        if op is None:
            return None

        def spy(*args):
            seen[name].append(tuple(args[0].shape) if name == "_convolution_pointwise" else tuple(args[-1]))
            return op(*args)

        return spy

    monkeypatch.setattr(packed, "_op", spying)
    return seen


def _conv(in_channels: int = 64, out_channels: int = 32, kernel: int = 3, **options) -> PackedConv2d:
    torch.manual_seed(0)
    conv = PackedConv2d(in_channels, out_channels, kernel, **{"padding": kernel // 2, **options})
    return conv.to(memory_format=torch.channels_last).eval()


def _image(channels: int = 64, side: int = 40, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)


def _eager(conv: nn.Conv2d, x: torch.Tensor, relu: bool) -> torch.Tensor:
    with unpacked_convolutions():
        y = conv(x)
    return torch.relu(y) if relu else y


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    # The same oneDNN convolution: bit for bit on the CPUs measured (README "CPU speed notes");
    # held here to a millionth of the largest output, far below any packing mistake.
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("options", [{}, {"stride": 2}, {"dilation": 2, "padding": 2}, {"kernel": 1}])
def test_packed_equals_conv_and_relu(calls, relu, options) -> None:
    kernel = options.pop("kernel", 3)
    conv = _conv(kernel=kernel, **options)
    x = _image()
    with torch.inference_mode():
        fast = conv(x, relu=relu)
        assert calls["_convolution_pointwise"] == [tuple(x.shape)]
        _assert_same(fast, _eager(conv, x, relu))
    assert fast.is_contiguous(memory_format=torch.channels_last)
    if relu:
        assert float(fast.min()) == 0.0


@needs_onednn
@pytest.mark.parametrize("arch", ["ssd300", pytest.param("ssd512", marks=pytest.mark.slow)])
def test_whole_vgg_ssd_gives_the_unpacked_outputs(calls, arch) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=20).eval()
    images = torch.randn(1, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        logits, deltas = model(images)
        fused = len(calls["_convolution_pointwise"])
        with unpacked_convolutions():
            want_logits, want_deltas = model(images)
        assert len(calls["_convolution_pointwise"]) == fused  # the block turned it off
    _assert_same(logits, want_logits)
    _assert_same(deltas, want_deltas)
    # conv1_1 .. fc7, the first extras and the large heads; not the small maps torch computes
    # itself, except SSD512's 4x4 conv10_2 (on 2x2 maps), which torch too hands to oneDNN
    assert fused >= 20
    small = [shape for shape in calls["_convolution_pointwise"] if shape[0] * shape[1] * shape[2] * shape[3] <= 20480]
    assert small == ([] if arch == "ssd300" else [(1, 128, 2, 2)])


@needs_onednn
@pytest.mark.parametrize(
    "case", ["training", "autograd", "autocast", "traced", "nchw input", "float64", "small map", "env", "block",
             "1x1 on one thread"],
)
def test_eager_path_where_packing_does_not_apply(calls, monkeypatch, case) -> None:
    conv, x = _conv(), _image()
    if case == "small map":
        x = _image(side=17)  # 64 x 17 x 17 = 18496 elements: torch's own convolution
    if case == "1x1 on one thread":
        conv = _conv(kernel=1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # read by onednn_would_run only
    if case == "nchw input":
        x = x.contiguous()
    if case == "float64":
        conv, x = conv.double(), x.double()
    if case == "training":
        conv.train()
    if case == "env":
        monkeypatch.setenv(packed.UNPACKED_ENV, "1")  # after import: read at each call
    if case == "traced":
        with torch.no_grad():
            out = torch.jit.trace(conv, (x,), check_trace=False)(x)
    elif case == "autograd":
        out = conv(x)
        assert out.requires_grad
    elif case == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        assert out.dtype == torch.bfloat16
    elif case == "block":
        with torch.no_grad(), unpacked_convolutions():
            out = conv(x)
    else:
        with torch.no_grad():
            out = conv(x)
    assert calls["_convolution_pointwise"] == []
    with torch.no_grad():
        reference = nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_changed_weights_are_packed_again(calls) -> None:
    conv, x = _conv(), _image()
    with torch.no_grad():
        first = conv(x)
        conv(x)
        assert len(calls["_reorder_convolution_weight"]) == 1  # packed once, used twice
        conv.weight.mul_(-2.0)  # as an optimizer step would: in place, the version counter moves
        _assert_same(conv(x), _eager(conv, x, relu=False))
        other = _conv()
        other.weight.data.normal_()
        conv.load_state_dict(other.state_dict())
        _assert_same(conv(x), _eager(other, x, relu=False))
    assert len(calls["_reorder_convolution_weight"]) == 3
    assert not torch.equal(first, conv(x).detach())


@needs_onednn
def test_each_input_shape_gets_its_packing_and_the_module_keeps_a_few(calls) -> None:
    conv = _conv()
    shapes = [(1, 40), (2, 40), (1, 40), (1, 48)] + [(1, side) for side in range(20, 20 + 2 * packed.MAX_SHAPES, 2)]
    with torch.inference_mode():
        for batch, side in shapes:
            x = _image(side=side, batch=batch)
            _assert_same(conv(x), _eager(conv, x, relu=False))
    assert len(calls["_reorder_convolution_weight"]) == len(set(shapes))
    assert len(packed._PACKED[conv][1]) <= packed.MAX_SHAPES


@needs_onednn
def test_a_packed_model_still_deep_copies_and_saves(tmp_path) -> None:
    conv, x = _conv(), _image()
    with torch.inference_mode():
        conv(x)
    twin = copy.deepcopy(conv)
    torch.save(conv.state_dict(), tmp_path / "conv.pt")
    assert set(torch.load(tmp_path / "conv.pt", weights_only=True)) == {"weight", "bias"}
    with torch.inference_mode():
        _assert_same(twin(x), _eager(conv, x, relu=False))


def test_without_the_private_ops_the_eager_path_runs(monkeypatch) -> None:
    monkeypatch.setattr(packed, "_op", lambda name: None)  # a torch without them
    assert not packed.packed_ready()
    conv, x = _conv(), _image()
    with torch.inference_mode():
        want = torch.relu(nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        torch.testing.assert_close(conv(x, relu=True), want)


@needs_onednn
def test_an_op_that_fails_falls_back_for_good(monkeypatch) -> None:
    original = packed._op
    failures = []

    def failing(name):
        if name == "_convolution_pointwise":
            def fail(*args):
                failures.append(1)
                raise RuntimeError("could not create a primitive")
            return fail
        return original(name)

    monkeypatch.setattr(packed, "_op", failing)
    conv, x = _conv(), _image()
    with torch.inference_mode():
        want = _eager(conv, x, relu=True)
        _assert_same(conv(x, relu=True), want)
        _assert_same(conv(x, relu=True), want)
    assert failures == [1]  # tried once, then the eager path


def test_sequential_runs_conv_relu_pairs_fused_and_yields_the_relu_index() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(
        PackedConv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 1), nn.ReLU(), PackedConv2d(8, 4, 1),
    ).eval()
    x = torch.randn(2, 8, 12, 12)
    seen = []
    with torch.inference_mode():
        outputs = list(sequential_outputs(layers, x))
        reference = x
        for index, layer in enumerate(layers):
            reference = layer(reference)
            seen.append((index, reference))
    # the fused pair yields at 1 (its ReLU); the plain nn.Conv2d + ReLU at 3 and 4; the last conv at 5
    assert [index for index, _ in outputs] == [1, 2, 3, 4, 5]
    for index, output in outputs:
        torch.testing.assert_close(output, seen[index][1])
    with torch.inference_mode():
        torch.testing.assert_close(run_sequential(layers, x), layers(x))
