"""From network outputs to detections: the one post-processing used by eval, detect and export.

softmax -> per class, the ``top_k_candidates`` default boxes above ``score_threshold`` -> decode only
those -> NMS per class AND image -> the best ``max_detections`` per image -> clip to the image ->
original-image pixels.

This is Caffe's ``DetectionOutput`` layer (``nms_threshold`` 0.45, ``top_k`` 400, ``keep_top_k``
200, ``confidence_threshold`` 0.01 for evaluation), batched over images instead of looping: the
default rule, ``caffe``, runs NMS on the decoded boxes as they are and clips only the kept ones.
The ``torchvision`` rule clips every decoded box before NMS, as torchvision's SSD does (imported
torchvision models and version-1 checkpoints use it); :data:`RULES`, ``PostprocessSettings.rule``.
Under ``caffe``, decoded coordinates are bounded to +-:data:`ssdcli.postprocess_paths.COORDINATE_BOUND` image sides before
NMS (so one NMS call can keep classes apart exactly): a box reaching more than four image sides
beyond the image is rare enough that its IoU with another such box need not be exact.

:func:`postprocess_flat` has two exact implementations of the same result, chosen the way
torchvision's ``batched_nms`` chooses its own:

- eager (eval, detect, training validation): :func:`ssdcli.postprocess_paths.flat_eager`. It never runs NMS on
  more boxes than the answer needs. A box's fate under greedy NMS depends only on the
  better-scored boxes of its own image and class, so each image's candidates are taken in score
  order, a prefix at a time: once a prefix holds ``max_detections`` survivors, nothing after it
  can enter the answer. At score 0.01 an image has thousands of candidates (all classes) but its
  200 survivors sit in the first few hundred, so this does a fraction of the IoU work of NMS over
  every candidate, and one ``nms`` call per image instead of one per (image, class). The images
  go through together, a round at a time (the next stretch of every image that still needs
  survivors), and a round's ``nms`` calls share the CPU threads: ``nms`` releases the GIL.
- traced / scripted (``ssd export --postprocess``): :func:`ssdcli.postprocess_paths.flat_traceable`, with no
  Python branch on tensor values and only operators ONNX has (``batched_nms`` becomes
  ``NonMaxSuppression``; no ``bincount``, no ``sort(stable=True)``).

tests/test_postprocess.py checks the two against each other and against torchvision's ``nms``
run one image and one class at a time. Boxes with exactly equal scores (one default box, two
classes at the same probability) may be listed in a different order by the two; which of two
equal-score overlapping boxes of a class survives NMS depends on that order, in Caffe as here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ssdcli import postprocess_paths as paths
from ssdcli.errors import UserError
from ssdcli.postprocess_paths import FlatDetections

RULES = ("caffe", "torchvision")
"""Post-processing rules (:attr:`PostprocessSettings.rule`):

- ``caffe`` (the default): Caffe's ``DetectionOutput`` and ssd.pytorch's ``Detect``: NMS on the
  decoded boxes as they are, only the kept boxes clipped to the image.
- ``torchvision``: torchvision's ``SSD.postprocess_detections``: every decoded box clipped to the
  image first, NMS on the clipped boxes (a box that sticks out overlaps less once clipped, so the
  two keep different boxes). Imported torchvision models use it, and version-1 checkpoints (this
  project clipped first until checkpoint format 2).
"""


@dataclass(frozen=True)
class PostprocessSettings:
    """Caffe ``DetectionOutput`` settings; the defaults are the evaluation ones.

    Checked when built (the one place these ranges live); the messages name the flags of
    ``ssd detect`` / ``ssd export`` that set them.

    Attributes:
        score_threshold: keep class probabilities strictly above this, in [0, 1) (``--min-score``).
        nms_iou: NMS IoU above which the lower-scored box goes, in (0, 1] (``--nms-iou``).
        top_k_candidates: default boxes per class and image entering NMS, >= 1.
        max_detections: detections per image, >= 1 (``--top-k``).
        rule: ``caffe`` or ``torchvision``: whether boxes are clipped after NMS or before (:data:`RULES`).

    Raises:
        UserError: a value out of its range.
    """

    score_threshold: float = 0.01
    nms_iou: float = 0.45
    top_k_candidates: int = 400
    max_detections: int = 200
    rule: str = "caffe"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UserError(f"post-processing rule {self.rule!r}: expected one of {', '.join(RULES)}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise UserError(f"--min-score {self.score_threshold}: must be in [0, 1)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise UserError(f"--nms-iou {self.nms_iou}: must be in (0, 1]")
        if self.max_detections < 1:
            raise UserError(f"--top-k {self.max_detections}: must be at least 1")
        if self.top_k_candidates < 1:
            raise UserError(f"top_k_candidates {self.top_k_candidates}: must be at least 1")

    def to_dict(self) -> dict:
        """The keyword arguments of :func:`postprocess` (also what checkpoints and export metadata store)."""
        return asdict(self)


def settings_for_model(
    stored: Mapping[str, Any] | PostprocessSettings | None, given: PostprocessSettings | Mapping[str, Any] | None
) -> PostprocessSettings:
    """The post-processing a model runs with: its ``stored`` settings (a checkpoint's
    ``postprocess``, an export's metadata) and what the user ``given``.

    ``given`` ``None``: the stored settings; a mapping: the stored settings with the keys whose
    value is not ``None`` replaced (``ssd detect --min-score``); a :class:`PostprocessSettings`:
    those, except the rule, which belongs to the model (an imported torchvision model clips first).
    """
    base = stored if isinstance(stored, PostprocessSettings) else PostprocessSettings(**dict(stored or {}))
    if given is None:
        return base
    if isinstance(given, PostprocessSettings):
        return replace(given, rule=base.rule)
    return replace(base, **{key: value for key, value in given.items() if value is not None})


class Detections(NamedTuple):
    """Detections of one image.

    Attributes:
        boxes_xyxy: Tensor[K, 4], xyxy, in original-image pixels (or normalised when no image
            size was given), inside the image.
        scores: Tensor[K], class probability, descending.
        labels: Tensor[K] int64, 1-based class index.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor


def postprocess_flat(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    score_threshold: float | Tensor = 0.01,
    nms_iou: float = 0.45,
    top_k_candidates: int = 400,
    max_detections: int = 200,
    *,
    variances: tuple[float, float],
    rule: str = "caffe",
    ignored_labels: Sequence[int] = (),
) -> FlatDetections:
    """Final detections of a batch, normalised coordinates.

    Args:
        cls_logits: Tensor[B, P, C + 1], raw class scores, background at index 0.
        box_deltas: Tensor[B, P, 4], predicted deltas.
        priors_cxcywh: Tensor[P, 4], default boxes, cxcywh normalised.
        score_threshold: keep class probabilities strictly above this; a 0-dim float32 tensor
            compares the same and lets an exported graph read it from a buffer (export/graphs.py).
        nms_iou: suppress a box whose IoU with a better box of the same class and image is above this.
        top_k_candidates: at most this many default boxes per class and image enter NMS.
        max_detections: at most this many detections per image leave.
        variances: ``(centre, size)`` box-coding variances of the network's prior spec
            (``model.prior_spec.variances``; the checkpoint stores them).
        rule: ``caffe`` (NMS on the decoded boxes, the kept ones clipped) or ``torchvision``
            (every decoded box clipped first); :data:`RULES`.
        ignored_labels: labels that are no class (torchvision's "N/A" COCO ids): they take part
            in everything above, as in their source, and are dropped from the result at the end.

    Returns:
        :class:`FlatDetections`.
    """
    if rule not in RULES:
        raise ValueError(f"post-processing rule {rule!r}: expected one of {', '.join(RULES)}")
    settings = (score_threshold, nms_iou, top_k_candidates, max_detections, variances, rule == "torchvision")
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        flat = paths.flat_traceable(cls_logits, box_deltas, priors_cxcywh, *settings)
    else:
        flat = paths.flat_eager(cls_logits, box_deltas, priors_cxcywh, *settings)
    return drop_labels(flat, ignored_labels)


def drop_labels(flat: FlatDetections, labels: Sequence[int]) -> FlatDetections:
    """``flat`` without the detections whose label is in ``labels`` (order kept; traceable: a
    comparison with a constant, which ONNX has)."""
    if not labels:
        return flat
    ignored = torch.tensor(list(labels), dtype=flat.labels.dtype, device=flat.labels.device)  # (L,)
    keep = ~(flat.labels.unsqueeze(1) == ignored.unsqueeze(0)).any(dim=1)  # (K,)
    return FlatDetections(*(t[keep] for t in flat))


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    image_sizes: Tensor | list[tuple[int, int]] | None = None,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k_candidates: int = 400,
    max_detections: int = 200,
    *,
    variances: tuple[float, float],
    rule: str = "caffe",
    ignored_labels: Sequence[int] = (),
) -> list[Detections]:
    """Final detections per image, in original-image pixels.

    Args:
        cls_logits, box_deltas, priors_cxcywh, ...: as :func:`postprocess_flat`.
        image_sizes: ``(width, height)`` of each original image, Tensor[B, 2] or a list; the network
            saw it resized to a square, so x scales by width and y by height. ``None`` keeps
            normalised coordinates.

    Returns:
        One :class:`Detections` per image (possibly empty), scores descending.
    """
    flat = postprocess_flat(
        cls_logits,
        box_deltas,
        priors_cxcywh,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        top_k_candidates=top_k_candidates,
        max_detections=max_detections,
        variances=variances,
        rule=rule,
        ignored_labels=ignored_labels,
    )
    return split_by_image(flat, cls_logits.shape[0], image_sizes)


def split_by_image(
    flat: FlatDetections, batch: int, image_sizes: Tensor | list[tuple[int, int]] | None = None
) -> list[Detections]:
    """Batch detections (as :func:`postprocess_flat` or an exported graph returns them) -> one
    :class:`Detections` per image, in original-image pixels.

    Args:
        flat: detections grouped by image, normalised xyxy.
        batch: number of images B (an image may have no detections).
        image_sizes: ``(width, height)`` of each original image, Tensor[B, 2] or a list; the network
            saw it resized to a square, so x scales by width and y by height. ``None`` keeps
            normalised coordinates.
    """
    boxes = flat.boxes_xyxy_norm
    if image_sizes is not None:
        sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(batch, 2)
        scale = sizes.repeat(1, 2)  # (B, 4): (W, H, W, H)
        boxes = boxes * scale[flat.batch_index]
    counts = torch.bincount(flat.batch_index, minlength=batch).tolist()
    return [
        Detections(boxes_xyxy=b, scores=s, labels=l)
        for b, s, l in zip(boxes.split(counts), flat.scores.split(counts), flat.labels.split(counts))
    ]
