"""Timing helpers: interleaved medians, the machine's fp32 GEMM peak, convolution FLOPs.

On a shared 2-core machine the load changes from second to second, so :func:`compare` runs ours
and the reference alternately (ours, reference, ours, ...) and takes each side's median: a burst of
foreign load then hits both sides instead of whichever happened to run during it.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ssdcli.models.packed import PackedConv2d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn`` in milliseconds (CUDA work included)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


def compare(
    ours: Callable[[], object],
    reference: Callable[[], object] | None,
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> tuple[float, float | None]:
    """Median milliseconds of ``ours`` and ``reference``, measured alternately.

    Args:
        repeats: timed calls of each side at least (after ``warmup`` untimed calls of each).
        min_seconds: go on (up to :data:`MAX_REPEATS` calls of each side) until both sides
            together took this long: a median of 5 calls of a few milliseconds moves by 10 % from
            run to run on a shared machine, one of 2 s worth of calls does not.
        reference: ``None`` times ours alone.

    Returns:
        ``(ours_ms, reference_ms)``; ``reference_ms`` is ``None`` without a reference.
    """
    for _ in range(warmup):
        ours()
        if reference is not None:
            reference()
    ours_times, reference_times = [], []
    while len(ours_times) < repeats or (
        sum(ours_times) + sum(reference_times) < min_seconds * 1000.0 and len(ours_times) < MAX_REPEATS
    ):
        ours_times.append(time_ms(ours, device))
        if reference is not None:
            reference_times.append(time_ms(reference, device))
    return statistics.median(ours_times), (statistics.median(reference_times) if reference_times else None)


MAX_REPEATS = 200
"""Most timed calls of each side :func:`compare` makes to fill ``min_seconds``."""


def gemm_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """fp32 ``torch.matmul`` throughput of two ``size x size`` matrices, GFLOP/s (best of ``repeats``).

    The best run rather than the median: the peak is what the hardware can do when nothing else
    competes for it, the yardstick the forward pass is held against.
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up: thread pool, cuBLAS handles
    best = min(time_ms(lambda: torch.matmul(a, b), device) for _ in range(repeats))
    return 2.0 * size**3 / (best / 1000.0) / 1e9


def conv_peak_gflops(device: torch.device, size: int = 75, channels: int = 256, repeats: int = 5) -> float:
    """fp32 throughput of one 3x3 convolution, ``channels`` -> ``channels`` on a ``size x size``
    map (SSD300's conv3 stage at the defaults), channels-last on the CPU, GFLOP/s (best of ``repeats``).

    The forward pass is convolutions, which torch runs through oneDNN, not through the BLAS that
    ``torch.matmul`` uses; on an AMD CPU with MKL as the BLAS the matmul reaches less than half of
    what oneDNN's convolutions do, so a matmul alone understates the machine. On the CPU it runs
    as the forward's convolutions do, with the weights packed once (:mod:`ssdcli.models.packed`).
    """
    x = torch.randn(1, channels, size, size, device=device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    conv = PackedConv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
    with torch.inference_mode():
        conv(x)  # warm-up: primitive creation (and on the CPU the weights' packing)
        best = min(time_ms(lambda: conv(x), device) for _ in range(repeats))
    return 2.0 * channels * channels * 9 * size * size / (best / 1000.0) / 1e9


def conv_gflops(model: nn.Module, image_size: int) -> float:
    """GFLOP of one image through every ``nn.Conv2d`` of ``model`` (a multiply-add = 2 FLOP).

    Counted from the output shapes of a shape-only pass on the meta device:
    ``2 * C_out * H_out * W_out * (C_in / groups) * k_h * k_w`` per convolution (bias adds,
    ReLU, pooling and the L2 norm are left out: under 0.1 % for SSD300).
    """
    meta = copy.deepcopy(model).to("meta").eval()
    total = 0.0

    def count(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        c_out, h, w = output.shape[1:]
        total += 2.0 * c_out * h * w * (module.in_channels // module.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total / 1e9


def compare_many(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, float]:
    """Median milliseconds of each of ``calls``, measured round-robin (one call of each per round),
    as :func:`compare` does for two: a burst of foreign load hits every side alike. Each round
    runs the calls in a new order (a seeded shuffle), so no side mostly runs right after the same
    other side: whatever one leaves behind (caches, busy threads, a core's lowered clock after
    AMX / AVX-512 work) is spread over all. A rotation of the list, as this did before, still put
    nine tenths of a ten-call round's calls after the same neighbour every round.

    Rounds go on past ``repeats`` (up to :data:`MAX_REPEATS`) until all sides together took
    ``min_seconds``.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    shuffler = random.Random(0)
    rounds = 0
    while rounds < repeats or (
        sum(sum(t) for t in times.values()) < min_seconds * 1000.0 and rounds < MAX_REPEATS
    ):
        shuffler.shuffle(names)
        for name in names:
            times[name].append(time_ms(calls[name], device))
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}
