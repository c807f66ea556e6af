"""The default-box search's machinery (:mod:`ssdcli.prior_fit` describes the method): the
candidate grids, the objective of one layer's candidates given the others, coordinate descent.

Boxes are ``Tensor[N, 4]`` cxcywh normalised to the network input, float32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ssdcli.coverage import MATCH_THRESHOLD, grid_offsets, shape_iou
from ssdcli.priors import LayerPriors, PriorSpec, layer_box_sizes

SIZE_GRID: tuple[float, ...] = tuple(0.015 * (1.0 / 0.015) ** (i / 43) for i in range(44))
"""Candidate min sizes, fractions of the input side: geometric, about 10 % apart."""
SECOND_SQUARE_FACTORS: tuple[float, ...] = tuple(1.1 * (3.0 / 1.1) ** (i / 9) for i in range(10))
"""Candidate ``sqrt(min * max) / min``, 1.1 to 3 (the presets use 1.09-1.41)."""
RATIO_CANDIDATES: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0)
"""Candidate aspect ratios ``w / h``; each adds the ratio and its flip."""
MIN_SIZE_PER_STEP = 0.5
"""A layer's min size is at least this many of its steps (see :mod:`ssdcli.prior_fit`)."""
IOU_WEIGHT = 0.1
"""Weight of the mean best IoU in the objective (coverage has weight 1)."""
UNUSED_WEIGHT = 0.01
"""Weight of the share of default boxes, of shapes that match no object, in the objective."""
DEFAULT_LINEAR_SCALES = (0.1, 0.95)
"""The linear spread (``--prior-scales``) the fit starts from and is compared with."""


@dataclass(frozen=True)
class LayerChoice:
    """One layer's boxes: min size and second square normalised to the input, ratios >= 1."""

    min_size: float
    second: float
    ratios: tuple[float, ...]


@dataclass(frozen=True)
class LayerTable:
    """One layer's IoU of every box with every candidate shape at its nearest centre: squares
    (N, M) per min size, second squares (N, M, Q) per factor, the better of ``ar`` / ``1 / ar``
    (N, M, R + 1; the last column zeros), and how many of those shapes match no box at all:
    ``unused_squares`` (M, Q) counts both squares, ``unused_pairs`` (M, R + 1) both boxes of a ratio."""

    squares: Tensor
    seconds: Tensor
    pairs: Tensor
    unused_squares: Tensor
    unused_pairs: Tensor


class Evaluator:
    """Objective pieces for one set of boxes and one layout (see the module docstring)."""

    def __init__(self, boxes_cxcywh_norm: Tensor, base: PriorSpec, limits: tuple[int, ...]) -> None:
        self.base = base
        self.wh = boxes_cxcywh_norm[:, 2:]  # (N, 2)
        self.offsets = [grid_offsets(boxes_cxcywh_norm, base, layer) for layer in base.layers]  # L x (N, 2)
        self.cells = [layer.feature_map**2 for layer in base.layers]
        self.reference = float(base.num_priors)
        self.limits = limits
        self.reference_choices = [choice_of(layer, base.image_size, limit) for layer, limit in zip(base.layers, limits)]
        self.grid = torch.tensor(SIZE_GRID)
        self.factors = torch.tensor(SECOND_SQUARE_FACTORS)
        self.ratios = torch.tensor(RATIO_CANDIDATES)
        self._tables: dict[int, LayerTable] = {}
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

    def _table(self, k: int) -> LayerTable:
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
            self._tables[k] = LayerTable(squares, seconds, pairs, unused_squares, unused_pair)
        return self._tables[k]

    def best_candidate(self, k: int, others: Tensor) -> tuple[float, LayerChoice]:
        """The best choice for layer ``k`` given the other layers' best IoU per box ``others``."""
        table, m = self._table(k), self.grid
        squares, seconds, pairs = table.squares, table.seconds, table.pairs
        subsets = ratio_subsets(len(RATIO_CANDIDATES), (self.limits[k] - 2) // 2)  # (S, K), padded with R
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


def ratio_subsets(count: int, most: int) -> Tensor:
    """Every set of at most ``most`` of ``count`` ratio indices, largest sets first, as rows
    padded with ``count`` (a column of zeros). Returns Tensor[S, max(most, 1)] int64."""
    most = max(0, min(most, count))
    rows = [c for size in range(most, -1, -1) for c in itertools.combinations(range(count), size)]
    width = max(most, 1)
    return torch.tensor([list(c) + [count] * (width - len(c)) for c in rows], dtype=torch.int64)


def choice_of(layer: LayerPriors, image_size: int, limit: int) -> LayerChoice:
    ratios = tuple(sorted(layer.aspect_ratios))[: (limit - 2) // 2]
    return LayerChoice(layer.min_size / image_size, math.sqrt(layer.min_size * layer.max_size) / image_size, ratios)


def min_size_norm(base: PriorSpec, layer: LayerPriors) -> float:
    """The smallest min size the search gives ``layer``, normalised: :data:`MIN_SIZE_PER_STEP` steps."""
    return MIN_SIZE_PER_STEP * layer.step / base.image_size


def random_start(base: PriorSpec, limits: tuple[int, ...], generator: torch.Generator) -> list[LayerChoice]:
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


def descend(ev: Evaluator, choices: list[LayerChoice], max_sweeps: int,
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


def spec_of(base: PriorSpec, choices: list[LayerChoice], name: str) -> PriorSpec:
    size = base.image_size
    layers = tuple(
        replace(layer, min_size=round(c.min_size * size, 2), max_size=round(c.second**2 / c.min_size * size, 2),
                aspect_ratios=c.ratios)
        for layer, c in zip(base.layers, choices)
    )
    return replace(base, name=name, layers=layers)


