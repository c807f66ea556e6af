"""How ``ssd priors --fit`` shows its result: the preset, the linear spread and the fitted spec
side by side (coverage overall, per COCO size bin and per class; boxes per layer)."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssdcli.coverage import CoverageGroup, CoverageReport
from ssdcli.prior_fit import FitComparison
from ssdcli.priors import PriorSpec


def _columns(comparison: FitComparison) -> list[tuple[str, PriorSpec, CoverageReport]]:
    linear = comparison.linear_spec.name.split("@", 1)[-1]
    return [
        ("preset", comparison.preset_spec, comparison.preset),
        (f"linear {linear}", comparison.linear_spec, comparison.linear),
        ("fitted", comparison.fit.spec, comparison.fitted),
    ]


def _groups(report: CoverageReport) -> list[tuple[str, CoverageGroup]]:
    return ([("all", report.overall)] + [(f"{g.name} (COCO)", g) for g in report.by_size]
            + [(g.name, g) for g in report.by_class])


def _covered(group: CoverageGroup) -> float | None:
    return None if group.share_below is None else 1.0 - group.share_below


def fit_summary(comparison: FitComparison) -> dict:
    """Plain numbers for ``--format json`` and for the spec file's ``fit`` notes (no timings)."""
    specs = {}
    for label, spec, report in _columns(comparison):
        specs[label] = {
            "name": spec.name,
            "num_priors": spec.num_priors,
            "boxes_per_location": list(spec.boxes_per_location),
            "covered": _covered(report.overall),
            "mean_best_iou": report.overall.mean_best_iou,
            "coverage": report.to_json(),
        }
    fit = comparison.fit
    return {"objective": fit.objective, "boxes_searched": fit.num_boxes, "sweeps": fit.sweeps, "specs": specs}


def _coverage_table(comparison: FitComparison, title: str) -> Table:
    columns = _columns(comparison)
    table = Table(title=title)
    table.add_column("group")
    table.add_column("boxes", justify="right")
    for label, _, _ in columns:
        table.add_column(f"{escape(label)}\ncovered / mean IoU", justify="right")
    rows = zip(*[_groups(report) for _, _, report in columns])
    for index, row in enumerate(rows):
        name, first = row[0]
        cells = ["-" if g.mean_best_iou is None else f"{100 * _covered(g):.1f} % / {g.mean_best_iou:.3f}"
                 for _, g in row]
        table.add_row(escape(name), str(first.num_boxes), *cells)
        if index in (0, 3):
            table.add_section()
    return table


def _layer_table(comparison: FitComparison) -> Table:
    columns = _columns(comparison)
    table = Table(title="default boxes per layer (sizes in input pixels; ratios r add r and 1/r)")
    table.add_column("layer", justify="right")
    table.add_column("map", justify="right")
    for label, _, _ in columns:
        table.add_column(f"{escape(label)}\nmin-max, ratios, boxes/loc", justify="right")
    for index, layers in enumerate(zip(*[spec.layers for _, spec, _ in columns])):
        cells = [f"{layer.min_size:.4g}-{layer.max_size:.4g}, [{', '.join(f'{r:g}' for r in layer.aspect_ratios)}], "
                 f"{layer.boxes_per_location}" for layer in layers]
        table.add_row(str(index), f"{layers[0].feature_map}x{layers[0].feature_map}", *cells)
    table.add_section()
    table.add_row("total", "", *[str(spec.num_priors) for _, spec, _ in columns])
    return table


def render_fit(comparison: FitComparison, fmt: str, data_label: str, to_terminal: bool) -> str:
    """The comparison as a table (``table``), csv (one row per group) or JSON."""
    if fmt == "json":
        return json.dumps({"data": data_label, "seconds": round(comparison.seconds, 3), **fit_summary(comparison)},
                          indent=2) + "\n"
    columns = _columns(comparison)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "num_boxes", *[f"{label.split()[0]}_{k}" for label, _, _ in columns
                                                 for k in ("covered", "mean_best_iou")]])
        for row in zip(*[_groups(report) for _, _, report in columns]):
            values = [("" if v is None else f"{v:.4f}") for _, g in row for v in (_covered(g), g.mean_best_iou)]
            writer.writerow([row[0][0], row[0][1].num_boxes, *values])
        return buffer.getvalue()
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, force_terminal=to_terminal)
    title = (f"{columns[0][1].name} default boxes vs {data_label}: share of objects whose best default box "
             "has IoU >= 0.5, and their mean best IoU")
    console.print(_coverage_table(comparison, escape(title)))
    console.print(_layer_table(comparison))
    fit = comparison.fit
    console.print(f"searched {fit.num_boxes} boxes in {comparison.seconds:.1f} s ({fit.sweeps} sweeps of the best "
                  f"start); coverage only: whether a fitted spec trains better is measured by training it",
                  highlight=False)
    return buffer.getvalue()
