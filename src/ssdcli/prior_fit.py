"""Default boxes fitted to a dataset within an arch's layout (``ssd priors --fit``).

What is searched. The network fixes the source layers: their number, feature-map sizes, steps,
centre offset and the input size. Per layer the search chooses the min size ``m`` (the small
square, and the base of every ratio box: area ``m^2``), the second square ``b = sqrt(m * max)``
(so ``max = b^2 / m``, with ``b > m`` as Caffe requires) and the set of aspect ratios, each
adding ``ar`` and ``1 / ar`` (:func:`ssdcli.priors.layer_box_sizes`). Candidates: ``m`` on the
geometric grid :data:`SIZE_GRID` (1.5 % to 100 % of the input side, 10 % apart), ``b / m`` in
:data:`SECOND_SQUARE_FACTORS`, ratios from :data:`RATIO_CANDIDATES` (1/4 ... 4 with their
flips). A layer's min size is at least half its step (:data:`MIN_SIZE_PER_STEP`; the presets
have 0.9 to 4 steps): a smaller box on a coarse grid can only be matched by the few objects near
one of its centres, and would ask the coarsest features for the smallest objects.

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
candidate of that layer at once: shape IoUs ``(objects, shapes)`` for the whole grid, then the
max over each candidate's shapes, vectorised over ``(m, b / m, ratio set)``. A layer changes
only when the objective strictly improves; sweeps over all layers repeat until none does, so
the objective never decreases. IoU with a shape is taken at the nearest grid centre
(:func:`ssdcli.coverage.grid_offsets`, :func:`ssdcli.coverage.shape_iou`), which is the best
IoU over all priors of that shape without materialising them. Starts: the preset, the linear
spread 0.1-0.95, and ``restarts`` random ones from ``seed``, each descending on a subsample
of ``start_boxes`` boxes; the best end point is then refined on every box. Ties
resolve by a fixed order and all randomness comes from one seeded generator, so a seed gives
the same spec (on one machine and torch build).

Augmentation. The fit uses the un-augmented boxes: they are what ``ssd eval`` / ``ssd detect``
feed the network, and training's zoom-out (objects 1-4x smaller, half the time) and min-IoU
crops (objects up to ~3x larger) spread sizes around them in both directions. ``zoom_out=True``
adds one zoomed-out copy of every box (side factor uniform in [1, 4] at a random place on the
canvas, as ``RandomZoomOut`` draws it; with p = 0.5 half the boxes a network trains on are
such copies): boxes for small objects then weigh more. Crops are not modelled.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ssdcli.boxes import xyxy_to_cxcywh
from ssdcli.coverage import (
    MATCH_THRESHOLD,
    CoverageReport,
    grid_offsets,
    network_ground_truth,
    prior_coverage,
    shape_iou,
)
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import DataError
from ssdcli.priors import LayerPriors, PriorSpec, layer_box_sizes, preset_spec

SIZE_GRID: tuple[float, ...] = tuple(0.015 * (1.0 / 0.015) ** (i / 43) for i in range(44))
"""Candidate min sizes, fractions of the input side: geometric, about 10 % apart."""
SECOND_SQUARE_FACTORS: tuple[float, ...] = tuple(1.1 * (3.0 / 1.1) ** (i / 9) for i in range(10))
"""Candidate ``sqrt(min * max) / min``, 1.1 to 3 (the presets use 1.09-1.41)."""
RATIO_CANDIDATES: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0)
"""Candidate aspect ratios ``w / h``; each adds the ratio and its flip."""
MIN_SIZE_PER_STEP = 0.5
"""A layer's min size is at least this many of its steps (module docstring)."""
IOU_WEIGHT = 0.1
UNUSED_WEIGHT = 0.01
DEFAULT_LINEAR_SCALES = (0.1, 0.95)

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
class LayerChoice:
    """One layer's boxes: min size and second square normalised to the input, ratios >= 1."""

    min_size: float
    second: float
    ratios: tuple[float, ...]


@dataclass(frozen=True)
class FitResult:
    """The fitted spec, its objective, the per-layer box limit it was fitted under, the boxes
    the search saw (zoomed-out copies included) and the sweeps the winning start took."""

    spec: PriorSpec
    objective: float
    max_boxes_per_location: tuple[int, ...]
    num_boxes: int
    sweeps: int


def max_boxes_per_location(base: PriorSpec, budget: int | None) -> tuple[int, ...]:
    """Per layer the most boxes per location: the preset's (``budget`` None) or ``budget``.

    Raises:
        ValueError: a budget below 2 (the two squares every layer has).
    """
    if budget is None:
        return base.boxes_per_location
    if budget < 2:
        raise ValueError(f"budget {budget}: every layer has at least its 2 squares, give 2 or more")
    return (budget,) * len(base.layers)


@dataclass(frozen=True)
class _LayerTable:
    """One layer's IoU of every box with every candidate shape at its nearest centre: squares
    (N, M) per min size, second squares (N, M, Q) per factor, the better of ``ar`` / ``1 / ar``
    (N, M, R + 1; the last column zeros), and how many of those shapes match no box at all:
    ``unused_squares`` (M, Q) counts both squares, ``unused_pairs`` (M, R + 1) both boxes of a ratio."""

    squares: Tensor
    seconds: Tensor
    pairs: Tensor
    unused_squares: Tensor
    unused_pairs: Tensor


class _Evaluator:
    """Objective pieces for one set of boxes and one layout (see the module docstring)."""

    def __init__(self, boxes_cxcywh_norm: Tensor, base: PriorSpec, limits: tuple[int, ...]) -> None:
        self.base = base
        self.wh = boxes_cxcywh_norm[:, 2:]  # (N, 2)
        self.offsets = [grid_offsets(boxes_cxcywh_norm, base, layer) for layer in base.layers]  # L x (N, 2)
        self.cells = [layer.feature_map**2 for layer in base.layers]
        self.reference = float(base.num_priors)
        self.limits = limits
        self.reference_choices = [_choice_of(layer, base.image_size, limit) for layer, limit in zip(base.layers, limits)]
        self.grid = torch.tensor(SIZE_GRID)
        self.factors = torch.tensor(SECOND_SQUARE_FACTORS)
        self.ratios = torch.tensor(RATIO_CANDIDATES)
        self._tables: dict[int, _LayerTable] = {}
        self.allowed = [self.grid >= min_size_norm(base, layer) for layer in base.layers]  # L x (M,) bool

    def layer_best(self, k: int, choice: LayerChoice) -> tuple[Tensor, int]:
        """Best IoU per box over layer ``k``'s shapes (Tensor[N]) and how many shapes match nothing."""
        size = self.base.image_size
        layer = LayerPriors(1, 1.0, choice.min_size * size, choice.second**2 / choice.min_size * size, choice.ratios)
        shapes = torch.tensor(layer_box_sizes(layer), dtype=self.wh.dtype) / size  # (A, 2)
        iou = shape_iou(self.wh, self.offsets[k], shapes)  # (N, A)
        return iou.amax(dim=1), int((~(iou >= MATCH_THRESHOLD).any(dim=0)).sum())

    def score(self, best: Tensor, unused: float, k: int) -> Tensor:
        """The layer-``k``-dependent part of the objective for best IoUs ``best`` (N, ...): boxes
        first, so the sums run over the outer axis of a contiguous tensor."""
        # float64 sums: exact ties between candidates stay exact, so the tie rule decides them
        coverage = (best >= MATCH_THRESHOLD).sum(dim=0, dtype=torch.float64) / best.shape[0]
        mean_iou = best.sum(dim=0, dtype=torch.float64) / best.shape[0]
        return coverage + IOU_WEIGHT * mean_iou - UNUSED_WEIGHT * self.cells[k] * unused / self.reference

    def _table(self, k: int) -> _LayerTable:
        """Layer ``k``'s IoUs with every candidate shape, computed once per evaluator."""
        if k not in self._tables:
            off, wh, m = self.offsets[k], self.wh, self.grid
            squares = shape_iou(wh, off, torch.stack((m, m), dim=1))  # (N, M)
            second = (m[:, None] * self.factors[None, :]).reshape(-1)  # (M*Q,)
            seconds = shape_iou(wh, off, torch.stack((second, second), dim=1)).reshape(len(wh), len(m), -1)  # (N, M, Q)
            root = self.ratios.sqrt()
            wide_wh = torch.stack((m[:, None] * root, m[:, None] / root), dim=-1).reshape(-1, 2)  # (M*R, 2)
            wide = shape_iou(wh, off, wide_wh).reshape(len(wh), len(m), -1)  # (N, M, R)
            tall = shape_iou(wh, off, wide_wh.flip(1)).reshape(len(wh), len(m), -1)  # (N, M, R)
            pairs = torch.cat((torch.maximum(wide, tall), wide.new_zeros(len(wh), len(m), 1)), dim=2)  # (N, M, R+1)
            unused_pair = (~(wide >= MATCH_THRESHOLD).any(0)).float() + (~(tall >= MATCH_THRESHOLD).any(0)).float()
            unused_pair = torch.cat((unused_pair, unused_pair.new_zeros(len(m), 1)), dim=1)  # (M, R+1)
            unused_squares = (~(squares >= MATCH_THRESHOLD).any(0)).float()[:, None] + (
                ~(seconds >= MATCH_THRESHOLD).any(0)).float()  # (M, Q)
            self._tables[k] = _LayerTable(squares, seconds, pairs, unused_squares, unused_pair)
        return self._tables[k]

    def best_candidate(self, k: int, others: Tensor) -> tuple[float, LayerChoice]:
        """The best choice for layer ``k`` given the other layers' best IoU per box ``others``."""
        table, m = self._table(k), self.grid
        squares, seconds, pairs = table.squares, table.seconds, table.pairs
        subsets = _ratio_subsets(len(RATIO_CANDIDATES), (self.limits[k] - 2) // 2)  # (S, K), padded with R
        base = torch.maximum(others[:, None], squares)[:, :, None].expand(-1, -1, len(subsets))  # (N, M, S)
        for column in subsets.T:
            base = torch.maximum(base, pairs[:, :, column])  # (N, M, S)
        unused = table.unused_squares[:, :, None] + table.unused_pairs[:, subsets].sum(-1)[:, None, :]  # (M, Q, S)
        scores = torch.stack(
            [self.score(torch.maximum(base, seconds[:, :, q, None]), 0.0, k)
             for q in range(seconds.shape[2])],
            dim=1,
        )  # (M, Q, S)
        scores = scores - UNUSED_WEIGHT * self.cells[k] * unused / self.reference
        scores = scores.masked_fill(~self.allowed[k][:, None, None], -torch.inf)  # min sizes too small for the step
        i, q, s = self._tie_break(k, scores, (subsets < len(RATIO_CANDIDATES)).sum(dim=1))
        ratios = tuple(RATIO_CANDIDATES[r] for r in subsets[s].tolist() if r < len(RATIO_CANDIDATES))
        return float(scores[i, q, s]), LayerChoice(float(m[i]), float(m[i] * self.factors[q]), ratios)

    def _tie_break(self, k: int, scores: Tensor, set_sizes: Tensor) -> tuple[int, int, int]:
        """Index ``(size, factor, ratio set)`` of the best of ``scores`` (M, Q, S); among equal
        scores (a layer that changes nothing, e.g. one no object fits) the one with more ratios,
        then the one nearest the preset's sizes (in log size), so such a layer stays as it was."""
        ref = self.reference_choices[k]
        distance = ((self.grid / ref.min_size).log().abs()[:, None]
                    + (self.factors / (ref.second / ref.min_size)).log().abs()[None, :])  # (M, Q)
        key = distance[:, :, None] - 100.0 * set_sizes[None, None, :]  # distance < 100: sizes of sets first
        key = torch.where(scores >= scores.max() - 1e-12, key, torch.inf)
        flat = int(torch.argmin(key))  # first minimum: a fixed order
        width = scores.shape[1] * scores.shape[2]
        return flat // width, (flat % width) // scores.shape[2], flat % scores.shape[2]


def _ratio_subsets(count: int, most: int) -> Tensor:
    """Every set of at most ``most`` of ``count`` ratio indices, largest sets first, as rows
    padded with ``count`` (a column of zeros). Returns Tensor[S, max(most, 1)] int64."""
    most = max(0, min(most, count))
    rows = [c for size in range(most, -1, -1) for c in itertools.combinations(range(count), size)]
    width = max(most, 1)
    return torch.tensor([list(c) + [count] * (width - len(c)) for c in rows], dtype=torch.int64)


def _choice_of(layer: LayerPriors, image_size: int, limit: int) -> LayerChoice:
    ratios = tuple(sorted(layer.aspect_ratios))[: (limit - 2) // 2]
    return LayerChoice(layer.min_size / image_size, math.sqrt(layer.min_size * layer.max_size) / image_size, ratios)


def min_size_norm(base: PriorSpec, layer: LayerPriors) -> float:
    """The smallest min size the search gives ``layer``, normalised: :data:`MIN_SIZE_PER_STEP` steps."""
    return MIN_SIZE_PER_STEP * layer.step / base.image_size


def _random_start(base: PriorSpec, limits: tuple[int, ...], generator: torch.Generator) -> list[LayerChoice]:
    """Sizes drawn from the grid (sorted so they grow with the layers, at least each layer's
    smallest allowed size), random factors and ratio sets."""
    sizes = torch.randint(len(SIZE_GRID), (len(base.layers),), generator=generator).sort().values.tolist()
    factors = torch.randint(len(SECOND_SQUARE_FACTORS), (len(base.layers),), generator=generator).tolist()
    lowest = [next(i for i, g in enumerate(SIZE_GRID) if g >= min_size_norm(base, layer)) for layer in base.layers]
    choices = []
    for index, low, factor, limit in zip(sizes, lowest, factors, limits):
        index = max(index, low)
        order = torch.randperm(len(RATIO_CANDIDATES), generator=generator)[: (limit - 2) // 2]
        ratios = tuple(sorted(RATIO_CANDIDATES[r] for r in order.tolist()))
        choices.append(LayerChoice(SIZE_GRID[index], SIZE_GRID[index] * SECOND_SQUARE_FACTORS[factor], ratios))
    return choices


def _descend(ev: _Evaluator, choices: list[LayerChoice], max_sweeps: int,
             tick: Callable[[], None]) -> tuple[list[LayerChoice], float, int]:
    """Coordinate descent from ``choices``; returns the end point, its objective and the sweeps."""
    results = [ev.layer_best(k, c) for k, c in enumerate(choices)]
    best = torch.stack([b for b, _ in results])  # (L, N)
    unused = [u for _, u in results]
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        changed = False
        for k in range(len(choices)):
            others = torch.cat((best[:k], best[k + 1:])).amax(dim=0) if len(choices) > 1 else best.new_zeros(best.shape[1])
            current = float(ev.score(torch.maximum(others, best[k]), unused[k], k))
            score, candidate = ev.best_candidate(k, others)
            if score > current + 1e-9:
                choices[k] = candidate
                best[k], unused[k] = ev.layer_best(k, candidate)
                changed = True
            tick()
        if not changed:
            break
    total = float(ev.score(best.amax(dim=0), 0.0, 0))
    total -= UNUSED_WEIGHT * sum(c * u for c, u in zip(ev.cells, unused)) / ev.reference
    return choices, total, sweeps


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


def _spec_of(base: PriorSpec, choices: list[LayerChoice], name: str) -> PriorSpec:
    size = base.image_size
    layers = tuple(
        replace(layer, min_size=round(c.min_size * size, 2), max_size=round(c.second**2 / c.min_size * size, 2),
                aspect_ratios=c.ratios)
        for layer, c in zip(base.layers, choices)
    )
    return replace(base, name=name, layers=layers)


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
    limits = max_boxes_per_location(base, settings.budget)
    generator = torch.Generator().manual_seed(settings.seed)
    boxes = _search_boxes(boxes_xyxy_norm, settings, generator)
    few = boxes[torch.randperm(boxes.shape[0], generator=generator)[: settings.start_boxes].sort().values]
    starts = [[_choice_of(layer, base.image_size, limit) for layer, limit in zip(spec.layers, limits)]
              for spec in (base, base.with_linear_scales(*DEFAULT_LINEAR_SCALES))]
    starts += [_random_start(base, limits, generator) for _ in range(settings.restarts)]
    refine = boxes.shape[0] > few.shape[0]
    steps_per_run = settings.max_sweeps * len(base.layers)
    total_steps, done = (len(starts) + refine) * steps_per_run, 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    ev = _Evaluator(few, base, limits)
    winner: tuple[list[LayerChoice], float, int] | None = None
    for index, start in enumerate(starts):
        result = _descend(ev, start, settings.max_sweeps, tick)
        done = (index + 1) * steps_per_run
        if winner is None or result[1] > winner[1] + 1e-9:
            winner = result
    assert winner is not None
    if refine:  # the best end point, refined on every box
        winner = _descend(_Evaluator(boxes, base, limits), list(winner[0]), settings.max_sweeps, tick)
    if progress is not None:
        progress(total_steps, total_steps)
    choices, objective, sweeps = winner
    return FitResult(_spec_of(base, choices, f"{base.name}-fit"), objective, limits, int(boxes.shape[0]), sweeps)


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
