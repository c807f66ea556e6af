"""CPU inference convolutions through oneDNN with the weights packed once and the ReLU fused.

Eager ``nn.Conv2d`` on the CPU hands oneDNN the weights in PyTorch's layout on every call, and
oneDNN reorders them into its blocked layout each time (SSD300 has 100 MB of convolution
weights, reordered for every image); the ``nn.ReLU`` after it is one more pass over the output.
``torch.compile``'s freezing packs the weights once (``mkldnn._reorder_convolution_weight``) and
runs the ReLU as a post-op of the convolution (``mkldnn._convolution_pointwise``).
:class:`PackedConv2d` does the same in eager mode, with no compilation: it is the same oneDNN
convolution, so the outputs are those of ``nn.Conv2d`` + ``nn.ReLU`` bit for bit (tested on the
whole SSD300 and SSD512), and the SSD300 forward ran 12 % faster on the AMD EPYC (README "CPU
speed notes"). :func:`run_sequential` runs an ``nn.Sequential`` with each ``PackedConv2d``
followed by an ``nn.ReLU`` as one fused call.

The packed path is taken only where eager torch itself would run oneDNN (its ``use_mkldnn`` rule,
:func:`onednn_would_run`; below about 20k input elements torch computes the convolution its own
way, and so does this module) and only for inference: eval mode, no autograd, no autocast, a
float32 channels-last CPU input, outside tracing, scripting and compilation (exports keep
``aten::conv2d``), when oneDNN is enabled and torch has the two private ops (feature-detected;
when they are missing or fail, ``nn.Conv2d``'s own path runs). ``SSDCLI_UNPACKED_CONV=1`` (read
at each call) or :func:`unpacked_convolutions` turns it off.

Packed weights are kept per module and input shape, outside the module's state (a deepcopy or a
checkpoint never carries them), and are packed again when the weight changes (an optimizer step,
``load_state_dict``: the tensor's version counter moves).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor, nn

UNPACKED_ENV = "SSDCLI_UNPACKED_CONV"
"""Environment variable: set to 1 to run every convolution through ``nn.Conv2d``'s own path."""
MAX_SHAPES = 4
"""Input shapes whose packed weights one module keeps (one per micro-batch size in practice)."""
_NATIVE_MAX_ELEMENTS = 20480
"""torch's ``ConvParams::use_mkldnn``: a single-image input of at most this many elements runs
torch's own CPU convolution, not oneDNN."""

_UNPACKED = contextvars.ContextVar("ssdcli_unpacked_convolutions", default=False)
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], dict[tuple[int, ...], Tensor]]]
_PACKED = weakref.WeakKeyDictionary()
"""Module -> ((weight data pointer, weight version), {input shape: packed weight})."""
_FAILED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
"""Modules whose packing or packed call raised: they run ``nn.Conv2d``'s path from then on."""


@contextlib.contextmanager
def unpacked_convolutions() -> Iterator[None]:
    """Inside this block :class:`PackedConv2d` runs ``nn.Conv2d``'s own path (and a separate ReLU)."""
    token = _UNPACKED.set(True)
    try:
        yield
    finally:
        _UNPACKED.reset(token)


def _op(name: str):
    return getattr(torch.ops.mkldnn, name, None)


def packed_ready() -> bool:
    """Whether oneDNN is built in and enabled and torch has the private ops this module calls."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and _op("_convolution_pointwise") is not None
        and _op("_reorder_convolution_weight") is not None
    )


def onednn_would_run(conv: nn.Conv2d, x: Tensor) -> bool:
    """torch's own choice of oneDNN for a float32 CPU convolution (``ConvParams::use_mkldnn`` in
    ATen's Convolution.cpp): 1x1 unstrided, undilated kernels on one thread run torch's own code,
    and so do single images of at most 20480 elements with kernels up to 3x3, ungrouped."""
    strided = any(s != 1 for s in conv.stride)
    dilated = any(d != 1 for d in conv.dilation)
    kernel_h, kernel_w = conv.kernel_size
    batch = x.shape[0]
    one_by_one_ok = strided or dilated or batch >= 16 or (kernel_h, kernel_w) != (1, 1) or torch.get_num_threads() > 1
    large_enough = conv.groups > 1 or (kernel_h > 3 and kernel_w > 3) or batch > 1 or x.numel() > _NATIVE_MAX_ELEMENTS
    return one_by_one_ok and large_enough


class PackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU float32 inference runs oneDNN on weights packed once, with an
    optional fused ReLU (``forward(x, relu=True)``). Same parameters, state-dict keys and outputs
    as ``nn.Conv2d`` (+ ``nn.ReLU``)."""

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        if self._packed_applies(x):
            try:
                packed = self._packed_weight(x)
                return _op("_convolution_pointwise")(
                    x, packed, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    "relu" if relu else "none", [], "",
                )
            except RuntimeError:
                _FAILED.add(self)  # an op this torch build cannot run here: the eager path from now on
        y = super().forward(x)
        return torch.relu_(y) if relu else y  # as nn.ReLU(inplace=True)

    def _packed_applies(self, x: Tensor) -> bool:
        # Tracing first: under a trace, sizes are tensors and comparing them would warn.
        return (
            not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())
            and not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and not torch.is_autocast_enabled("cpu")
            and isinstance(self.padding, tuple)  # not "same" / "valid"
            and self.padding_mode == "zeros"
            and x.is_contiguous(memory_format=torch.channels_last)
            and self not in _FAILED
            and not _UNPACKED.get()
            and os.environ.get(UNPACKED_ENV, "").strip() in ("", "0")
            and onednn_would_run(self, x)
            and packed_ready()
        )

    def _packed_weight(self, x: Tensor) -> Tensor:
        state = (self.weight.data_ptr(), self.weight._version)
        held_state, by_shape = _PACKED.get(self, (None, {}))
        if held_state != state:
            by_shape = {}
            _PACKED[self] = (state, by_shape)
        shape = tuple(x.shape)
        packed = by_shape.get(shape)
        if packed is None:
            if len(by_shape) >= MAX_SHAPES:
                by_shape.clear()
            packed = _op("_reorder_convolution_weight")(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(shape),
            )
            by_shape[shape] = packed
        return packed


def sequential_outputs(layers: nn.Sequential, x: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``x`` through ``layers`` module by module, yielding ``(index, output)`` after each; a
    :class:`PackedConv2d` followed by an ``nn.ReLU`` runs as one fused call and yields once, at the
    ReLU's index (the same value ``layers`` would give there)."""
    modules = list(layers)
    index = 0
    while index < len(modules):
        layer = modules[index]
        if isinstance(layer, PackedConv2d) and index + 1 < len(modules) and isinstance(modules[index + 1], nn.ReLU):
            x = layer(x, relu=True)
            index += 1
        else:
            x = layer(x)
        yield index, x
        index += 1


def run_sequential(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)``, with :func:`sequential_outputs`' fused convolution + ReLU pairs."""
    for _, x in sequential_outputs(layers, x):
        pass
    return x
