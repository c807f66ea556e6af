"""Sensitivity to object size and aspect ratio: the SSD paper's Fig. 4, after Hoiem et al.
(ECCV 2012, sec. 2 and 4; ``analyzeTrueDetections.m``, ``averagePrecisionNormalized.m``).

**Normalised AP.** Precision depends on how many objects a class has, so Hoiem replaces it by
the precision the detector would have if every class had the same number ``N`` of objects:
``P_N = R N / (R N + FP)`` at recall ``R`` with ``FP`` false positives. ``N`` is fixed at 0.15 x
the number of images (Hoiem's ``NORM_FRACT``). The AP is then the sum, over the true
positives, of the interpolated (monotone) normalised precision at each, divided by the number of
objects (Hoiem: ``mean(pn(istp)) * r(end)``); plain AP is the same with ``P``.

**Bins.** The non-difficult objects of a class are split by area (XS, S, M, L, XL) and by
aspect ratio width / height (XT = extra tall, T, M, W, XW = extra wide) at the class's own 10th,
30th, 70th and 90th percentiles: the sorted values' entries ``round(q n)`` (MATLAB rounding,
1-based, at least the first), an object in the highest bin whose threshold it exceeds
(strictly), so 10 / 20 / 40 / 20 / 10 % of the objects. The AP of bin ``b`` counts the
objects of ``b`` only: a true positive on an object of another bin is neither true nor false
(Hoiem's ``label = 0``); false positives stay false.

Matching is the IoU 0.5 matching of :mod:`~ssdcli.evaluation.analysis`. Before the bins are
scored, detections after the first whose interpolated normalised precision is below 0.01 are
dropped (Hoiem's ``confidence_thresh``), as the toolkit does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdcli.evaluation.analysis import round_half_away

SIZE_BINS = ("XS", "S", "M", "L", "XL")
ASPECT_BINS = ("XT", "T", "M", "W", "XW")
PERCENTILES = (0.1, 0.3, 0.7, 0.9)
NORM_FRACTION = 0.15  # Hoiem's NORM_FRACT: N = 0.15 x images
MIN_NORMALISED_PRECISION = 0.01  # Hoiem's confidence_thresh


@dataclass(frozen=True)
class NormalisedAP:
    """AP and normalised AP of one ranked list.

    Attributes:
        ap, apn: ``None`` without objects.
        interpolated: float64[n], the interpolated normalised precision after each detection.
    """

    ap: float | None
    apn: float | None
    interpolated: np.ndarray


def _envelope(values: np.ndarray) -> np.ndarray:
    """``max(values[i:])``, NaN ignored like MATLAB's ``max``."""
    return np.fmax.accumulate(values[::-1])[::-1] if values.size else values


def normalised_ap(labels: np.ndarray, num_objects: int, normaliser: float) -> NormalisedAP:
    """Hoiem's ``averagePrecisionNormalized``.

    Args:
        labels: int8[n], detections by score descending: 1 true, -1 false, 0 neither.
        num_objects: objects the recall counts.
        normaliser: ``N``, the number of objects every class is normalised to.
    """
    tp = np.cumsum(labels == 1, dtype=np.float64)
    fp = np.cumsum(labels == -1, dtype=np.float64)
    if num_objects <= 0:
        return NormalisedAP(None, None, np.full(labels.shape, np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        tp_norm = tp * normaliser / num_objects
        precision_norm = tp_norm / (tp_norm + fp)
    precision, precision_norm = _envelope(precision), _envelope(precision_norm)
    hits = labels == 1
    return NormalisedAP(
        ap=float(precision[hits].sum() / num_objects),
        apn=float(precision_norm[hits].sum() / num_objects),
        interpolated=precision_norm,
    )


def percentile_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hoiem's five bins of ``values`` (see the module docstring).

    Returns:
        ``(bins, thresholds)``: int64[n] in 0..4, and float64[5] (0, then the four percentile
        values); empty ``values`` give empty bins and NaN thresholds.
    """
    n = values.size
    if n == 0:
        return np.zeros(0, np.int64), np.full(5, np.nan)
    ordered = np.sort(values)
    picks = [min(max(round_half_away(q * n), 1), n) - 1 for q in PERCENTILES]
    thresholds = np.concatenate(([0.0], ordered[picks]))  # (5,)
    bins = np.count_nonzero(values[:, None] > thresholds[None, :], axis=1) - 1  # (n,)
    return np.maximum(bins, 0), thresholds


@dataclass(frozen=True)
class Characteristic:
    """One characteristic (size or aspect ratio) of one class.

    Attributes:
        thresholds: float64[5], the lower edge of each bin (exclusive).
        num_objects: int64[5].
        apn: normalised AP per bin, ``None`` for an empty bin.
    """

    thresholds: np.ndarray
    num_objects: np.ndarray
    apn: list[float | None]

    @property
    def spread(self) -> tuple[float, float] | None:
        """``(lowest, highest)`` normalised AP over the bins with objects."""
        values = [v for v in self.apn if v is not None]
        return (min(values), max(values)) if values else None

    def to_json(self, names: tuple[str, ...]) -> dict:
        return {
            "bins": list(names),
            "lower_edges": [None if not np.isfinite(v) else float(v) for v in self.thresholds],
            "num_objects": self.num_objects.tolist(),
            "apn": self.apn,
        }


def characteristic(
    labels: np.ndarray, taken: np.ndarray, values: np.ndarray, normaliser: float
) -> Characteristic:
    """Normalised AP per bin of ``values``.

    Args:
        labels: int8[n], the class's detections in score order (1 / 0 / -1).
        taken: int64[n], for each detection the index (into ``values``) of the object it took,
            or -1.
        values: float64[m], the characteristic of each non-difficult object of the class.
    """
    bins, thresholds = percentile_bins(values)
    counts = np.bincount(bins, minlength=5)
    taken_bin = np.where(taken >= 0, bins[np.maximum(taken, 0)] if bins.size else -1, -1)  # (n,)
    apn = []
    for b in range(5):
        kept = np.where((labels == 1) & (taken_bin != b), 0, labels).astype(np.int8)
        apn.append(normalised_ap(kept, int(counts[b]), normaliser).apn)
    return Characteristic(thresholds=thresholds, num_objects=counts, apn=apn)


@dataclass(frozen=True)
class ClassSensitivity:
    """Size and aspect-ratio sensitivity of one class (``None`` APs without objects)."""

    name: str
    num_objects: int
    ap: float | None
    apn: float | None
    size: Characteristic
    aspect: Characteristic

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "num_objects": self.num_objects,
            "ap": self.ap,
            "apn": self.apn,
            "size": self.size.to_json(SIZE_BINS),
            "aspect_ratio": self.aspect.to_json(ASPECT_BINS),
        }


def class_sensitivity(
    name: str, labels: np.ndarray, taken: np.ndarray, areas: np.ndarray, aspects: np.ndarray, normaliser: float
) -> ClassSensitivity:
    """One class's sensitivity (module docstring).

    Args:
        labels: int8[n], its detections in score order: 1 took an object, 0 a difficult box,
            -1 false positive (IoU 0.5 matching).
        taken: int64[n], index into ``areas`` / ``aspects`` of the object each took, or -1.
        areas, aspects: float64[m], its non-difficult objects.
    """
    num_objects = int(areas.size)
    scored = normalised_ap(labels, num_objects, normaliser)
    below = np.flatnonzero(scored.interpolated < MIN_NORMALISED_PRECISION)
    if below.size:
        labels, taken = labels[: below[0]], taken[: below[0]]
    overall = normalised_ap(labels, num_objects, normaliser)
    return ClassSensitivity(
        name=name,
        num_objects=num_objects,
        ap=overall.ap,
        apn=overall.apn,
        size=characteristic(labels, taken, areas, normaliser),
        aspect=characteristic(labels, taken, aspects, normaliser),
    )


def average_spread(results: list[ClassSensitivity], which: str) -> dict | None:
    """Hoiem's summary of one characteristic (``"size"`` or ``"aspect"``): the mean over classes
    of the lowest and of the highest bin's normalised AP, and of the class's overall one."""
    rows = [(r.apn, getattr(r, which).spread) for r in results if r.apn is not None and getattr(r, which).spread]
    if not rows:
        return None
    return {
        "apn": float(np.mean([apn for apn, _ in rows])),
        "lowest": float(np.mean([low for _, (low, _) in rows])),
        "highest": float(np.mean([high for _, (_, high) in rows])),
        "classes": len(rows),
    }
