"""Batched inference shared by ``ssd eval``, validation during training and ``ssd detect``.

Images are read and resized in DataLoader workers (``to_model_input`` semantics, the exact
pre-processing of evaluation) while the model runs; post-processing is
:func:`ssdcli.postprocess.postprocess`, so every command scores and shows the same detections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssdcli.boxes import xyxy_to_xywh
from ssdcli.data.images import read_image_rgb
from ssdcli.data.records import DetectionDataset
from ssdcli.data.transforms import normalize, resize_uint8
from ssdcli.errors import DataError
from ssdcli.postprocess import Detections, postprocess


@dataclass(frozen=True)
class PostprocessSettings:
    """Caffe ``DetectionOutput`` settings; the defaults are the evaluation ones."""

    score_threshold: float = 0.01
    nms_iou: float = 0.45
    top_k_candidates: int = 400
    max_detections: int = 200

    def to_dict(self) -> dict:
        return {
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "top_k_candidates": self.top_k_candidates,
            "max_detections": self.max_detections,
        }


@dataclass
class Timings:
    """Seconds spent per stage, summed over the images (read runs in workers, so it overlaps)."""

    read: float = 0.0
    forward: float = 0.0
    post: float = 0.0
    images: int = 0


class ImageFiles(Dataset):
    """Image files -> ``(input float Tensor[3, S, S] normalised, (width, height), index, error)``.

    An unreadable image yields ``error`` (a message) and an empty input instead of raising, so a
    folder with some bad files still processes the rest; the caller decides what an error means.
    """

    def __init__(self, paths: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.paths = list(paths)
        self.size = size
        self.mean = list(mean)
        self.std = list(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        start = time.perf_counter()
        try:
            image = read_image_rgb(self.paths[index])
        except DataError as exc:
            return torch.zeros(3, self.size, self.size), (0, 0), index, str(exc), time.perf_counter() - start
        height, width = image.shape[:2]
        chw = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W) uint8
        tensor = normalize(resize_uint8(chw, self.size), self.mean, self.std)  # (3, S, S)
        return tensor, (width, height), index, None, time.perf_counter() - start


def _collate(batch):
    images = torch.stack([item[0] for item in batch])  # (B, 3, S, S)
    return images, [item[1] for item in batch], [item[2] for item in batch], [item[3] for item in batch], sum(
        item[4] for item in batch
    )


@dataclass
class BatchResult:
    """Detections of one batch: ``detections[i]`` belongs to ``paths[indices[i]]``."""

    indices: list[int]
    sizes: list[tuple[int, int]]
    detections: list[Detections]
    errors: list[tuple[int, str]] = field(default_factory=list)


def predict_files(
    model: nn.Module,
    paths: Sequence[Path],
    device: torch.device,
    settings: PostprocessSettings = PostprocessSettings(),
    batch_size: int = 8,
    workers: int = 2,
    amp: bool = False,
    timings: Timings | None = None,
) -> Iterator[BatchResult]:
    """Run the model over image files, yielding detections in original-image pixels per batch.

    Args:
        model: an :class:`~ssdcli.models.SSD` (``image_size``, ``mean``, ``std``, ``prior_spec``).
        paths: image files, in the order results are yielded.
        settings: post-processing thresholds.
        amp: autocast the forward pass to float16 on CUDA.
        timings: filled in when given.
    """
    from ssdcli.models import priors_for_model

    priors = priors_for_model(model).to(device)
    dataset = ImageFiles(paths, model.image_size, model.mean, model.std)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    model.eval()
    for images, sizes, indices, errors, read_seconds in loader:
        ok = [i for i, error in enumerate(errors) if error is None]
        failed = [(indices[i], errors[i]) for i in range(len(errors)) if errors[i] is not None]
        detections: list[Detections] = []
        if ok:
            batch = images[ok].to(device, non_blocking=True)
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                cls_logits, box_deltas = model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forwarded = time.perf_counter()
            with torch.inference_mode():
                detections = postprocess(
                    cls_logits.float(),
                    box_deltas.float(),
                    priors,
                    image_sizes=[sizes[i] for i in ok],
                    **settings.to_dict(),
                )
                detections = [Detections(*(t.cpu() for t in d)) for d in detections]
            if timings is not None:
                timings.forward += forwarded - start
                timings.post += time.perf_counter() - forwarded
                timings.read += read_seconds
                timings.images += len(ok)
        yield BatchResult(
            indices=[indices[i] for i in ok], sizes=[sizes[i] for i in ok], detections=detections, errors=failed
        )


def detections_to_coco(image_id: str | int, detections: Detections, category_ids: Sequence[int] | None) -> list[dict]:
    """One image's detections as COCO results entries (SPEC "detections file").

    ``category_ids`` maps 1-based labels to the json's ids for COCO data; ``None`` keeps the
    1-based class index (VOC-style data).
    """
    boxes_xywh = xyxy_to_xywh(detections.boxes_xyxy).tolist()
    labels = detections.labels.tolist()
    scores = detections.scores.tolist()
    return [
        {
            "image_id": image_id,
            "category_id": category_ids[label - 1] if category_ids is not None else label,
            "bbox": [round(v, 3) for v in box],
            "score": round(score, 6),
        }
        for box, label, score in zip(boxes_xywh, labels, scores)
    ]


def predict_dataset(
    model: nn.Module,
    dataset: DetectionDataset,
    device: torch.device,
    settings: PostprocessSettings = PostprocessSettings(),
    batch_size: int = 8,
    workers: int = 2,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
    timings: Timings | None = None,
) -> list[dict]:
    """Detections for every image of a dataset, as COCO results (what ``ssd eval`` scores).

    Raises:
        DataError: an image of the dataset can no longer be read.
    """
    records = dataset.records
    results: list[dict] = []
    done = 0
    for batch in predict_files(
        model, [r.image_path for r in records], device, settings, batch_size, workers, amp, timings
    ):
        if batch.errors:
            raise DataError(batch.errors[0][1])
        for index, detections in zip(batch.indices, batch.detections):
            results += detections_to_coco(records[index].image_id, detections, dataset.category_ids)
        done += len(batch.indices)
        if progress is not None:
            progress(done, len(records))
    return results


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    from ssdcli.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: not a device name ({exc}); use auto, cpu or cuda") from exc
