"""Batched inference shared by ``ssd eval``, validation during training and ``ssd detect``:
weights file -> :class:`Detector` (:func:`load_detector`), pre-processed batches -> detections.

Images are read and resized in DataLoader workers (``to_model_input`` semantics, the exact
pre-processing of evaluation) while the model runs; post-processing is
:func:`ssdcli.postprocess.postprocess`, so every command scores and shows the same detections.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssdcli.boxes import xyxy_to_xywh
from ssdcli.data.records import DetectionDataset
from ssdcli.backends import RuntimeOptions
from ssdcli.errors import DataError, UserError
from ssdcli.postprocess import Detections, PostprocessSettings, postprocess
from ssdcli.preprocessing import Preprocessing
from ssdcli.image_files import ImageFiles, collate_items
from ssdcli.score_hint import best_class_scores


@dataclass
class Timings:
    """What a detector measured over a run: seconds spent per stage, summed over the images (read
    runs in workers, so it overlaps), and the best class scores it saw (:mod:`ssdcli.score_hint`).

    Attributes:
        best_scores: Tensor[C] float, index ``i - 1`` for label ``i``: the highest probability class
            ``i`` reached on any default box of any image, before the score threshold; NaN for a
            class the detector could not see. ``None``: the detector does not report them.
        hidden_below: probabilities at or below this never reach the detector's output (an ONNX
            model with its post-processing inside stops at its export threshold); 0 otherwise.
    """

    read: float = 0.0
    forward: float = 0.0
    post: float = 0.0
    images: int = 0
    best_scores: Tensor | None = None
    hidden_below: float = 0.0

    def see_scores(self, per_class: Tensor) -> None:
        """Fold one batch's per-class best scores (Tensor[C], NaN: not seen) into :attr:`best_scores`."""
        per_class = per_class.detach().float().cpu()
        self.best_scores = per_class if self.best_scores is None else torch.fmax(self.best_scores, per_class)


@dataclass
class BatchResult:
    """Detections of one batch: ``detections[i]`` belongs to ``paths[indices[i]]`` (for video,
    frame ``indices[i]``); ``originals[i]`` is its decoded image (uint8 Tensor[H, W, 3] RGB) when
    the reader kept it, else ``None``."""

    indices: list[int]
    sizes: list[tuple[int, int]]
    detections: list[Detections]
    errors: list[tuple[int, str]] = field(default_factory=list)
    originals: list = field(default_factory=list)


class Detector(Protocol):
    """A model behind ``ssd detect``: pre-processed batch in, final detections out.

    ``TorchDetector`` runs a checkpoint; an exported model (ONNX) provides the same attributes
    and ``predict`` so the rest of the pipeline does not change.

    Attributes:
        image_size: network input side S; inputs are resized to S x S.
        mean, std: RGB normalisation of inputs scaled to [0, 1].
        class_names: label ``i`` (1-based) is ``class_names[i - 1]``.
        settings: its post-processing; ``settings.score_threshold`` is ``--min-score`` (read by the
            zero-detection hint, which assumes 0 for a detector without it).
        preprocessing: how images become its input (channel order, normalisation, resize rule:
            :mod:`ssdcli.preprocessing`); :func:`preprocessing_of_detector` for one without it.
        category_ids: the COCO category id of each label, or ``None`` (``--coco-json`` then
            writes the 1-based label).
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    class_names: list[str]

    def predict(
        self, images: Tensor, sizes: Sequence[tuple[int, int]], timings: Timings | None = None
    ) -> list[Detections]:
        """``images``: float Tensor[B, 3, S, S] normalised (on the CPU); ``sizes``: ``(width,
        height)`` of each original image. Returns one :class:`Detections` per image, on the CPU,
        boxes xyxy in original-image pixels. Adds forward and post-processing seconds to ``timings``
        and, when the detector can see them, the best class scores (:meth:`Timings.see_scores`)."""
        ...


AUTOCAST_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""``precision`` -> the autocast dtype of :class:`TorchDetector` (fp32: no autocast)."""


class TorchDetector:
    """A PyTorch :class:`~ssdcli.models.SSD` plus the shared post-processing (the :class:`Detector`
    that eval, validation and detect all use).

    Args:
        precision: ``fp32``; ``fp16`` / ``bf16`` autocast (CUDA, or bf16 on the CPU: the model is
            then made channels-last, runs whole batches and the direct convolutions, since
            NNPACK's Winograd path is fp32-only); ``None``: ``fp16`` when ``amp``, else ``fp32``.
            Post-processing always runs in fp32.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        settings: PostprocessSettings = PostprocessSettings(),
        amp: bool = False,
        class_names: Sequence[str] = (),
        precision: str | None = None,
        preprocessing: Preprocessing | None = None,
        ignored_labels: Sequence[int] = (),
        category_ids: Sequence[int] | None = None,
    ) -> None:
        from ssdcli.models import micro_batch_size, priors_for_model

        self.precision = precision or ("fp16" if amp else "fp32")
        if self.precision not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"TorchDetector runs at fp32, fp16 or bf16, not {self.precision}")
        self.amp = self.precision != "fp32"
        self.channels_last = self.precision == "bf16" and device.type == "cpu"
        self.model = model.eval()
        self.device = device
        # bf16 on the CPU: one call for the whole batch measured faster than image by image
        # (README "Benchmarks"); fp32 keeps the measured micro-batch of micro_batch_size.
        self.micro_batch = None if self.channels_last else micro_batch_size(model, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.settings = settings
        self.priors = priors_for_model(model).to(device)  # (P, 4) cxcywh normalised
        self.variances = model.prior_spec.variances
        self.image_size: int = model.image_size
        self.mean = list(model.mean)
        self.std = list(model.std)
        self.preprocessing = preprocessing or Preprocessing(model.image_size, "rgb", model.mean, model.std, "uint8")
        self.class_names = list(class_names)
        self.ignored_labels = tuple(int(label) for label in ignored_labels)
        self.category_ids = None if category_ids is None else list(category_ids)

    def _forward_context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.amp:
            stack.enter_context(torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]))
            if self.device.type == "cpu":
                from ssdcli.models.winograd import direct_convolutions

                stack.enter_context(direct_convolutions())  # NNPACK would run fp32 under autocast
        return stack

    def predict(
        self, images: Tensor, sizes: Sequence[tuple[int, int]], timings: Timings | None = None
    ) -> list[Detections]:
        from ssdcli.models import forward_in_slices

        batch = images.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with self._forward_context():
            cls_logits, box_deltas = forward_in_slices(self.model, batch, self.micro_batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        forwarded = time.perf_counter()
        with torch.inference_mode():
            detections = postprocess(
                cls_logits.float(), box_deltas.float(), self.priors, image_sizes=list(sizes),
                variances=self.variances, ignored_labels=self.ignored_labels, **self.settings.to_dict(),
            )
            detections = [Detections(*(t.cpu() for t in d)) for d in detections]
            if timings is not None:
                timings.see_scores(best_class_scores(cls_logits))
        if timings is not None:
            timings.forward += forwarded - start
            timings.post += time.perf_counter() - forwarded
        return detections


def predict_batches(detector: Detector, loader: Iterable, timings: Timings | None = None) -> Iterator[BatchResult]:
    """Run ``detector`` over a loader of :func:`collate_items` batches, one result per batch.

    Items that failed to read (``error`` set) are left out of the forward pass and reported in
    :attr:`BatchResult.errors`.
    """
    for images, sizes, indices, errors, read_seconds, originals in loader:
        ok = [i for i, error in enumerate(errors) if error is None]
        failed = [(indices[i], errors[i]) for i in range(len(errors)) if errors[i] is not None]
        detections: list[Detections] = []
        if ok:
            detections = detector.predict(images[ok], [sizes[i] for i in ok], timings)
            if timings is not None:
                timings.read += read_seconds
                timings.images += len(ok)
        yield BatchResult(
            indices=[indices[i] for i in ok],
            sizes=[sizes[i] for i in ok],
            detections=detections,
            errors=failed,
            originals=[originals[i] for i in ok],
        )


def image_loader(
    paths: Sequence[Path], detector: Detector, batch_size: int, workers: int, keep_original: bool = False
) -> DataLoader:
    """A DataLoader reading and pre-processing ``paths`` in ``workers`` processes, in order."""
    prep = preprocessing_of_detector(detector)
    dataset = ImageFiles(paths, prep.image_size, prep.mean, prep.std, keep_original, prep)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_items)


def preprocessing_of_detector(detector: Detector) -> Preprocessing:
    """The detector's :class:`Preprocessing` (one without the attribute: RGB, ``uint8`` resize)."""
    prep = getattr(detector, "preprocessing", None)
    if prep is not None:
        return prep
    return Preprocessing(detector.image_size, "rgb", tuple(detector.mean), tuple(detector.std), "uint8")


def keep_labels(detections: Detections, labels: Tensor) -> Detections:
    """Only the detections whose label is in ``labels`` (Tensor[L] int64, 1-based); order kept."""
    keep = torch.isin(detections.labels, labels)  # (K,)
    return Detections(detections.boxes_xyxy[keep], detections.scores[keep], detections.labels[keep])


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


def class_labels(names: Sequence[str], class_names: Sequence[str]) -> Tensor:
    """Class names (``--classes``; blanks ignored) -> Tensor[L] int64 of their 1-based labels.

    Raises:
        UserError: no name, or a name the model does not know (listing the model's classes).
    """
    wanted = [name.strip() for name in names if name.strip()]
    unknown = [name for name in wanted if name not in class_names]
    if unknown or not wanted:
        raise UserError(
            f"--classes: {', '.join(unknown) or '(empty)'} not among the model's classes: {', '.join(class_names)}"
        )
    return torch.tensor([list(class_names).index(name) + 1 for name in wanted], dtype=torch.int64)


def detection_entries(detections: Detections, class_names: Sequence[str]) -> list[dict]:
    """The ``detections`` list of a --json entry: boxes xyxy in original-image pixels."""
    boxes = detections.boxes_xyxy.tolist()
    return [
        {
            "class_id": label,
            "label": class_names[label - 1],
            "score": round(score, 5),
            "box": [round(v, 2) for v in box],
        }
        for box, label, score in zip(boxes, detections.labels.tolist(), detections.scores.tolist())
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
    """:func:`detect_dataset` with a :class:`TorchDetector` of ``model`` (training validation,
    tests and the bench hold a model rather than a weights file)."""
    detector = TorchDetector(model, device, settings, amp)
    return detect_dataset(detector, dataset, batch_size, workers, progress, timings)


def detect_dataset(
    detector: Detector,
    dataset: DetectionDataset,
    batch_size: int = 8,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    timings: Timings | None = None,
) -> list[dict]:
    """Detections for every image of a dataset, as COCO results (what ``ssd eval`` scores).

    Args:
        progress: called with ``(images done, images in all)`` after each batch.

    Raises:
        DataError: an image of the dataset can no longer be read.
    """
    records = dataset.records
    loader = image_loader([r.image_path for r in records], detector, batch_size, workers)
    results: list[dict] = []
    done = 0
    for batch in predict_batches(detector, loader, timings):
        if batch.errors:
            raise DataError(batch.errors[0][1])
        for index, detections in zip(batch.indices, batch.detections):
            results += detections_to_coco(records[index].image_id, detections, dataset.category_ids)
        done += len(batch.indices)
        if progress is not None:
            progress(done, len(records))
    return results


def load_detector(
    weights: str | os.PathLike[str],
    device: str = "auto",
    settings: PostprocessSettings | dict | None = None,
    runtime: RuntimeOptions | None = None,
    notes: Callable[[str], None] | None = None,
) -> Detector:
    """The :class:`Detector` for a weights file: the one place that chooses a backend.

    Args:
        weights: an ssdcli checkpoint (``.pt``), or a model written by ``ssd export``: ``.onnx``
            (onnxruntime) or ``.xml`` (OpenVINO IR), both on the CPU.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
        settings: post-processing: ``None``, the model's own (its checkpoint's or export's); a
            dict, the model's with those values replaced (``None`` values left out); a
            :class:`PostprocessSettings`, those with the model's rule
            (:func:`ssdcli.postprocess.settings_for_model`).
        runtime: ``--backend`` / ``--precision`` / ``--calibration-data``
            (:mod:`ssdcli.backends`); ``None``: a checkpoint runs on PyTorch at the device's
            default precision (fp32 on the CPU, fp16 autocast on CUDA, so ``ssd eval`` and
            ``ssd detect`` give the same detections on one device), an export on its runtime.
        notes: called with each line the user should see (what ``auto`` chose and why, an
            export into the cache, bf16 emulated on this CPU, a default that changes detections).

    Raises:
        UserError: a file that is not a usable checkpoint or exported model, an unusable device,
            backend or precision, a missing optional package.
    """
    from ssdcli.backends import checkpoint_detector, exported_detector

    weights = Path(weights)
    if weights.suffix.lower() in (".onnx", ".xml"):
        return exported_detector(weights, device, settings, runtime)
    runtime = runtime if runtime is not None else RuntimeOptions(backend="torch")
    return checkpoint_detector(weights, resolve_device(device), settings, runtime, notes or (lambda message: None))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: not a device name ({exc}); use auto, cpu or cuda") from exc
