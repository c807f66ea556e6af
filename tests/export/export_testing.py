"""Helpers shared by the export tests: small checkpoints whose scores spread like a trained
network's, and the order-free comparison of detections."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ssdcli.checkpoint import load_checkpoint, save_checkpoint
from ssdcli.export.parity import compare_detections, sample_images
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import build_model, model_from_checkpoint, model_settings
from ssdcli.postprocess import FlatDetections
from ssdcli.priors import PriorSpec

CLASSES = ["circle", "square", "star"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    # Two shared cores: OpenMP's second thread mostly waits on a busy machine (measured 25x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def small_checkpoint(path: Path, arch: str, prior_spec: PriorSpec | None = None, **options: float) -> Path:
    """A random network whose scores spread like a trained one's: BatchNorm statistics measured on
    the sample images (with torchvision's init every MobileNet feature map collapses to a constant,
    which ties all scores) and heads with N(0, 0.05) weights. ``prior_spec``: the arch's preset
    when ``None``."""
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), prior_spec=prior_spec, **options)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(sample_images(model.image_size, model.mean, model.std))
        generator = torch.Generator().manual_seed(1)
        for head in [*model.conf_heads, *model.loc_heads]:
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    for norm in norms:
        norm.momentum = 0.1
    settings = model_settings(model)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "arch": arch,
            "num_classes": len(CLASSES),
            "options": settings["options"],
            "class_names": CLASSES,
            "image_size": settings["image_size"],
            "mean": settings["mean"],
            "std": settings["std"],
            "priors": settings["prior_spec"],
            "postprocess": PostprocessSettings().to_dict(),
        },
    )
    return path


def network_of(checkpoint: Path) -> nn.Module:
    return model_from_checkpoint(load_checkpoint(checkpoint)).eval()


def as_flat(outputs) -> FlatDetections:
    """Graph outputs (boxes, scores, labels, batch_index) -> :class:`FlatDetections`."""
    boxes, scores, labels, batch_index = outputs
    return FlatDetections(batch_index.long(), boxes, scores, labels.long())


def assert_same_detections(expected: FlatDetections, got: FlatDetections) -> None:
    """Same labels and images; boxes within 1e-3 and scores within 1e-4 (normalised), by content."""
    assert got.scores.numel() == expected.scores.numel() > 0
    assert sorted(zip(got.batch_index.tolist(), got.labels.tolist())) == sorted(
        zip(expected.batch_index.tolist(), expected.labels.tolist())
    )
    checks = {c.name: c for c in compare_detections(expected, got)}
    assert checks["detections"].max_diff == 0
    assert checks["boxes"].max_diff <= 1e-3 and checks["scores"].max_diff <= 1e-4
