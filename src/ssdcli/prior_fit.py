"""Default boxes fitted to a dataset within an arch's layout (``ssd priors --fit``).

What is searched. The network fixes the source layers: their number, feature-map sizes, steps,
centre offset and the input size. Per layer the search chooses the min size ``m`` (the small
square, and the base of every ratio box: area ``m^2``), the second square ``b = sqrt(m * max)``
(so ``max = b^2 / m``, with ``b > m`` as Caffe requires) and the set of aspect ratios, each
adding ``ar`` and ``1 / ar`` (:func:`ssdcli.priors.layer_box_sizes`). The candidates are in
:mod:`ssdcli.prior_search`: ``m`` on a geometric grid from 1.5 % to 100 % of the input side,
10 % apart; ``b / m`` from 1.1 to 3; ratios 1.5, 2, 2.5, 3, 4 (with their flips: 1/4 ... 4). A
layer's min size is at least half its step (the presets have 0.9 to 4 steps): a smaller box on
a coarse grid can only be matched by the few objects near one of its centres, and would ask the
coarsest features for the smallest objects.

Budget: a layer has at most as many boxes per location as the head allows, the preset's on that
layer (``--budget same``: the heads are never larger than the preset's, so the network has at
most the preset's outputs), or ``N`` on every layer (``--budget N``). Ties go to more boxes, so
with ``same`` a layer keeps the preset's count unless a box would match nothing.

Objective, on the boxes at the network input (the image squeezed to the square input, as SSD
resizes): ``coverage + 0.1 * mean best IoU - 0.01 * unused share``. Coverage is the share of
objects whose best default box has IoU >= 0.5 (the matching threshold: these get an ordinary
positive, the others only best-prior forcing); the mean best IoU separates equal coverages;
the unused share is the fraction of default boxes (counted against the preset's total) whose
shape reaches IoU 0.5 with no object anywhere: they can only ever be negatives.

Algorithm: coordinate descent over the layers. Each object's best IoU is the max over layers,
so with the other layers fixed, one layer's best choice is found exactly by trying every
candidate of that layer at once (:meth:`ssdcli.prior_search.Evaluator.best_candidate`): shape
IoUs ``(objects, shapes)`` for the whole grid, then the max over each candidate's shapes,
vectorised over ``(m, b / m, ratio set)``. A layer changes only when the objective strictly
improves; sweeps over all layers repeat until none does, so the objective never decreases. IoU
with a shape is taken at the nearest grid centre (:func:`ssdcli.coverage.grid_offsets`,
:func:`ssdcli.coverage.shape_iou`), which is the best IoU over all priors of that shape without
materialising them. Starts: the preset, the linear spread 0.1-0.95, and ``restarts`` random
ones from ``seed``, each descending on a subsample of ``start_boxes`` boxes; the best end point
is then refined on every box. Ties resolve by a fixed order and all randomness comes from one
seeded generator, so a seed gives the same spec (on one machine and torch build).

Augmentation. The fit uses the un-augmented boxes: they are what ``ssd eval`` / ``ssd detect``
feed the network, and training's zoom-out (objects 1-4x smaller, half the time) and min-IoU
crops (objects up to ~3x larger) spread sizes around them in both directions. ``zoom_out=True``
adds one zoomed-out copy of every box (side factor uniform in [1, 4] at a random place on the
canvas, as ``RandomZoomOut`` draws it; with p = 0.5 half the boxes a network trains on are
such copies): boxes for small objects then weigh more. Crops are not modelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ssdcli.boxes import xyxy_to_cxcywh
from ssdcli.coverage import CoverageReport, network_ground_truth, prior_coverage
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import DataError
from ssdcli.prior_file import allowed_boxes_per_location
from ssdcli.prior_search import (
    DEFAULT_LINEAR_SCALES,
    Evaluator,
    LayerChoice,
    choice_of,
    descend,
    random_start,
    spec_of,
)
from ssdcli.priors import PriorSpec, preset_spec

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class FitSettings:
    """Search settings.

    Attributes:
        budget: most boxes per location on every layer; ``None`` = the preset's per layer.
        seed: seeds the random starts, the zoomed-out copies and the subsample.
        zoom_out: also fit one zoomed-out copy of every box (module docstring).
        max_boxes: boxes used in the search at most (a seeded subsample beyond that).
        start_boxes: boxes the starts descend on (a seeded subsample); the best end point is
            then refined on all boxes.
        restarts: random starts besides the preset and the linear spread.
        max_sweeps: sweeps over the layers per start at most.
    """

    budget: int | None = None
    seed: int = 0
    zoom_out: bool = False
    max_boxes: int = 10000
    start_boxes: int = 1000
    restarts: int = 2
    max_sweeps: int = 10


@dataclass(frozen=True)
class FitResult:
    """The fitted spec, its objective, the per-layer box limit it was fitted under, the boxes
    the search saw (zoomed-out copies included) and the sweeps the winning start took."""

    spec: PriorSpec
    objective: float
    max_boxes_per_location: tuple[int, ...]
    num_boxes: int
    sweeps: int


def zoomed_out_copies(boxes_cxcywh_norm: Tensor, generator: torch.Generator, max_zoom: float = 4.0) -> Tensor:
    """One zoom-out copy of every box: the image shrunk by ``r ~ U(1, max_zoom)`` and placed at a
    uniform position on the canvas (``RandomZoomOut``'s draw, here one per box, not per image:
    each box is scored alone, so only the per-box distribution matters).

    Returns:
        Tensor[N, 4], cxcywh normalised to the canvas.
    """
    n = boxes_cxcywh_norm.shape[0]
    draws = torch.rand(n, 3, generator=generator, dtype=boxes_cxcywh_norm.dtype)  # (N, 3): r, left, top
    shrink = 1.0 / (1.0 + (max_zoom - 1.0) * draws[:, :1])  # (N, 1): image side on the canvas
    origin = (1.0 - shrink) * draws[:, 1:]  # (N, 2): image's top-left corner on the canvas
    return torch.cat((origin + boxes_cxcywh_norm[:, :2] * shrink, boxes_cxcywh_norm[:, 2:] * shrink), dim=1)


def fit_priors(
    boxes_xyxy_norm: Tensor, base: PriorSpec, settings: FitSettings = FitSettings(),
    progress: ProgressFn | None = None,
) -> FitResult:
    """Search default boxes for ``boxes_xyxy_norm`` within ``base``'s layout (module docstring).

    Args:
        boxes_xyxy_norm: Tensor[N, 4], ground truth at the network input, xyxy normalised;
            boxes without area are left out.
        base: the arch's preset: layout, offset, variances, starting point, budget reference.
        settings: budget, seed, zoom-out copies, search limits.
        progress: called as ``progress(done, total)`` after each layer step.

    Raises:
        DataError: no box with positive area.
        ValueError: a budget below 2.
    """
    limits = allowed_boxes_per_location(base, settings.budget)
    generator = torch.Generator().manual_seed(settings.seed)
    boxes = _search_boxes(boxes_xyxy_norm, settings, generator)
    few = boxes[torch.randperm(boxes.shape[0], generator=generator)[: settings.start_boxes].sort().values]
    starts = [[choice_of(layer, base.image_size, limit) for layer, limit in zip(spec.layers, limits)]
              for spec in (base, base.with_linear_scales(*DEFAULT_LINEAR_SCALES))]
    starts += [random_start(base, limits, generator) for _ in range(settings.restarts)]
    refine = boxes.shape[0] > few.shape[0]
    steps_per_run = settings.max_sweeps * len(base.layers)
    total_steps, done = (len(starts) + refine) * steps_per_run, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    ev = Evaluator(few, base, limits)
    winner: tuple[list[LayerChoice], float, int] | None = None
    for index, start in enumerate(starts):
        result = descend(ev, start, settings.max_sweeps, tick)
        done = (index + 1) * steps_per_run
        if winner is None or result[1] > winner[1] + 1e-9:
            winner = result
    assert winner is not None
    if refine:  # the best end point, refined on every box
        winner = descend(Evaluator(boxes, base, limits), list(winner[0]), settings.max_sweeps, tick)
    if progress is not None:
        progress(total_steps, total_steps)
    choices, objective, sweeps = winner
    return FitResult(spec_of(base, choices, f"{base.name}-fit"), objective, limits, int(boxes.shape[0]), sweeps)


def _search_boxes(boxes_xyxy_norm: Tensor, settings: FitSettings, generator: torch.Generator) -> Tensor:
    """The boxes the search scores, Tensor[N, 4] cxcywh normalised float32: positive area only,
    with zoomed-out copies when asked, a seeded subsample of ``max_boxes`` beyond that."""
    boxes = xyxy_to_cxcywh(boxes_xyxy_norm.double())
    boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
    if boxes.shape[0] == 0:
        raise DataError("no ground-truth boxes with positive area to fit default boxes to")
    if settings.zoom_out:
        boxes = torch.cat((boxes, zoomed_out_copies(boxes, generator)))
    if boxes.shape[0] > settings.max_boxes:
        boxes = boxes[torch.randperm(boxes.shape[0], generator=generator)[: settings.max_boxes].sort().values]
    return boxes.float()


@dataclass(frozen=True)
class FitComparison:
    """What ``ssd priors --fit`` shows: the fit, and the exact coverage (all priors materialised,
    :func:`ssdcli.coverage.prior_coverage`) of the preset, the linear spread and the fitted spec
    on the un-augmented boxes; ``seconds`` is the search's wall-clock time."""

    fit: FitResult
    preset: CoverageReport
    linear: CoverageReport
    fitted: CoverageReport
    preset_spec: PriorSpec
    linear_spec: PriorSpec
    seconds: float


def fit_to_dataset(
    dataset: DetectionDataset, preset: str, settings: FitSettings = FitSettings(),
    linear_scales: tuple[float, float] = DEFAULT_LINEAR_SCALES, progress: ProgressFn | None = None,
) -> FitComparison:
    """Fit the default boxes of preset ``preset`` to ``dataset`` and compare (:class:`FitComparison`).

    Raises:
        DataError: the dataset has no usable ground-truth box.
        ValueError: a budget below 2 or impossible linear scales.
    """
    base = preset_spec(preset)
    linear_spec = base.with_linear_scales(*linear_scales)
    truth = network_ground_truth(dataset)
    if truth.boxes_xyxy_norm.shape[0] == 0:
        raise DataError(f"{dataset.root}: no ground-truth boxes (crowd boxes left out) to fit default boxes to")
    started = time.perf_counter()
    fit = fit_priors(truth.boxes_xyxy_norm, base, settings, progress)
    seconds = time.perf_counter() - started
    return FitComparison(fit, prior_coverage(dataset, base), prior_coverage(dataset, linear_spec),
                         prior_coverage(dataset, fit.spec), base, linear_spec, seconds)
