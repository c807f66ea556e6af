"""``ssd eval --analysis DIR``: every error analysis of one set of detections, written to a folder.

:func:`analyse` computes, :func:`write_analysis` writes; :func:`run_analysis` does both. The
folder gets ``analysis.json`` (every number below, fractions in [0, 1]), the figures, the
confusion matrix as CSV and the worst images:

- ``false_positives.png``: the SSD paper's Fig. 3 for the summary groups (:mod:`.analysis`);
  ``fp_trend_classes_<n>.png``: the same trend for every class; ``fp_types.png``: the types of
  the top-ranked false positives of every class and group;
- ``sensitivity.png`` and ``sensitivity_summary.png``: Fig. 4 (:mod:`.sensitivity`);
- ``confusion_matrix.png``, ``confusion_matrix.csv`` (counts), ``confusion_matrix_normalized.csv``
  (:mod:`.confusion`);
- ``tide.png``: TIDE's dAPs (:mod:`.tide`);
- ``worst/NN_<image>.jpg``: the images with the most false positives + missed objects at the
  confusion matrix's score threshold, ground truth dashed, detections solid
  (:mod:`.analysis_worst`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError
from ssdcli.evaluation import analysis_figures as figures
from ssdcli.evaluation.analysis import (
    Breakdown,
    ClassGroups,
    DetectionTypes,
    class_groups,
    class_order,
    classify_detections,
    false_positive_analysis,
)
from ssdcli.evaluation.analysis_worst import WorstImage, find_worst_images, write_worst_images
from ssdcli.evaluation.confusion import DEFAULT_CONF_THRESHOLD, confusion_matrix, row_normalised, write_confusion_csv
from ssdcli.evaluation.detections import DetectionTable, parse_detections
from ssdcli.evaluation.pairs import FlatGroundTruth, box_pairs, flatten_ground_truth, ranks_in_image
from ssdcli.evaluation.sensitivity import NORM_FRACTION, ClassSensitivity, average_spread, class_sensitivity
from ssdcli.evaluation.tide import TideResult, tide_errors
from ssdcli.files import atomic_write_json
from ssdcli.plotting import save_png

FIXED_FILES = (
    "analysis.json", "false_positives.png", "fp_types.png", "sensitivity.png", "sensitivity_summary.png",
    "confusion_matrix.png", "confusion_matrix.csv", "confusion_matrix_normalized.csv", "tide.png",
)


@dataclass(frozen=True)
class AnalysisSettings:
    """Attributes:
        conf_threshold: score threshold of the confusion matrix and the worst images.
        similar_file: ``--similar``: sets of similar classes, one per line.
        worst: how many worst images to render (0: none).
    """

    conf_threshold: float = DEFAULT_CONF_THRESHOLD
    similar_file: Path | None = None
    worst: int = 20


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyse` found (see the modules for each part)."""

    classes: list[str]
    groups: ClassGroups
    per_class: list[Breakdown]
    summary: list[Breakdown]
    sensitivity: list[ClassSensitivity]
    spreads: dict[str, dict | None]
    confusion: np.ndarray
    tide: TideResult
    worst: list[WorstImage]
    settings: AnalysisSettings
    num_images: int
    num_detections: int
    table: DetectionTable
    types: DetectionTypes
    written: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "settings": {
                "conf_threshold": self.settings.conf_threshold,
                "normalised_ap_objects": NORM_FRACTION * self.num_images,
                "similar_classes": [list(s) for s in self.groups.similar],
            },
            "false_positives": {
                "classes": [b.to_json() for b in self.per_class],
                "groups": [{**b.to_json(), "classes": [self.classes[k - 1] for k in labels]}
                           for b, (_, labels) in zip(self.summary, self.groups.groups)],
            },
            "sensitivity": {"classes": [s.to_json() for s in self.sensitivity], "summary": self.spreads},
            "confusion_matrix": {"labels": [*self.classes, "background"], "rows": "true class",
                                 "columns": "predicted class", "counts": self.confusion.tolist()},
            "tide": self.tide.to_json(),
            "worst_images": [w.to_json() for w in self.worst],
        }


def _sensitivity(
    classes: list[str], detections: DetectionTable, ground_truth: FlatGroundTruth, types: DetectionTypes, num_images: int
) -> list[ClassSensitivity]:
    """Every class's size / aspect sensitivity from the IoU 0.5 matching of ``types``."""
    normaliser = NORM_FRACTION * num_images
    areas, aspects = ground_truth.areas, ground_truth.aspect_ratios
    results = []
    for k, name in enumerate(classes, start=1):
        objects = np.flatnonzero((ground_truth.labels == k) & ~ground_truth.ignore)
        position = np.full(len(ground_truth), -1, np.int64)
        position[objects] = np.arange(objects.size)
        rows = class_order(detections, k)
        taken = np.where(types.strong_gt[rows] >= 0, position[np.maximum(types.strong_gt[rows], 0)], -1) if len(ground_truth) else np.full(rows.size, -1)
        results.append(class_sensitivity(name, types.strong[rows], taken, areas[objects], aspects[objects], normaliser))
    return results


def analyse(dataset: DetectionDataset, detections: list[dict], settings: AnalysisSettings = AnalysisSettings()) -> Analysis:
    """Run every analysis on ``detections`` (COCO results dicts, as ``ssd eval`` reads them).

    Raises:
        UserError: a detection does not fit the dataset, a bad ``--similar`` file or setting.
    """
    if not 0.0 <= settings.conf_threshold <= 1.0:
        raise UserError(f"--conf-threshold {settings.conf_threshold:g}: give a score between 0 and 1")
    if settings.worst < 0:
        raise UserError(f"--worst {settings.worst}: give 0 or more images")
    table = parse_detections(detections, dataset)
    ground_truth = flatten_ground_truth(dataset.records)
    pairs = box_pairs(table, ground_truth)
    rank = ranks_in_image(table)
    groups = class_groups(dataset.classes, settings.similar_file)
    types = classify_detections(table, ground_truth, pairs, rank, groups.similar_matrix(dataset.classes))
    per_class, summary = false_positive_analysis(table, ground_truth, types, dataset.classes, groups)
    sensitivity = _sensitivity(dataset.classes, table, ground_truth, types, len(dataset.records))
    return Analysis(
        classes=list(dataset.classes),
        groups=groups,
        per_class=per_class,
        summary=summary,
        sensitivity=sensitivity,
        spreads={"size": average_spread(sensitivity, "size"), "aspect ratio": average_spread(sensitivity, "aspect")},
        confusion=confusion_matrix(table, ground_truth, pairs, rank, dataset.num_classes, settings.conf_threshold),
        tide=tide_errors(table, ground_truth, pairs, rank, dataset.num_classes),
        worst=find_worst_images(dataset.records, table, ground_truth, types, settings.conf_threshold, settings.worst),
        settings=settings,
        num_images=len(dataset.records),
        num_detections=len(table),
        table=table,
        types=types,
    )


def prepare_directory(directory: Path) -> None:
    """Create ``directory``, or accept it when empty or an earlier analysis (its own files are
    replaced); refuse a folder holding anything else, so nothing of the user's is overwritten.

    Raises:
        UserError: not a folder, or a folder with other files, or not writable.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--analysis {directory}: is a file; give a folder for the analysis")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / "analysis.json").is_file():
        raise UserError(f"--analysis {directory}: the folder is not empty and holds no earlier analysis; give a new or empty folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--analysis {directory}: cannot create the folder ({exc.strerror})") from None
    stale = [*directory.glob("fp_trend_classes_*.png"), *(directory / "worst").glob("[0-9][0-9]*_*.jpg")]
    for path in stale:
        path.unlink()


def write_analysis(result: Analysis, dataset: DetectionDataset, directory: Path) -> list[Path]:
    """Write the figures, CSVs, worst images and ``analysis.json`` into ``directory`` (JSON
    last, so a folder with ``analysis.json`` is complete). Returns the files written."""
    directory = Path(directory)
    prepare_directory(directory)
    written = [
        save_png(figures.false_positive_figure(result.summary), directory / "false_positives.png"),
        save_png(figures.fp_types_bar_figure(result.summary + result.per_class, len(result.summary)), directory / "fp_types.png"),
    ]
    for page, figure in enumerate(figures.class_trend_figures(result.per_class), start=1):
        written.append(save_png(figure, directory / f"fp_trend_classes_{page}.png"))
    written += [
        save_png(figures.sensitivity_figure(result.sensitivity), directory / "sensitivity.png"),
        save_png(figures.sensitivity_summary_figure(result.spreads), directory / "sensitivity_summary.png"),
        save_png(figures.confusion_figure(result.confusion, result.classes, result.settings.conf_threshold),
                 directory / "confusion_matrix.png"),
        save_png(figures.tide_figure(result.tide), directory / "tide.png"),
    ]
    write_confusion_csv(directory / "confusion_matrix.csv", result.confusion, result.classes)
    write_confusion_csv(directory / "confusion_matrix_normalized.csv", row_normalised(result.confusion), result.classes, "{:.6f}")
    written += [directory / "confusion_matrix.csv", directory / "confusion_matrix_normalized.csv"]
    written += write_worst_images(directory / "worst", result.worst, dataset, result.table, result.types)
    atomic_write_json(directory / "analysis.json", result.to_json())
    return [*written, directory / "analysis.json"]


def run_analysis(
    dataset: DetectionDataset, detections: list[dict], directory: Path, settings: AnalysisSettings = AnalysisSettings()
) -> Analysis:
    """:func:`analyse`, then :func:`write_analysis` into ``directory``; the result lists the
    files in ``written``."""
    prepare_directory(directory)  # refuse a bad folder before the work
    result = analyse(dataset, detections, settings)
    result.written.extend(write_analysis(result, dataset, directory))
    return result
