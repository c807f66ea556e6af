"""From network outputs to detections: the one post-processing used by eval, detect and export.

softmax -> per class, the ``top_k_candidates`` default boxes above ``score_threshold`` -> decode only
those -> clip to the image -> NMS per class AND image in one ``torchvision.ops.batched_nms`` call ->
the best ``max_detections`` per image -> original-image pixels.

This is Caffe's ``DetectionOutput`` layer (``nms_threshold`` 0.45, ``top_k`` 400, ``keep_top_k``
200, ``confidence_threshold`` 0.01 for evaluation), batched over images instead of looping.

:func:`postprocess_flat` has two exact implementations of the same result, chosen the way
torchvision's ``batched_nms`` chooses its own:

- eager (eval, detect, training validation): :func:`_postprocess_flat_eager`. It never runs NMS on
  more boxes than the answer needs. A box's fate under greedy NMS depends only on the
  better-scored boxes of its own image and class, so each image's candidates are taken in score
  order, a prefix at a time: once a prefix holds ``max_detections`` survivors, nothing after it
  can enter the answer. At score 0.01 an image has thousands of candidates (all classes) but its
  200 survivors sit in the first few hundred, so this does a fraction of the IoU work of NMS over
  every candidate, and one ``nms`` call per image instead of one per (image, class).
- traced / scripted (``ssd export --postprocess``): :func:`_postprocess_flat_traceable`, with no
  Python branch on tensor values and only operators ONNX has (``batched_nms`` becomes
  ``NonMaxSuppression``; no ``bincount``, no ``sort(stable=True)``).

tests/test_postprocess.py checks the two against each other and against torchvision's ``nms``
run one image and one class at a time. Boxes with exactly equal scores (one default box, two
classes at the same probability) may be listed in a different order by the two; which of two
equal-score overlapping boxes of a class survives NMS depends on that order, in Caffe as here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

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
    settings = (score_threshold, nms_iou, top_k_candidates, max_detections, variances)
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return _postprocess_flat_traceable(cls_logits, box_deltas, priors_cxcywh, *settings)
    return _postprocess_flat_eager(cls_logits, box_deltas, priors_cxcywh, *settings)


# The first prefix holds FIRST_PREFIX times ``max_detections`` candidates. Later stretches are
# sized from the survival rate so far, GROWTH_SLACK times what it predicts (_grow_survivors).
FIRST_PREFIX = 2
GROWTH_SLACK = 1.5


def _postprocess_flat_eager(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    score_threshold: float | Tensor,
    nms_iou: float,
    top_k_candidates: int,
    max_detections: int,
    variances: tuple[float, float],
) -> FlatDetections:
    """:func:`postprocess_flat` outside a trace: NMS on score-ordered prefixes (module docstring)."""
    batch, num_priors, _ = cls_logits.shape
    device = cls_logits.device
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, P, C), background dropped
    image_idx, prior_idx, class_idx = (scores > score_threshold).nonzero().unbind(1)  # (M,), by image
    cand_scores = scores[image_idx, prior_idx, class_idx]  # (M,)

    def decode_candidates(indices: Tensor) -> Tensor:
        """Tensor[n, 4]: boxes of candidates ``indices``, xyxy normalised, clipped to the image."""
        priors = priors_cxcywh[prior_idx[indices]].float()
        deltas = box_deltas[image_idx[indices], prior_idx[indices]].float()
        return cxcywh_to_xyxy(decode(deltas, priors, variances)).clamp(0.0, 1.0)

    # Each image's best candidates first: scores laid out in a [B, most] grid (padding -1), the
    # first prefix of every image from one topk. It stays within Caffe's per-class top_k: a
    # candidate among the first k of its image is among the first k of its class.
    counts = torch.bincount(image_idx, minlength=batch)  # (B,)
    starts = torch.cumsum(counts, 0) - counts  # (B,)
    most = int(counts.max()) if image_idx.shape[0] > 0 else 0
    grid = cand_scores.new_full((batch, most), -1.0)
    grid[image_idx, torch.arange(image_idx.shape[0], device=device) - starts[image_idx]] = cand_scores
    top_k = min(top_k_candidates, num_priors)
    first = min(most, FIRST_PREFIX * max_detections, top_k)
    slots = grid.topk(first, dim=1).indices  # (B, first), score-descending
    lengths = counts.clamp(max=first)  # (B,)
    in_first = torch.arange(first, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, first)
    prefix = (slots + starts.unsqueeze(1))[in_first]  # by image
    prefix_boxes = decode_candidates(prefix)  # (sum of lengths, 4)

    kept, kept_boxes = [], []
    # A loop over the images of the batch, not over boxes: NMS cost grows with the square of the
    # boxes in one call, so images are never mixed in one call.
    for image, (stretch, boxes) in enumerate(zip(prefix.split(lengths.tolist()), prefix_boxes.split(lengths.tolist()))):
        keep = _nms_by_class(boxes, cand_scores[stretch], class_idx[stretch], nms_iou)  # (n,), by score
        survivors, survivor_boxes = stretch[keep], boxes[keep]
        count, start = int(counts[image]), int(starts[image])
        if survivors.shape[0] < max_detections and count > first:
            # The rest of the image's candidates in score order (ties in candidate order), within
            # the per-class top_k and without the prefix.
            rest = start + grid[image, :count].argsort(descending=True, stable=True)  # (count,)
            rest = _top_k_per_class(rest, class_idx, top_k)
            in_prefix = torch.zeros(count, dtype=torch.bool, device=device)
            in_prefix[stretch - start] = True
            rest = rest[~in_prefix[rest - start]]
            survivors, survivor_boxes = _grow_survivors(
                rest, first, survivors, survivor_boxes, cand_scores, class_idx, decode_candidates,
                nms_iou, max_detections,
            )
        kept.append(survivors[:max_detections])
        kept_boxes.append(survivor_boxes[:max_detections])
    kept_idx = torch.cat(kept) if kept else image_idx
    return FlatDetections(
        batch_index=image_idx[kept_idx],
        boxes_xyxy_norm=torch.cat(kept_boxes) if kept else prefix_boxes,
        scores=cand_scores[kept_idx],
        labels=class_idx[kept_idx] + 1,
    )


def _nms_by_class(boxes_xyxy: Tensor, scores: Tensor, classes: Tensor, nms_iou: float) -> Tensor:
    """Greedy NMS within each class of one image, in one ``torchvision.ops.nms`` call.

    Classes are kept apart by moving each to its own square: boxes in [0, 1] shifted by
    2 * class never meet another class. The shift is done in float64, where it is exact (a
    float32 coordinate plus a small integer fits in 53 bits), so IoUs within a class are those of
    the boxes themselves. (One call beats one per class here, measured: most pairs it compares
    across classes have IoU 0 and cost little.)

    Args:
        boxes_xyxy: Tensor[n, 4], normalised; scores: Tensor[n]; classes: Tensor[n] int64.

    Returns:
        Tensor[s] int64, positions of the survivors, score-descending (ties in input order).
    """
    separated = boxes_xyxy.double() + 2.0 * classes.double().unsqueeze(1)  # (n, 4)
    return nms(separated, scores.double(), nms_iou)


def _top_k_per_class(order: Tensor, class_idx: Tensor, top_k: int) -> Tensor:
    """``order`` without the candidates beyond the ``top_k`` best of their class (Caffe's per-class
    ``top_k``); the others keep their order.

    Args:
        order: Tensor[n] int64, one image's candidate indices, score-descending.
        class_idx: Tensor[M], every candidate's 0-based class.
    """
    classes = class_idx[order]  # (n,)
    class_counts = torch.bincount(classes)
    if int(class_counts.max()) <= top_k:
        return order
    by_class = classes.argsort(stable=True)  # (n,), score order within each class
    class_starts = torch.cumsum(class_counts, 0) - class_counts
    rank = torch.empty_like(order)
    rank[by_class] = torch.arange(order.shape[0], device=order.device) - class_starts[classes[by_class]]
    return order[rank < top_k]


def _grow_survivors(
    rest: Tensor,
    examined: int,
    survivors: Tensor,
    survivor_boxes: Tensor,
    scores: Tensor,
    class_idx: Tensor,
    decode_candidates: Callable[[Tensor], Tensor],
    nms_iou: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    """One image's survivors of per-class greedy NMS, continued a stretch of ``rest`` at a time
    until there are ``max_detections`` of them or no candidate is left.

    A box can only be suppressed by a better box of its class that survives (a suppressed box
    suppresses nothing), so NMS over the survivors so far plus the next stretch continues the
    greedy pass exactly: the survivors outscore the stretch, do not suppress each other, and come
    first among equal scores as they did before. Each stretch is sized from the survival rate so
    far, GROWTH_SLACK times what it predicts, so that one more usually suffices.

    Args:
        rest: Tensor[n] int64, the image's remaining candidate indices, score-descending.
        examined: how many candidates the survivors were found among.
        survivors, survivor_boxes: Tensor[s] and Tensor[s, 4] found so far, score-descending.
        scores, class_idx: Tensor[M], every candidate's score and 0-based class.
        decode_candidates: candidate indices -> Tensor[n, 4], xyxy normalised.

    Returns:
        ``(indices Tensor[K], boxes_xyxy_norm Tensor[K, 4])``, score-descending.
    """
    done = 0
    while survivors.shape[0] < max_detections and done < rest.shape[0]:
        rate = max(survivors.shape[0], 1) / max(examined + done, 1)
        wanted = math.ceil(GROWTH_SLACK * (max_detections - survivors.shape[0]) / rate)
        length = min(rest.shape[0], done + max(wanted, (examined + done) // 2, 1))
        stretch = torch.cat((survivors, rest[done:length]))  # still score-descending
        boxes = torch.cat((survivor_boxes, decode_candidates(rest[done:length])))  # (n, 4)
        keep = _nms_by_class(boxes, scores[stretch], class_idx[stretch], nms_iou)
        survivors, survivor_boxes, done = stretch[keep], boxes[keep], length
    return survivors, survivor_boxes


def _postprocess_flat_traceable(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    score_threshold: float | Tensor,
    nms_iou: float,
    top_k_candidates: int,
    max_detections: int,
    variances: tuple[float, float],
) -> FlatDetections:
    """:func:`postprocess_flat` inside ``torch.jit.trace`` / ONNX export: every candidate through
    one ``batched_nms``, the per-image cut by sorting and counting (module docstring)."""
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
