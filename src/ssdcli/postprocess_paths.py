"""The two exact implementations behind :func:`ssdcli.postprocess.postprocess_flat` (its module
docstring says how and when each runs): :func:`flat_eager`, NMS on score-ordered stretches of
each image's candidates on a thread pool, and :func:`flat_traceable`, one ``batched_nms`` with
only operators ONNX has."""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from ssdcli.codec import decode_xyxy

COORDINATE_BOUND = 4.0
"""Unclipped decoded coordinates (``caffe`` rule) are clamped to [-bound, bound] before NMS."""

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


# The first stretch of each image holds FIRST_PREFIX times ``max_detections`` candidates. Later
# stretches are sized from the survival rate so far, GROWTH_SLACK times what it predicts. 2.5
# measured best of 1.25 / 1.5 / 2 / 2.5 / 3 on the bench's score-0.01 inputs and no worse on an
# undertrained model's (README "CPU speed notes"); a short first stretch costs a second round, a
# long one IoU work on candidates the answer does not need.
FIRST_PREFIX = 2.5
GROWTH_SLACK = 1.5


def flat_eager(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    score_threshold: float | Tensor,
    nms_iou: float,
    top_k_candidates: int,
    max_detections: int,
    variances: tuple[float, float],
    clip_first: bool,
) -> FlatDetections:
    """:func:`ssdcli.postprocess.postprocess_flat` outside a trace: NMS on score-ordered stretches (:mod:`ssdcli.postprocess`).

    Every image's candidates wait in one row of a score grid; a round takes the next stretch of
    each image that still needs survivors (one ``topk`` for all of them), decodes it, and runs
    NMS over the image's survivors so far plus the stretch. Survivors can only be suppressed by
    better boxes, which they outscore, so this continues the greedy pass exactly (a suppressed box
    suppresses nothing). The per-image NMS calls of a round run on a thread pool: torchvision's
    ``nms`` releases the GIL.
    """
    batch, num_priors = cls_logits.shape[:2]
    device = cls_logits.device
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, P, C), background dropped
    candidate = scores > score_threshold  # (B, P, C)
    _keep_top_k_per_class(candidate, scores, min(top_k_candidates, num_priors))
    image_idx, prior_idx, class_idx = candidate.nonzero().unbind(1)  # (M,) each, by image, prior, class
    cand_scores = scores[image_idx, prior_idx, class_idx]  # (M,)

    starts, num_candidates, grid = _score_grid(image_idx, cand_scores, batch)

    survivors = [image_idx.new_empty(0)] * batch  # candidate indices, score-descending
    # NMS input boxes: float64, moved to one square per class (_separated_boxes).
    survivor_boxes = [cand_scores.new_empty((0, 4), dtype=torch.float64)] * batch
    examined = [0] * batch
    take = {i: min(n, math.ceil(FIRST_PREFIX * max_detections)) for i, n in enumerate(num_candidates) if n > 0}
    while take:
        images = list(take)
        lengths = list(take.values())
        rows = torch.tensor(images, device=device)
        slots = grid[rows].topk(max(lengths), dim=1).indices  # (n, most taken), score-descending
        if min(lengths) < slots.shape[1]:
            taken = torch.arange(slots.shape[1], device=device) < torch.tensor(lengths, device=device).unsqueeze(1)
            row_of_taken, slots = rows.unsqueeze(1).expand_as(slots)[taken], slots[taken]  # (T,) each
        else:
            row_of_taken, slots = rows.repeat_interleave(slots.shape[1]), slots.reshape(-1)  # (T,) each
        grid[row_of_taken, slots] = -math.inf
        stretch = starts[row_of_taken] + slots  # (T,) candidate indices
        boxes = _separated_boxes(
            _decode_candidates(box_deltas, priors_cxcywh, image_idx[stretch], prior_idx[stretch], variances, clip_first),
            class_idx[stretch],
        )  # (T, 4)
        jobs = []
        for image, new, new_boxes in zip(images, stretch.split(lengths), boxes.split(lengths)):
            if examined[image] > 0:  # after the first round: survivors first, then the stretch
                new = torch.cat((survivors[image], new))
                new_boxes = torch.cat((survivor_boxes[image], new_boxes))
            survivors[image], survivor_boxes[image] = new, new_boxes
            jobs.append((new_boxes, cand_scores[new].double()))
        take = {}
        for image, length, kept in zip(images, lengths, _nms_each(jobs, nms_iou)):
            survivors[image] = survivors[image][kept]
            survivor_boxes[image] = survivor_boxes[image][kept]
            examined[image] += length
            more = _next_stretch(survivors[image].shape[0], examined[image], num_candidates[image], max_detections)
            if more:
                take[image] = more

    kept = torch.cat([s[:max_detections] for s in survivors]) if batch else image_idx  # (K,), by image
    separated = torch.cat([b[:max_detections] for b in survivor_boxes]) if batch else scores.new_empty((0, 4))
    return FlatDetections(
        batch_index=image_idx[kept],
        # exact: see _separated_boxes; clipping a clipped box changes nothing
        boxes_xyxy_norm=(separated - _class_offsets(class_idx[kept])).float().clamp(0.0, 1.0),
        scores=cand_scores[kept],
        labels=class_idx[kept] + 1,
    )


def _score_grid(image_idx: Tensor, cand_scores: Tensor, batch: int) -> tuple[Tensor, list[int], Tensor]:
    """One row per image holding its candidates' scores in candidate order, -inf after them (and
    later where a candidate was taken): ``(starts Tensor[B], counts, grid Tensor[B, most])``, where
    ``starts`` is each image's first candidate index and ``counts`` its number of candidates."""
    counts = torch.bincount(image_idx, minlength=batch)  # (B,)
    starts = torch.cumsum(counts, 0) - counts  # (B,)
    num_candidates = counts.tolist()
    grid = cand_scores.new_full((batch, max(num_candidates, default=0)), -math.inf)
    column = torch.arange(image_idx.shape[0], device=image_idx.device) - starts[image_idx]  # (M,)
    grid[image_idx, column] = cand_scores
    return starts, num_candidates, grid


def _next_stretch(found: int, examined: int, candidates: int, max_detections: int) -> int:
    """How many more candidates an image takes in the next round (0: it is done): enough, at its
    survival rate so far, for the detections it still lacks, times :data:`GROWTH_SLACK`, and at
    least half what it has examined (so the rounds stay few)."""
    left = candidates - examined
    if found >= max_detections or left <= 0:
        return 0
    rate = max(found, 1) / examined
    wanted = math.ceil(GROWTH_SLACK * (max_detections - found) / rate)
    return min(left, max(wanted, examined // 2, 1))


def _keep_top_k_per_class(candidate: Tensor, scores: Tensor, top_k: int) -> None:
    """Unmark, in place, the candidates beyond the ``top_k`` best default boxes of their (image,
    class): Caffe's per-class ``top_k``. The cut is ``topk`` on the same score rows as
    :func:`flat_traceable` takes them from, so both paths keep the same candidates.

    Args:
        candidate: Tensor[B, P, C] bool, above the score threshold; changed in place.
        scores: Tensor[B, P, C], class probabilities.
    """
    per_group = candidate.sum(dim=1)  # (B, C)
    if per_group.numel() == 0 or int(per_group.max()) <= top_k:
        return
    image, cls = (per_group > top_k).nonzero().unbind(1)  # (R,) each: the (image, class) over the cap
    best = scores[image, :, cls].topk(top_k, dim=1, sorted=False).indices  # (R, top_k)
    allowed = torch.zeros((image.shape[0], scores.shape[1]), dtype=torch.bool, device=scores.device)
    candidate[image, :, cls] &= allowed.scatter_(1, best, True)  # (R, P)


def _decode_candidates(
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    image_idx: Tensor,
    prior_idx: Tensor,
    variances: tuple[float, float],
    clip_first: bool,
) -> Tensor:
    """Tensor[n, 4]: the boxes of candidates (image, prior), xyxy normalised, as NMS sees them:
    clipped to the image (``torchvision`` rule) or within +-:data:`COORDINATE_BOUND` (``caffe``)."""
    rows = image_idx * box_deltas.shape[1] + prior_idx  # (n,): one gather of rows, cheaper than a 2-d index
    deltas = box_deltas.reshape(-1, 4).index_select(0, rows).float()  # (n, 4)
    return _nms_input(decode_xyxy(deltas, priors_cxcywh.index_select(0, prior_idx).float(), variances), clip_first)


def _nms_input(boxes_xyxy: Tensor, clip_first: bool) -> Tensor:
    if clip_first:
        return boxes_xyxy.clamp(0.0, 1.0)
    return boxes_xyxy.nan_to_num(0.0).clamp(-COORDINATE_BOUND, COORDINATE_BOUND)


CLASS_SPAN = 2.0 * COORDINATE_BOUND + 2.0
"""The shift between two classes' boxes (:func:`_separated_boxes`): wider than any NMS input box."""


def _class_offsets(classes: Tensor) -> Tensor:
    """Tensor[n, 1] float64: :data:`CLASS_SPAN` * class, the shift that gives each class its own square."""
    return CLASS_SPAN * classes.double().unsqueeze(1)


def _separated_boxes(boxes_xyxy: Tensor, classes: Tensor) -> Tensor:
    """Boxes within +-:data:`COORDINATE_BOUND` moved by :data:`CLASS_SPAN` * class in float64, so
    that one ``nms`` call keeps classes apart.

    Boxes of two classes never meet. The shift is exact in float64 (a float32 coordinate plus a
    multiple of 10 below 2^14 fits in 53 bits unless the coordinate is below about 2^-15, where a
    bit of float64 rounding is far below a pixel), so IoUs within a class are those of the boxes
    themselves and subtracting the shift gives back the float32 box. (One call beats
    one per class here, measured: most pairs it compares across classes have IoU 0 and cost little.)

    Args:
        boxes_xyxy: Tensor[n, 4], normalised; classes: Tensor[n] int64.

    Returns:
        Tensor[n, 4] float64.
    """
    return boxes_xyxy.double() + _class_offsets(classes)


def _nms_each(jobs: list[tuple[Tensor, Tensor]], nms_iou: float) -> list[Tensor]:
    """``torchvision.ops.nms`` on each ``(boxes_xyxy Tensor[n, 4], scores Tensor[n])``.

    On the CPU ``torch.get_num_threads()`` threads, this one included, take the jobs from one
    queue, the next job to whichever thread is free (an image's cost varies with its overlaps):
    ``nms`` releases the GIL, so two threads run two images at once (one submission per helper
    thread, not per job: a submission costs about as much as a small ``nms``).

    Returns:
        For each job, Tensor[s] int64: positions of the survivors, score-descending (ties in
        input order).
    """
    results: list[Tensor | None] = [None] * len(jobs)
    queue = itertools.count()  # next() is atomic under the GIL: each position is taken once

    def run() -> None:
        for position in queue:
            if position >= len(jobs):
                return
            boxes, scores = jobs[position]
            results[position] = nms(boxes, scores, nms_iou)

    helpers = nms_helpers() if len(jobs) > 1 and jobs[0][0].device.type == "cpu" else None
    if helpers is None:
        run()
        return results
    hands = min(len(jobs), torch.get_num_threads())  # the helpers and this thread
    futures = [helpers.submit(run) for _ in range(1, hands)]
    run()
    for future in futures:
        future.result()
    return results


_HELPERS: tuple[tuple[int, int], ThreadPoolExecutor] | None = None  # ((pid, threads), pool)


def nms_helpers() -> ThreadPoolExecutor | None:
    """``torch.get_num_threads() - 1`` helper threads per process (``None`` with one thread).
    A forked child (a DataLoader worker) gets its own: the parent's threads do not exist there."""
    global _HELPERS
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    key = (os.getpid(), threads)
    if _HELPERS is None or _HELPERS[0] != key:
        if _HELPERS is not None and _HELPERS[0][0] == key[0]:
            _HELPERS[1].shutdown(wait=False)  # same process, another thread count
        _HELPERS = (key, ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="ssdcli-nms"))
    return _HELPERS[1]


def flat_traceable(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors_cxcywh: Tensor,
    score_threshold: float | Tensor,
    nms_iou: float,
    top_k_candidates: int,
    max_detections: int,
    variances: tuple[float, float],
    clip_first: bool,
) -> FlatDetections:
    """:func:`ssdcli.postprocess.postprocess_flat` inside ``torch.jit.trace`` / ONNX export: every candidate through
    one ``batched_nms``, the per-image cut by sorting and counting (:mod:`ssdcli.postprocess`)."""
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
    boxes_xyxy_norm = decode_xyxy(deltas, priors_cxcywh[prior_idx].float(), variances)
    boxes_xyxy_norm = _nms_input(boxes_xyxy_norm, clip_first)  # (M, 4): clipped, or bounded (caffe)

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
        boxes_xyxy_norm=boxes_xyxy_norm[kept].clamp(0.0, 1.0),  # the kept boxes inside the image
        scores=cand_scores[kept],
        labels=class_idx[kept] + 1,
    )
