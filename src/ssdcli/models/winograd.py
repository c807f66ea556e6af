"""3x3 convolutions by Winograd's minimal filtering (NNPACK) for CPU inference, on request.

A 3x3 convolution computed tile by tile with Winograd's F(6x6, 3x3) transform needs about 4x
fewer multiplications than the direct sum (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016). PyTorch ships NNPACK's implementation as the private
``torch._nnpack_spatial_convolution`` but only dispatches to it for batches of 16 or more, after
oneDNN; SSD inference on the CPU goes image by image (:func:`ssdcli.models.micro_batch_size`), so
it never gets there on its own.

Whether that pays depends on the CPU, and more on the whole network than on any one layer: on an
AMD EPYC it made the SSD300 forward clearly faster, on an Intel Sapphire Rapids (AVX-512,
AMX) it made it slower, although one of its layers alone ran faster there (README "CPU speed
notes"). A short probe could not tell the two apart reliably on a shared machine, so the path is
off by default and ``SSDCLI_WINOGRAD=1`` (or :func:`winograd_convolutions`) turns it on, for
those who measured it faster on their machine (``benchmarks/run.py --only
forward_ssd300,forward_ssd300_winograd``). Only large maps take it even then: both sides of the
input at least :data:`MIN_SIDE` pixels, at least :data:`MIN_CHANNELS` channels in and out.

Winograd sums in another order than the direct convolution: outputs differ by about 1e-5 of their
largest magnitude, as two BLAS libraries would. Training always runs the direct convolution
(oneDNN's backward wants its channels-last layout), and so do traced, scripted and compiled graphs
(export), the reference of export's parity check and bf16 inference (:func:`direct_convolutions`),
and every convolution when ``SSDCLI_EXACT_CONV=1``. Both variables are read at each call, never
at import.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from ssdcli.models.packed import PackedConv2d

MIN_SIDE = 32
"""Smallest input height and width (pixels) that goes through Winograd."""
MIN_CHANNELS = 64
"""Smallest number of input and of output channels that goes through Winograd."""
EXACT_ENV = "SSDCLI_EXACT_CONV"
"""Environment variable: set to 1 to compute every convolution directly (wins over the next)."""
WINOGRAD_ENV = "SSDCLI_WINOGRAD"
"""Environment variable: set to 1 to run the large 3x3 convolutions of CPU fp32 inference as Winograd."""

_DIRECT = contextvars.ContextVar("ssdcli_direct_convolutions", default=False)
_FORCED = contextvars.ContextVar("ssdcli_winograd_convolutions", default=False)


@contextlib.contextmanager
def direct_convolutions() -> Iterator[None]:
    """Inside this block every :class:`WinogradConv2d` computes directly: the reference an
    exported model (which has the direct convolutions) is checked against, and bf16 autocast."""
    token = _DIRECT.set(True)
    try:
        yield
    finally:
        _DIRECT.reset(token)


@contextlib.contextmanager
def winograd_convolutions() -> Iterator[None]:
    """Inside this block :class:`WinogradConv2d` takes the Winograd path wherever it applies, as
    ``SSDCLI_WINOGRAD=1`` does (:func:`direct_convolutions` and ``SSDCLI_EXACT_CONV=1`` still win)."""
    token = _FORCED.set(True)
    try:
        yield
    finally:
        _FORCED.reset(token)


def nnpack_ready() -> bool:
    """Whether torch has NNPACK's private entry points and NNPACK runs on this CPU (AVX2 on x86).

    Feature-detected, since ``torch._nnpack_*`` are private and may go away.
    ``torch._nnpack_available`` also initialises the library: calling the convolution before it
    fails with "NNPACK SpatialConvolution_updateOutput failed".
    """
    if not (hasattr(torch, "_nnpack_available") and hasattr(torch, "_nnpack_spatial_convolution")):
        return False
    try:
        return bool(torch._nnpack_available())
    except RuntimeError:
        return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def exact_requested() -> bool:
    """``SSDCLI_EXACT_CONV`` is set to something other than empty or 0."""
    return _env_flag(EXACT_ENV)


def winograd_requested() -> bool:
    """``SSDCLI_WINOGRAD`` is set to something other than empty or 0, or
    :func:`winograd_convolutions` is active."""
    return _FORCED.get() or _env_flag(WINOGRAD_ENV)


def _nnpack_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> Tensor:
    # NNPACK reads NCHW: channels-last weights (kept for training's sake) are copied; the output
    # comes back NCHW.
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, padding, [1, 1])


class WinogradConv2d(PackedConv2d):
    """``nn.Conv2d`` that can run as Winograd (NNPACK) in CPU float32 inference, when asked to,
    and otherwise as :class:`~ssdcli.models.packed.PackedConv2d` (``forward(x, relu=True)``
    applies the ReLU after either).

    Same parameters, state-dict keys and results (to float rounding) as ``nn.Conv2d``; the
    Winograd path is taken only when requested (:func:`winograd_requested`), for a 3x3, stride 1,
    undilated, ungrouped convolution in eval mode, on a float32 CPU input with both sides >=
    :data:`MIN_SIDE` and channels >= :data:`MIN_CHANNELS`, outside tracing, scripting and
    compilation, when NNPACK is there (:func:`nnpack_ready`), unless ``SSDCLI_EXACT_CONV`` is set
    or :func:`direct_convolutions` is active.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **options: object) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        self.winograd_shape = (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and max(self.padding) < 3  # NNPACK's limit: padding below the kernel size
            and min(in_channels, out_channels) >= MIN_CHANNELS
        )

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self._winograd_applies(x):
            y = _nnpack_conv(x, self.weight, self.bias, list(self.padding))
            return y.relu_() if relu else y
        return super().forward(x, relu)

    def _winograd_applies(self, x: Tensor) -> bool:
        # Tracing first: under a trace, sizes are tensors and comparing them would warn.
        return (
            not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())
            and self.winograd_shape
            and not self.training
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and min(x.shape[-2], x.shape[-1]) >= MIN_SIDE
            and winograd_requested()
            and not _DIRECT.get()
            and not exact_requested()
            and nnpack_ready()
        )
