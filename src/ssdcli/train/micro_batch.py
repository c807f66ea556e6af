"""How many images each pass of a CPU training step takes, chosen by timing this machine:
:func:`run_micro_batch`.

On the CPU a VGG16 SSD's training step can send its batch through the network a few images at a
time (:func:`ssdcli.train.epoch.forward_backward`: the slices' losses and gradients add up to the
whole batch's). Which is fastest depends on the CPU: on an AMD EPYC image by image was 6 % faster
than a batch of 8 in one pass, on an Intel Sapphire Rapids the batch of 8 in one pass was 7-17 %
faster than image by image (README "CPU speed notes"). So a new run on the CPU times a forward and
backward pass of each of :data:`PROBED_SIZES` images that divides its batch (the whole batch
among them when it is no larger) on synthetic inputs, and trains with the fewest milliseconds per
image. The decision is cached per network, batch size and machine
(:func:`ssdcli.backends.machine_key`), so the timing happens once, and it is saved in the run's
checkpoints: a resumed run slices its batches as it did before, whatever the cache holds, so
resuming stays exact.

``$SSDCLI_MICRO_BATCH`` (:data:`MICRO_BATCH_ENV`) fixes the choice of a new run: a number of
images per pass, or ``whole``. GPUs and networks with BatchNorm (ssdlite320: its statistics depend
on the images seen together) always take whole batches (:func:`ssdcli.models.micro_batch_size`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ssdcli.errors import UserError
from ssdcli.loss import MultiBoxLoss
from ssdcli.matching import assign_targets
from ssdcli.models import SSD, micro_batch_size, model_settings
from ssdcli.timing import fastest_calls, read_decision, save_decision

MICRO_BATCH_ENV = "SSDCLI_MICRO_BATCH"
"""A number of images per pass, ``whole`` or ``auto`` (the default: timed)."""
PROBED_SIZES: tuple[int, ...] = (1, 2, 4, 8)
"""Images per pass a run on the CPU times (those that divide its batch; the whole batch when it
is at most the last). A batch of 32 is timed at 8 images per pass at most: a pass costs as much as
its images, and the timing would cost a few whole steps."""
PROBE_WARMUP = 1
"""Untimed passes of each size first (a first pass of a new size sets up oneDNN's kernels)."""
PROBE_ROUNDS = 3
"""Timed passes of each size at least (the fastest counts): with two, three probes of SSD300 at
batch 8 on a shared 2-core Sapphire Rapids picked 4, 4 and 2 images per pass, where 5 interleaved
whole steps ranked 4 first and 2 last (all four within 7 %); about 90 s there."""
PROBE_SECONDS = 3.0
"""More rounds (up to :data:`PROBE_MAX_ROUNDS`) until the timed passes took this long: a small
network's few passes are within the noise of a shared machine."""
PROBE_MAX_ROUNDS = 10

Notes = Callable[[str], None]


def run_micro_batch(
    model: SSD,
    device: torch.device,
    batch_size: int,
    loss_fn: MultiBoxLoss,
    priors: torch.Tensor,
    saved: int | None = None,
    notes: Notes = lambda message: None,
    cache_dir: Path | None = None,
) -> int:
    """Images per forward and backward pass of a training step of ``batch_size`` images
    (``batch_size``: the whole batch in one pass).

    Args:
        priors: Tensor[P, 4] of ``model``, on ``device`` (the timed passes' targets).
        saved: a resumed run's number (:attr:`TrainState.micro_batch`), kept as it is.
        notes: where the lines about timing go (once per machine).
        cache_dir: the decisions' cache (``None``: :func:`ssdcli.export.cache.cache_root`).

    Raises:
        UserError: ``$SSDCLI_MICRO_BATCH`` is neither a positive number, ``whole`` nor ``auto``.
    """
    if micro_batch_size(model, device) is None:
        return batch_size
    if saved is not None:
        return min(saved, batch_size)
    fixed = fixed_micro_batch(batch_size)
    if fixed is not None:
        return fixed
    sizes = candidate_sizes(batch_size)
    if len(sizes) == 1:
        return sizes[0]
    choice_file = _choice_file(model, batch_size, cache_dir)
    cached = read_decision(choice_file, "images_per_pass")
    if cached in sizes:
        return int(cached)
    notes(f"timing training passes of {_listed(sizes)} images on this machine, to send the batch of {batch_size} "
          f"through the network the fastest way (once per machine; ${MICRO_BATCH_ENV}=N or whole skips it)")
    ms_per_image = probe(model, sizes, loss_fn, priors)
    best = min(ms_per_image, key=ms_per_image.get)
    timed = " / ".join(f"{ms_per_image[k]:.0f}" for k in sizes)
    notes(f"{timed} ms per image at {' / '.join(map(str, sizes))} images per pass: training {best} at a time "
          f"(decision cached in {choice_file.parent})")
    save_decision(choice_file, {"images_per_pass": best, "batch_size": batch_size,
                                "ms_per_image": {str(k): v for k, v in ms_per_image.items()}},
                  notes, "cannot save the training pass decision")
    return best


def fixed_micro_batch(batch_size: int, environ: dict[str, str] | None = None) -> int | None:
    """``$SSDCLI_MICRO_BATCH`` for a batch of ``batch_size``; ``None`` when unset or ``auto``."""
    value = (os.environ if environ is None else environ).get(MICRO_BATCH_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "whole":
        return batch_size
    if value.isdigit() and int(value) >= 1:
        return min(int(value), batch_size)
    raise UserError(f"${MICRO_BATCH_ENV}={value}: give a number of images per training pass, whole or auto")


def candidate_sizes(batch_size: int) -> list[int]:
    """The images per pass a batch of ``batch_size`` is timed at: those of :data:`PROBED_SIZES`
    that divide it (no pass is left short), and the whole batch when it is at most the largest."""
    sizes = [k for k in PROBED_SIZES if k < batch_size and batch_size % k == 0]
    return sizes + [batch_size] if batch_size <= PROBED_SIZES[-1] else sizes


def probe(model: nn.Module, sizes: list[int], loss_fn: MultiBoxLoss, priors: torch.Tensor) -> dict[int, float]:
    """Milliseconds per image of the fastest forward and backward pass of each of ``sizes``
    images (:func:`ssdcli.timing.fastest_calls`), in training mode on synthetic inputs with one
    box each. The model's weights, mode and gradients, and the random number generators, are as
    they were before."""
    from ssdcli.train.epoch import forward_backward  # (epoch -> setup -> this module at import)

    device = priors.device
    generator = torch.Generator().manual_seed(0)
    size = int(model.image_size)
    images = torch.randn(max(sizes), 3, size, size, generator=generator).to(device)  # (N, 3, S, S)
    boxes = torch.tensor([[[0.2, 0.25, 0.6, 0.75]]], device=device).expand(max(sizes), 1, 4)  # (N, 1, 4)
    labels = torch.ones(max(sizes), 1, dtype=torch.int64, device=device)  # (N, 1)
    with torch.no_grad():
        target_labels, target_deltas = assign_targets(boxes, labels, priors, variances=model.prior_spec.variances)

    def one_pass(count: int) -> None:
        forward_backward(model, images[:count], target_labels[:count], target_deltas[:count], loss_fn)
        model.zero_grad(set_to_none=True)

    was_training = model.training
    model.train()
    try:
        times = fastest_calls({k: functools.partial(one_pass, k) for k in sizes},
                              PROBE_WARMUP, PROBE_ROUNDS, PROBE_SECONDS, PROBE_MAX_ROUNDS)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {k: times[k] / k for k in sizes}


def _choice_file(model: SSD, batch_size: int, cache_dir: Path | None) -> Path:
    from ssdcli.backends import machine_key
    from ssdcli.export.cache import cache_root

    text = json.dumps([model_settings(model), batch_size, machine_key()], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return (cache_dir or cache_root()) / "choices" / f"train-{model.arch}-b{batch_size}-{digest}.json"


def _listed(sizes: list[int]) -> str:
    """``1, 2 and 4``."""
    words = [str(k) for k in sizes]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
