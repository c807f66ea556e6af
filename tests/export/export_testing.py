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


def trained_checkpoint(path: Path, data: Path, steps: int = 60, width_mult: float = 0.5) -> Path:
    """An ssdlite320 trained for ``steps`` full-batch SGD steps on the ``train`` split of an
    ``ssd data synth`` dataset (no augmentation): a detector with a clear VOC07 mAP on those shapes
    and spread, untied scores, made with the library's matching and loss alone (no training loop)."""
    from ssdcli.data.images import read_image_rgb
    from ssdcli.data.reader import load_dataset
    from ssdcli.data.transforms import to_model_input
    from ssdcli.loss import MultiBoxLoss
    from ssdcli.matching import assign_targets
    from ssdcli.models import priors_for_model

    dataset = load_dataset(data, split="train")
    classes = list(dataset.classes)
    torch.manual_seed(0)
    model = build_model("ssdlite320", len(classes), width_mult=width_mult)
    inputs = to_model_input([read_image_rgb(r.image_path) for r in dataset.records], model.image_size, model.mean,
                            model.std)
    most = max(r.num_boxes for r in dataset.records)
    boxes = torch.zeros(len(dataset.records), most, 4)
    labels = torch.zeros(len(dataset.records), most, dtype=torch.int64)
    for i, r in enumerate(dataset.records):
        scale = torch.tensor([r.width, r.height] * 2, dtype=torch.float32)
        boxes[i, : r.num_boxes] = torch.as_tensor(r.boxes_xyxy_px, dtype=torch.float32) / scale
        labels[i, : r.num_boxes] = torch.as_tensor(r.labels)
    target_labels, target_deltas = assign_targets(boxes, labels, priors_for_model(model),
                                                  variances=model.prior_spec.variances)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = MultiBoxLoss()
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 * min(1.0, (step + 1) / 10)  # warm-up: from scratch at 0.05 diverges
        cls_logits, box_deltas = model(inputs)
        loss = loss_fn(cls_logits, box_deltas, target_labels, target_deltas).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    settings = model_settings(model)
    save_checkpoint(path, {
        "model": model.state_dict(), "arch": "ssdlite320", "num_classes": len(classes),
        "options": settings["options"], "class_names": classes, "image_size": settings["image_size"],
        "mean": settings["mean"], "std": settings["std"], "priors": settings["prior_spec"],
        "postprocess": PostprocessSettings().to_dict(),
    })
    return path
