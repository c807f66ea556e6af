"""3x3 convolutions by Winograd's minimal filtering (NNPACK) for CPU inference.

A 3x3 convolution computed tile by tile with Winograd's F(6x6, 3x3) transform needs about 4x
fewer multiplications than the direct sum (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016). PyTorch ships NNPACK's implementation as
``torch._nnpack_spatial_convolution`` but only dispatches to it for batches of 16 or more, after
oneDNN; SSD inference on the CPU goes image by image (:func:`ssdcli.models.micro_batch_size`), so
it never gets there on its own.

Measured on the 2-core development machine (AVX-512, 2 threads), NNPACK against oneDNN's
channels-last direct convolution for one image: conv1_2 (64 ch at 300 px) 21 vs 29 ms, conv3_2
(256 ch at 75 px) 13 vs 29 ms, conv4_2 (512 ch at 38 px) 19 vs 30 ms, SSD512's conv5 (512 ch at
32 px) 17 vs 21 ms; but conv5 at 19 px 13 vs 8 ms, and a 512 -> 16 head at 38 px 2.0 vs 1.0 ms.
Hence the rule: both sides of the input at least :data:`MIN_SIDE` pixels and at least
:data:`MIN_CHANNELS` channels in and out. Whole SSD300 forward, batch 1: 224 against 312 ms.

Winograd sums in another order than the direct convolution: outputs differ by about 1e-5 of their
largest magnitude (5.5e-6 for SSD300's raw outputs), as two BLAS libraries would. Training always
runs the direct convolution (oneDNN's backward wants its channels-last layout), and so do traced,
scripted and compiled graphs (export) and the reference of export's parity check
(:func:`direct_convolutions`). ``SSDCLI_EXACT_CONV=1`` in the environment turns the fast path off
for inference too. It is also off when torch was imported before ssdcli without an OpenMP spin
limit: see :data:`ssdcli.OPENMP_SPIN_COUNT`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

import ssdcli

MIN_SIDE = 32
"""Smallest input height and width (pixels) that goes through Winograd."""
MIN_CHANNELS = 64
"""Smallest number of input and of output channels that goes through Winograd."""
EXACT_ENV = "SSDCLI_EXACT_CONV"
"""Environment variable: set to 1 to compute every convolution directly."""

_DIRECT = contextvars.ContextVar("ssdcli_direct_convolutions", default=False)


@contextlib.contextmanager
def direct_convolutions() -> Iterator[None]:
    """Inside this block every :class:`WinogradConv2d` computes directly: the reference an
    exported model (which has the direct convolutions) is checked against."""
    token = _DIRECT.set(True)
    try:
        yield
    finally:
        _DIRECT.reset(token)


@functools.cache
def nnpack_ready() -> bool:
    """Whether NNPACK is built in and runs on this CPU (it needs AVX2 on x86).

    ``torch._nnpack_available`` also initialises the library: calling the convolution before it
    fails with "NNPACK SpatialConvolution_updateOutput failed".
    """
    return bool(torch.backends.nnpack.is_available() and torch._nnpack_available())


def exact_requested() -> bool:
    """``SSDCLI_EXACT_CONV`` is set to something other than empty or 0."""
    return os.environ.get(EXACT_ENV, "").strip() not in ("", "0")


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs as Winograd (NNPACK) in CPU float32 inference where that is faster.

    Same parameters, state-dict keys and results (to float rounding) as ``nn.Conv2d``; the
    fast path is taken only for a 3x3, stride 1, undilated, ungrouped convolution in eval mode,
    on a float32 CPU input with both sides >= :data:`MIN_SIDE` and channels >= :data:`MIN_CHANNELS`,
    outside tracing, scripting and compilation, unless ``SSDCLI_EXACT_CONV`` is set.
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

    def forward(self, x: Tensor) -> Tensor:
        if self._winograd_applies(x):
            # NNPACK reads NCHW: the channels-last weights (kept for training's sake) are copied,
            # ~0.6 ms for a 512x512x3x3 kernel; the output comes back NCHW.
            return torch._nnpack_spatial_convolution(
                x.contiguous(), self.weight.contiguous(), self.bias, list(self.padding), [1, 1]
            )
        return super().forward(x)

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
            and ssdcli.OPENMP_YIELDS  # else OpenMP's spinning threads eat the gain (ssdcli.OPENMP_SPIN_COUNT)
            and nnpack_ready()
            and not _DIRECT.get()
            and not exact_requested()
        )
