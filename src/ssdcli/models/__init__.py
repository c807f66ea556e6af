"""SSD networks: build one by arch name, rebuild one from a checkpoint's plain settings.

``ARCHS`` is the one table of architectures: per name its builder, build options and ImageNet
backbone weights. Every model is an
:class:`~ssdcli.models.ssd.SSD` with the same contract: ``model(images)`` ->
``(cls_logits Tensor[N, P, K + 1], box_deltas Tensor[N, P, 4])`` in the order of
``priors_for_model(model)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssdcli.models.mobilenet import ssdlite320
from ssdcli.models.mobilenet_weights import load_imagenet_mobilenet_v3
from ssdcli.models.ssd import SSD
from ssdcli.models.vgg import ssd300, ssd512
from ssdcli.models.vgg_weights import load_imagenet_vgg16, load_vgg16_backbone, resolve_backbone_weights
from ssdcli.priors import PRESETS, PriorSpec, generate_priors


@dataclass(frozen=True)
class Architecture:
    """One row of :data:`ARCHS`.

    Attributes:
        build: ``build(num_classes, prior_spec, **options) -> SSD``.
        options: the build options it accepts (stored in :attr:`SSD.options` and in checkpoints).
        backbone_weights: ``load(model, weights, on_progress)``, which puts ImageNet weights into a fresh
            network's backbone as ``ssd train --backbone-weights`` asks (a file, ``None`` for the
            default download, ``"none"`` for none); ``None`` when the arch has no such weights
            and trains from its own initialisation.
    """

    build: Callable[..., SSD]
    options: tuple[str, ...] = ()
    backbone_weights: Callable[..., None] | None = None


ARCHS: dict[str, Architecture] = {
    "ssd300": Architecture(ssd300, backbone_weights=load_imagenet_vgg16),
    "ssd512": Architecture(ssd512, backbone_weights=load_imagenet_vgg16),
    # ImageNet MobileNetV3-Large has the full tail: a run that takes them builds reduced_tail=False
    # (ssdcli.train.setup.run_build_options).
    "ssdlite320": Architecture(ssdlite320, options=("width_mult", "reduced_tail"),
                               backbone_weights=load_imagenet_mobilenet_v3),
}
"""Arch name -> :class:`Architecture`. The default prior preset of an arch has the same name in
:data:`ssdcli.priors.PRESETS`; :data:`ssdcli.config.ARCH_NAMES` lists the same names."""

__all__ = [
    "ARCHS",
    "Architecture",
    "SSD",
    "build_from_settings",
    "backbone_modules",
    "build_model",
    "forward_in_slices",
    "load_backbone_weights",
    "micro_batch_size",
    "load_vgg16_backbone",
    "model_from_checkpoint",
    "model_settings",
    "priors_for_model",
    "resolve_backbone_weights",
]


def build_model(arch: str, num_classes: int, prior_spec: PriorSpec | None = None, **options: float) -> SSD:
    """A freshly initialised SSD.

    Args:
        arch: a key of :data:`ARCHS`.
        num_classes: object classes, background excluded.
        prior_spec: default boxes; the arch's preset when ``None``. Its feature maps must match
            the network's (checked).
        options: arch-specific options, e.g. ``width_mult=0.5`` for ``ssdlite320``.

    Raises:
        ValueError: unknown arch or option, or a prior spec that does not fit the network.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    unknown = sorted(set(options) - set(ARCHS[arch].options))
    if unknown:
        allowed = ", ".join(ARCHS[arch].options) or "none"
        raise ValueError(f"{arch} does not take option(s) {', '.join(unknown)} (accepted: {allowed})")
    spec = prior_spec if prior_spec is not None else PRESETS[arch]()
    return ARCHS[arch].build(num_classes, spec, **options)


def backbone_modules(model: SSD) -> list[nn.Module]:
    """The part of ``model``'s backbone that ImageNet weights (or an ``--init`` detector's
    classifier layers) fill, which ``--freeze-backbone-epochs`` fixes: VGG16's conv1_1 .. conv7
    (not the L2Norm scale, nor the extras), MobileNetV3's features (not the extras)."""
    from ssdcli.models.mobilenet import MobileNetV3Backbone
    from ssdcli.models.vgg import VGG16Backbone

    backbone = model.backbone
    if isinstance(backbone, VGG16Backbone):
        return [backbone.vgg]
    if isinstance(backbone, MobileNetV3Backbone):
        return [backbone.stage16, backbone.stage32]
    raise ValueError(f"{model.arch}: no known backbone to freeze")


def load_backbone_weights(model: SSD, weights: str | None, on_progress: Callable[[int, int | None], None] | None = None) -> bool:
    """Put the ImageNet backbone weights of ``model``'s arch into it, as ``--backbone-weights``
    asks (:attr:`Architecture.backbone_weights`).

    Returns:
        False, leaving the model untouched, when its arch has no ImageNet weights (``weights``
        is then not looked at); True otherwise (``"none"`` included: the arch was asked).

    Raises:
        UserError: the weights file is missing or wrong, or the default weights cannot be
            downloaded (``on_progress(bytes_done, bytes_total)`` follows a download).
    """
    load = ARCHS[model.arch].backbone_weights
    if load is None:
        return False
    load(model, weights, on_progress)
    return True


CPU_MICRO_BATCH = 1
"""Images per inference call for networks of full convolutions on the CPU."""


def micro_batch_size(model: nn.Module, device: torch.device) -> int | None:
    """How many images at a time ``model`` should see on ``device`` in inference; ``None`` = the
    whole batch, always (training then takes whole batches too).

    On the CPU, VGG16 SSDs (no BatchNorm, no depthwise convolutions) go image by image: one
    image's activations stay closer to the caches than a batch's, and there is plenty of work per
    layer for the threads even so. Training times its slices on the machine instead, where this
    is not ``None`` (:mod:`ssdcli.train.micro_batch`). MobileNet SSDLite keeps whole batches: one
    image leaves its thin depthwise layers too little work, and in training its BatchNorm
    statistics depend on the images seen together. GPUs get whole batches. Measurements: README
    "CPU speed notes".
    """
    if device.type != "cpu":
        return None
    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in model.modules()):
        return None
    return CPU_MICRO_BATCH


def forward_in_slices(model: nn.Module, images: Tensor, micro_batch: int | None) -> tuple[Tensor, Tensor]:
    """``model(images)`` run ``micro_batch`` images at a time (``None``: all at once), for
    inference: the slices' outputs are concatenated, ``(cls_logits Tensor[N, P, K + 1],
    box_deltas Tensor[N, P, 4])`` as one call would give them."""
    if micro_batch is None or images.shape[0] <= micro_batch:
        return model(images)
    outputs = [model(chunk) for chunk in images.split(micro_batch)]
    cls_logits = torch.cat([logits for logits, _ in outputs])  # (N, P, K + 1)
    box_deltas = torch.cat([deltas for _, deltas in outputs])  # (N, P, 4)
    return cls_logits, box_deltas


def priors_for_model(model: SSD) -> Tensor:
    """The model's default boxes, ``Tensor[P, 4]`` cxcywh normalised, row ``i`` = output row ``i``."""
    return generate_priors(model.prior_spec)


def model_settings(model: SSD) -> dict:
    """Plain settings (str / int / float / list / dict) that :func:`build_from_settings` rebuilds
    the same architecture from; stored in checkpoints and export metadata."""
    return {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "options": dict(model.options),
        "prior_spec": model.prior_spec.to_dict(),
        "image_size": model.image_size,
        "mean": list(model.mean),
        "std": list(model.std),
    }


def build_from_settings(settings: dict) -> SSD:
    """Rebuild the architecture described by :func:`model_settings` (weights not loaded).

    Raises:
        ValueError: missing or malformed settings, or settings no network can satisfy.
    """
    try:
        arch = str(settings["arch"])
        num_classes = int(settings["num_classes"])
        options = {str(k): float(v) for k, v in dict(settings.get("options", {})).items()}
        spec = PriorSpec.from_dict(settings["prior_spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed model settings: {exc!r}") from exc
    return build_model(arch, num_classes, prior_spec=spec, **options)


def model_from_checkpoint(checkpoint: dict, source: str | os.PathLike[str] | None = None) -> SSD:
    """The trained network held by a checkpoint dict (from :func:`ssdcli.checkpoint.load_checkpoint`).

    Args:
        source: the file it came from, named in the error message.

    Raises:
        CheckpointError: the settings or weights do not make a network this version can build
            (one line: the file, the counts of missing, unexpected and mis-shaped weights).
    """
    from ssdcli.checkpoint_checks import state_dict_mismatch
    from ssdcli.errors import CheckpointError

    settings = {
        "arch": checkpoint.get("arch"),
        "num_classes": checkpoint.get("num_classes"),
        "options": checkpoint.get("options", {}),
        "prior_spec": checkpoint.get("priors"),
    }
    where = f"{os.fspath(source)}: " if source is not None else "checkpoint: "
    try:
        model = build_from_settings(settings)
        mismatch = state_dict_mismatch(model.state_dict(), checkpoint["model"])
        if mismatch is not None:
            raise CheckpointError(
                f"{where}does not hold a usable {settings['arch']} network with {settings['num_classes']} classes: "
                f"{mismatch}; it was written for another network, or edited"
            )
        model.load_state_dict(checkpoint["model"])
        # the checkpoint's normalisation (an imported model's differs from the arch's default)
        model.mean = tuple(float(m) for m in checkpoint.get("mean", model.mean))
        model.std = tuple(float(s) for s in checkpoint.get("std", model.std))
    except (ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}does not hold a usable {settings['arch']} network: {first}") from exc
    return model
