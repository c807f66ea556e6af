"""From network outputs to detections: the one post-processing used by eval, detect and export.

softmax -> per class, the ``top_k_candidates`` default boxes above ``score_threshold`` -> decode only
those -> clip to the image -> NMS per class AND image in one ``torchvision.ops.batched_nms`` call ->
the best ``max_detections`` per image -> original-image pixels.

This is Caffe's ``DetectionOutput`` layer (``nms_threshold`` 0.45, ``top_k`` 400, ``keep_top_k``
200, ``confidence_threshold`` 0.01 for evaluation), batched over images instead of looping.

:func:`postprocess_flat` is traceable, so ``ssd export --postprocess`` puts this very function
into the ONNX / TorchScript graph: no Python branch on tensor values and only operators ONNX has
(``batched_nms`` becomes ``NonMaxSuppression``; no ``bincount``, no ``sort(stable=True)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.codec import decode
from ssdcli.priors import VARIANCES


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


class FlatDetections(NamedTuple):
    """Detections of a whole batch in one set of tensors (the form export needs).

    Attributes:
        batch_index: Tensor[K] int64, image of each detection; grouped by image, ascending.
        boxes_xyxy_norm: Tensor[K, 4], xyxy normalised to [0, 1].
        scores: Tensor[K], descending within each image.
        labels: Tensor[K] int64, 1-based class index.
    """

    batch_index: Tensor
    boxes_xyxy_norm: Tensor
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
    variances: tuple[float, float] = VARIANCES,
) -> FlatDetections:
    """Final detections of a batch, normalised coordinates.

    Args:
        cls_logits: Tensor[B, P, C + 1], raw class scores, background at index 0.
        box_deltas: Tensor[B, P, 4], predicted deltas.
        priors_cxcywh: Tensor[P, 4], default boxes, cxcywh normalised.
        score_threshold: keep class probabilities strictly above this; a 0-dim float32 tensor
            compares the same and lets an exported graph read it from a buffer (export.py).
        nms_iou: suppress a box whose IoU with a better box of the same class and image is above this.
        top_k_candidates: at most this many default boxes per class and image enter NMS.
        max_detections: at most this many detections per image leave.

    Returns:
        :class:`FlatDetections`.
    """
    batch, num_priors, num_logits = cls_logits.shape
    num_classes = num_logits - 1
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, P, C), background dropped
    scores = scores.transpose(1, 2)  # (B, C, P)

    # Per-class candidates: the top-k default boxes of each (image, class). Only these are decoded.
    k = min(top_k_candidates, num_priors)
    cand_scores, cand_priors = scores.topk(k, dim=2)  # (B, C, k) each
    keep = cand_scores > score_threshold  # (B, C, k)
    image_idx, class_idx, slot = keep.nonzero().unbind(1)  # (M,) each
    prior_idx = cand_priors[image_idx, class_idx, slot]  # (M,)
    cand_scores = cand_scores[image_idx, class_idx, slot]  # (M,)

    deltas = box_deltas[image_idx, prior_idx].float()  # (M, 4)
    boxes_xyxy_norm = cxcywh_to_xyxy(decode(deltas, priors_cxcywh[prior_idx].float(), variances))
    boxes_xyxy_norm = boxes_xyxy_norm.clamp(0.0, 1.0)  # (M, 4), inside the image

    # One NMS call over every image and class: a box only suppresses boxes of its own group.
    group = image_idx * num_classes + class_idx
    kept = batched_nms(boxes_xyxy_norm, cand_scores, group, nms_iou)  # (K,), score-descending

    # Best max_detections per image: group by image, keeping score order within each image.
    # Sorting the unique key (image, position in score order) is a stable sort by image that
    # ONNX can express (its Sort has no "stable" flag; torch.onnx refuses sort(stable=True)),
    # and counting by comparison with arange(B) replaces bincount, which ONNX lacks.
    position = torch.arange(kept.shape[0], device=kept.device)  # (K,)
    kept = kept[torch.argsort(image_idx[kept] * kept.shape[0] + position)]
    kept_images = image_idx[kept]
    images = torch.arange(batch, device=kept.device)  # (B,)
    counts = (kept_images.unsqueeze(0) == images.unsqueeze(1)).sum(dim=1)  # (B,)
    starts = torch.cumsum(counts, 0) - counts  # (B,)
    rank_in_image = position - starts[kept_images]  # (K,)
    kept = kept[rank_in_image < max_detections]

    return FlatDetections(
        batch_index=image_idx[kept],
        boxes_xyxy_norm=boxes_xyxy_norm[kept],
        scores=cand_scores[kept],
        labels=class_idx[kept] + 1,
    )


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    image_sizes: Tensor | list[tuple[int, int]] | None = None,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k_candidates: int = 400,
    max_detections: int = 200,
    variances: tuple[float, float] = VARIANCES,
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
