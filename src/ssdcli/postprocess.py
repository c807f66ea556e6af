"""From network outputs to detections: the one post-processing used by eval, detect and export.

softmax -> per class, the ``top_k_candidates`` default boxes above ``score_threshold`` -> decode only
those -> NMS per class AND image -> the best ``max_detections`` per image -> clip to the image ->
original-image pixels.

This is Caffe's ``DetectionOutput`` layer (``nms_threshold`` 0.45, ``top_k`` 400, ``keep_top_k``
200, ``confidence_threshold`` 0.01 for evaluation), batched over images instead of looping: the
default rule, ``caffe``, runs NMS on the decoded boxes as they are and clips only the kept ones.
The ``torchvision`` rule clips every decoded box before NMS, as torchvision's SSD does (imported
torchvision models and version-1 checkpoints use it); :data:`RULES`, ``PostprocessSettings.rule``.
Under ``caffe``, decoded coordinates are bounded to +-:data:`COORDINATE_BOUND` image sides before
NMS (so one NMS call can keep classes apart exactly): a box reaching more than four image sides
beyond the image is rare enough that its IoU with another such box need not be exact.

:func:`postprocess_flat` has two exact implementations of the same result, chosen the way
torchvision's ``batched_nms`` chooses its own:

- eager (eval, detect, training validation): :func:`_postprocess_flat_eager`. It never runs NMS on
  more boxes than the answer needs. A box's fate under greedy NMS depends only on the
  better-scored boxes of its own image and class, so each image's candidates are taken in score
  order, a prefix at a time: once a prefix holds ``max_detections`` survivors, nothing after it
  can enter the answer. At score 0.01 an image has thousands of candidates (all classes) but its
  200 survivors sit in the first few hundred, so this does a fraction of the IoU work of NMS over
  every candidate, and one ``nms`` call per image instead of one per (image, class). The images
  go through together, a round at a time (the next stretch of every image that still needs
  survivors), and a round's ``nms`` calls share the CPU threads: ``nms`` releases the GIL.
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
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.codec import decode
from ssdcli.errors import UserError

RULES = ("caffe", "torchvision")
COORDINATE_BOUND = 4.0
"""Unclipped decoded coordinates (``caffe`` rule) are clamped to [-bound, bound] before NMS."""
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
        flat = _postprocess_flat_traceable(cls_logits, box_deltas, priors_cxcywh, *settings)
    else:
        flat = _postprocess_flat_eager(cls_logits, box_deltas, priors_cxcywh, *settings)
    return drop_labels(flat, ignored_labels)


def drop_labels(flat: FlatDetections, labels: Sequence[int]) -> FlatDetections:
    """``flat`` without the detections whose label is in ``labels`` (order kept; traceable: a
    comparison with a constant, which ONNX has)."""
    if not labels:
        return flat
    ignored = torch.tensor(list(labels), dtype=flat.labels.dtype, device=flat.labels.device)  # (L,)
    keep = ~(flat.labels.unsqueeze(1) == ignored.unsqueeze(0)).any(dim=1)  # (K,)
    return FlatDetections(*(t[keep] for t in flat))


# The first stretch of each image holds FIRST_PREFIX times ``max_detections`` candidates. Later
# stretches are sized from the survival rate so far, GROWTH_SLACK times what it predicts. 2.5
# measured best of 1.25 / 1.5 / 2 / 2.5 / 3 on the bench's score-0.01 inputs and no worse on an
# undertrained model's (README "CPU speed notes"); a short first stretch costs a second round, a
# long one IoU work on candidates the answer does not need.
FIRST_PREFIX = 2.5
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
    clip_first: bool,
) -> FlatDetections:
    """:func:`postprocess_flat` outside a trace: NMS on score-ordered stretches (module docstring).

    Every image's candidates wait in one row of a score grid; a round takes the next stretch of
    each image that still needs survivors (one ``topk`` for all of them), decodes it, and runs
    NMS over the image's survivors so far plus the stretch. Survivors can only be suppressed by
    better boxes, which they outscore, so this continues the greedy pass exactly (a suppressed box
    suppresses nothing). The per-image NMS calls of a round run on a thread pool: torchvision's
    ``nms`` releases the GIL.
    """
    batch, num_priors, num_logits = cls_logits.shape
    num_classes = num_logits - 1
    device = cls_logits.device
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, P, C), background dropped
    candidate = scores > score_threshold  # (B, P, C)
    _keep_top_k_per_class(candidate, scores, min(top_k_candidates, num_priors))
    flat = candidate.reshape(-1).nonzero().squeeze(1)  # (M,), by image, prior, class
    image_idx = flat // (num_priors * num_classes)
    prior_idx = flat // num_classes % num_priors
    class_idx = flat % num_classes
    cand_scores = scores[image_idx, prior_idx, class_idx]  # (M,)

    # One row per image, its candidates' scores in candidate order; -inf pads and marks the taken.
    counts = torch.bincount(image_idx, minlength=batch)  # (B,)
    starts = torch.cumsum(counts, 0) - counts  # (B,)
    num_candidates = counts.tolist()
    grid = cand_scores.new_full((batch, max(num_candidates, default=0)), -math.inf)
    column = torch.arange(image_idx.shape[0], device=device) - starts[image_idx]  # (M,)
    grid[image_idx, column] = cand_scores

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
            found, left = survivors[image].shape[0], num_candidates[image] - examined[image]
            if found < max_detections and left > 0:
                rate = max(found, 1) / examined[image]
                wanted = math.ceil(GROWTH_SLACK * (max_detections - found) / rate)
                take[image] = min(left, max(wanted, examined[image] // 2, 1))

    kept = torch.cat([s[:max_detections] for s in survivors]) if batch else image_idx  # (K,), by image
    separated = torch.cat([b[:max_detections] for b in survivor_boxes]) if batch else scores.new_empty((0, 4))
    return FlatDetections(
        batch_index=image_idx[kept],
        # exact: see _separated_boxes; clipping a clipped box changes nothing
        boxes_xyxy_norm=(separated - _class_offsets(class_idx[kept])).float().clamp(0.0, 1.0),
        scores=cand_scores[kept],
        labels=class_idx[kept] + 1,
    )


def _keep_top_k_per_class(candidate: Tensor, scores: Tensor, top_k: int) -> None:
    """Unmark, in place, the candidates beyond the ``top_k`` best default boxes of their (image,
    class): Caffe's per-class ``top_k``. The cut is ``topk`` on the same score rows as
    :func:`_postprocess_flat_traceable` takes them from, so both paths keep the same candidates.

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
    deltas = box_deltas[image_idx, prior_idx].float()  # (n, 4)
    return _nms_input(cxcywh_to_xyxy(decode(deltas, priors_cxcywh[prior_idx].float(), variances)), clip_first)


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

    On the CPU the jobs are dealt round-robin to ``torch.get_num_threads()`` threads, this one
    included: ``nms`` releases the GIL, so two threads run two images at once (one submission per
    helper thread, not per job: a submission costs about as much as a small ``nms``).

    Returns:
        For each job, Tensor[s] int64: positions of the survivors, score-descending (ties in
        input order).
    """
    results: list[Tensor | None] = [None] * len(jobs)

    def run(positions: range) -> None:
        for position in positions:
            boxes, scores = jobs[position]
            results[position] = nms(boxes, scores, nms_iou)

    helpers = _nms_helpers() if len(jobs) > 1 and jobs[0][0].device.type == "cpu" else None
    if helpers is None:
        run(range(len(jobs)))
        return results
    hands = min(len(jobs), torch.get_num_threads())  # the helpers and this thread
    futures = [helpers.submit(run, range(hand, len(jobs), hands)) for hand in range(1, hands)]
    run(range(0, len(jobs), hands))
    for future in futures:
        future.result()
    return results


_HELPERS: tuple[tuple[int, int], ThreadPoolExecutor] | None = None  # ((pid, threads), pool)


def _nms_helpers() -> ThreadPoolExecutor | None:
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


def _postprocess_flat_traceable(
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
