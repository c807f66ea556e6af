"""The inputs every benchmark runs on, built once: models, images, targets, trained-model outputs.

- SSD300 with 20 classes (VOC-sized head), freshly initialised with seed 0, and torchvision's
  ``ssd300_vgg16`` carrying the very same weights (:mod:`benchmarks.reference`).
- Images: the first ``B`` coco128 photos as decoded (uint8, their own sizes, ~640x480).
- Targets: those images' coco128 boxes (any of the 80 categories, folded onto labels 1..20 so
  the 21-logit head can hold them; only the boxes matter to matching).
- Score distributions for post-processing: the outputs of an SSDLite320 (20 classes) after a
  short :func:`ssdcli.train.fit` run on :mod:`ssdcli.data.synth` shapes, on held-out images,
  so the scores have the peaked, mostly-background shape of a trained detector rather than the
  near-uniform softmax of random logits. The checkpoint is cached under ``runs/bench/``.
- Detections for the COCO metric: coco128 ground truth jittered plus false positives, 100 per
  image (COCO's ``maxDets``), scored against the annotation json.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssdcli.data.reader import load_dataset
from ssdcli.data.records import DetectionDataset
from ssdcli.data.transforms import to_model_input
from ssdcli.models import SSD, build_model, priors_for_model

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"
CACHE = REPO / "runs" / "bench"
NUM_CLASSES = 20  # PASCAL VOC: the configuration SSD300 is benchmarked in
DETECTIONS_PER_IMAGE = 100


@dataclass
class TrainingSetup:
    """A short run of the detector that gives post-processing its score distribution: long
    enough that the model finds the shapes (VOC07 mAP is reported with the results), short
    enough for the benchmark's time budget. The demo's recipe, fewer epochs."""

    arch: str = "ssdlite320"
    images: int = 240
    epochs: int = 8
    batch_size: int = 8
    limit_batches: int = 0
    lr: float = 0.05
    warmup_iters: int = 30
    augment: str = "none"
    prior_scales: tuple[float, float] | None = (0.1, 0.95)

    def key(self) -> str:
        # The default boxes are part of the model: a change of the preset retrains.
        from ssdcli.priors import preset_spec

        spec = preset_spec(self.arch, self.prior_scales)
        text = json.dumps({**self.__dict__, "priors": spec.to_dict()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


QUICK_TRAINING = TrainingSetup(images=8, epochs=1, batch_size=4, limit_batches=1, warmup_iters=1)


def coco128_dataset() -> tuple[DetectionDataset, dict]:
    """coco128 as the readers see it, and its annotation json as loaded."""
    annotations = COCO128 / "annotations" / "instances_train2017.json"
    if not annotations.is_file():
        raise FileNotFoundError(f"coco128 not found at {COCO128}; the benchmarks read its images and boxes")
    dataset = load_dataset(COCO128, split="train")
    return dataset, json.loads(annotations.read_text())


def decoded_images(dataset: DetectionDataset, count: int) -> list[Tensor]:
    """The first ``count`` images with at least one box, as uint8 Tensor[H, W, 3] RGB."""
    from ssdcli.data.images import read_image_rgb

    records = [r for r in dataset.records if r.num_boxes > 0][:count]
    return [torch.from_numpy(read_image_rgb(r.image_path)) for r in records]


def batch_targets(dataset: DetectionDataset, count: int) -> tuple[Tensor, Tensor]:
    """Ground truth of the first ``count`` images with boxes, padded for :func:`assign_targets`.

    Returns:
        boxes_xyxy_norm Tensor[B, G, 4] (padding rows 0), labels Tensor[B, G] int64 in 1..20
        (0 = padding).
    """
    records = [r for r in dataset.records if r.num_boxes > 0][:count]
    most = max(r.num_boxes for r in records)
    boxes = torch.zeros(len(records), most, 4)
    labels = torch.zeros(len(records), most, dtype=torch.int64)
    for i, record in enumerate(records):
        scale = torch.tensor([record.width, record.height] * 2, dtype=torch.float32)
        boxes[i, : record.num_boxes] = torch.as_tensor(record.boxes_xyxy_px, dtype=torch.float32) / scale
        labels[i, : record.num_boxes] = (torch.as_tensor(record.labels) - 1) % NUM_CLASSES + 1
    return boxes, labels


def torchvision_targets(boxes_xyxy_norm: Tensor, labels: Tensor, image_size: int) -> list[dict[str, Tensor]]:
    """The padded batch as torchvision's per-image targets, xyxy in input pixels."""
    targets = []
    for boxes, image_labels in zip(boxes_xyxy_norm, labels):
        keep = image_labels > 0
        targets.append({"boxes": boxes[keep] * image_size, "labels": image_labels[keep]})
    return targets


def ssd300(seed: int = 0) -> SSD:
    torch.manual_seed(seed)
    return build_model("ssd300", NUM_CLASSES).eval()


@dataclass
class TrainedOutputs:
    """What :func:`trained_outputs` gives the post-processing rows."""

    cls_logits: Tensor  # [B, P, 21]
    box_deltas: Tensor  # [B, P, 4]
    priors_cxcywh: Tensor  # [P, 4]
    image_size: int
    voc07_map: float  # of the model on the held-out images, at score 0.01: proof that it detects


def trained_outputs(setup: TrainingSetup, batch: int, progress=None) -> TrainedOutputs:
    """Outputs of a briefly trained detector on held-out synthetic images.

    Trains with :func:`ssdcli.train.fit` (CPU, no augmentation workers) the first time and caches
    the checkpoint in ``runs/bench/``.
    """
    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.config import TrainConfig
    from ssdcli.data.images import read_image_rgb
    from ssdcli.data.synth import CLASSES, make_synthetic_dataset
    from ssdcli.train import fit
    from ssdcli.evaluation import evaluate
    from ssdcli.inference import predict_dataset
    from ssdcli.models import model_from_checkpoint

    checkpoint_path = CACHE / f"{setup.arch}-{setup.key()}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        make_synthetic_dataset(data, num_images=max(setup.images, 10), seed=0)
        if not checkpoint_path.is_file():
            if progress is not None:
                progress(f"training {setup.arch} briefly for realistic scores (cached in {CACHE})")
            classes_file = Path(tmp) / "classes.txt"
            # The four synth shapes plus 16 classes that never occur: a 20-class head whose
            # unused classes a trained model learns to keep low, as on images without them.
            names = list(CLASSES) + [f"absent{i}" for i in range(NUM_CLASSES - len(CLASSES))]
            classes_file.write_text("\n".join(names) + "\n")
            config = TrainConfig(
                data=str(data),
                split="train",
                epochs=setup.epochs,
                arch=setup.arch,
                batch_size=setup.batch_size,
                lr=setup.lr,
                warmup_iters=setup.warmup_iters,
                schedule="cosine",
                augment=setup.augment,
                prior_scales=setup.prior_scales,
                limit_batches=setup.limit_batches,
                output=str(Path(tmp) / "run"),
                device="cpu",
                workers=0,
                classes_file=str(classes_file),
                eval_every=0,
                backbone_weights="none",
                seed=0,
            )
            result = fit(config)
            CACHE.mkdir(parents=True, exist_ok=True)
            result.last.replace(checkpoint_path)
        model = model_from_checkpoint(load_checkpoint(checkpoint_path)).eval()
        val = load_dataset(data, split="val")
        # Labels 1..4 are the shapes in both (the reader sorts class names, as CLASSES is);
        # detections of the 16 absent classes have no ground truth to be scored against.
        detections = [d for d in predict_dataset(model, val, torch.device("cpu"), workers=0)
                      if d["category_id"] <= len(CLASSES)]
        voc07_map = evaluate(val, detections, metrics=["voc07"]).voc07_map
        images = [read_image_rgb(r.image_path) for r in val.records]
    images = (images * batch)[:batch]
    with torch.inference_mode():
        inputs = to_model_input(images, model.image_size, model.mean, model.std)
        cls_logits, box_deltas = model(inputs)
    return TrainedOutputs(cls_logits, box_deltas, priors_for_model(model), model.image_size, voc07_map)


def coco_detections(dataset: DetectionDataset, seed: int = 0) -> list[dict]:
    """COCO results for coco128: every ground-truth box jittered (a true or near-miss detection),
    topped up with random false positives to ``DETECTIONS_PER_IMAGE`` per image."""
    rng = np.random.default_rng(seed)
    category_ids = dataset.category_ids
    results: list[dict] = []
    for record in dataset.records:
        count = 0
        for box, label in zip(record.boxes_xyxy_px, record.labels):
            if count == DETECTIONS_PER_IMAGE:
                break
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            jitter = rng.normal(0.0, 0.1, 4) * [w, h, w, h]
            results.append(_result(record.image_id, category_ids[int(label) - 1], x1 + jitter[0], y1 + jitter[1],
                                   w + jitter[2], h + jitter[3], rng.uniform(0.3, 1.0), record))
            count += 1
        for _ in range(DETECTIONS_PER_IMAGE - count):
            w, h = rng.uniform(4, record.width / 2), rng.uniform(4, record.height / 2)
            x, y = rng.uniform(0, record.width - w), rng.uniform(0, record.height - h)
            category = category_ids[int(rng.integers(len(category_ids)))]
            results.append(_result(record.image_id, category, x, y, w, h, rng.uniform(0.0, 0.6), record))
    return results


def _result(image_id, category_id, x, y, w, h, score, record) -> dict:
    x, y = min(max(x, 0.0), record.width - 1.0), min(max(y, 0.0), record.height - 1.0)
    w, h = max(min(w, record.width - x), 1.0), max(min(h, record.height - y), 1.0)
    return {"image_id": image_id, "category_id": int(category_id), "bbox": [x, y, w, h], "score": float(score)}


def trained_checkpoint(setup: TrainingSetup, progress=None) -> tuple[Path, Path]:
    """The bench SSDLite's checkpoint (trained by :func:`trained_outputs` when missing) and the
    synthetic dataset it was trained on (the same files: ``make_synthetic_dataset`` is
    deterministic), both kept in ``runs/bench/``."""
    from ssdcli.data.synth import make_synthetic_dataset

    path = CACHE / f"{setup.arch}-{setup.key()}.pt"
    if not path.is_file():
        trained_outputs(setup, 1, progress)
    count = max(setup.images, 10)
    synth = CACHE / f"synth-{count}"
    if not (synth / "ImageSets" / "Main" / "val.txt").is_file():
        make_synthetic_dataset(synth, num_images=count, seed=0, overwrite=True)
    return path, synth
