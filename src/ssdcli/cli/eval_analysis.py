"""`ssd eval --analysis DIR`: the options' check, the one library call and the short summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from rich.markup import escape
from rich.table import Table

from ssdcli.cli.common import err, out
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError
from ssdcli.evaluation.analysis import TYPES
from ssdcli.evaluation.analysis_report import Analysis, AnalysisSettings, prepare_directory, run_analysis
from ssdcli.evaluation.confusion import DEFAULT_CONF_THRESHOLD
from ssdcli.evaluation.tide import MAIN_ERRORS

DEFAULT_WORST = 20


def analysis_settings(
    directory: Optional[Path], similar: Optional[Path], conf_threshold: float, worst: int
) -> AnalysisSettings | None:
    """The settings of ``--analysis``, checked before any work (the folder too); ``None`` without
    ``--analysis``.

    Raises:
        UserError: an analysis option without ``--analysis``, a bad value or folder.
    """
    if directory is None:
        if similar is not None or worst != DEFAULT_WORST or conf_threshold != DEFAULT_CONF_THRESHOLD:
            raise UserError("--similar, --conf-threshold and --worst set up the error analysis; add --analysis DIR")
        return None
    if not 0.0 <= conf_threshold <= 1.0:
        raise UserError(f"--conf-threshold {conf_threshold:g}: give a score between 0 and 1")
    if worst < 0:
        raise UserError(f"--worst {worst}: give 0 or more images")
    if similar is not None and not similar.is_file():
        raise UserError(f"--similar {similar}: file not found; give a text file, one group of similar class names per line")
    prepare_directory(directory)
    return AnalysisSettings(conf_threshold=conf_threshold, similar_file=similar, worst=worst)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def summary_tables(result: Analysis) -> list[Table]:
    """Top-ranked false-positive types per summary group, TIDE's dAPs, the most frequent
    confusions and the size / aspect spread."""
    fp = Table(title="Top-ranked false positives (Hoiem et al.)")
    fp.add_column("group")
    fp.add_column("objects", justify="right")
    fp.add_column("false positives", justify="right")
    for name in TYPES[1:]:
        fp.add_column(name, justify="right")
    for group in result.summary:
        total = int(group.top_fp_counts.sum())
        fp.add_row(escape(group.name), str(group.num_objects), str(total), *(_percent(c, total) for c in group.top_fp_counts))

    tide = Table(title="TIDE: AP points gained by fixing each error type")
    tide.add_column("AP50", justify="right")
    for name in MAIN_ERRORS:
        tide.add_column(name, justify="right")
    ap = "-" if result.tide.ap is None else f"{100 * result.tide.ap:.2f}"
    tide.add_row(ap, *(f"{100 * result.tide.dap[name]:.2f}" for name in MAIN_ERRORS))

    other = Table(title="Confusions and sensitivity")
    other.add_column("what")
    other.add_column("value")
    counts = result.confusion[:-1, :-1].copy()
    np.fill_diagonal(counts, 0)
    for flat in np.argsort(-counts, axis=None, kind="stable")[:3]:
        t, p = np.unravel_index(flat, counts.shape)
        if counts[t, p]:
            other.add_row("confused", f"{escape(result.classes[t])} detected as {escape(result.classes[p])}: {counts[t, p]}")
    for name, spread in result.spreads.items():
        if spread:
            other.add_row(f"{name} (normalised AP)", f"worst bin {spread['lowest']:.3f}, best {spread['highest']:.3f}, "
                          f"all {spread['apn']:.3f}")
    other.add_row("worst images", f"{len(result.worst)} drawn")
    return [fp, tide, other]


def report_analysis(dataset: DetectionDataset, detections: list[dict], directory: Path, settings: AnalysisSettings) -> Analysis:
    """Run the analysis into ``directory`` and print the summary (stdout) and the files (stderr)."""
    result = run_analysis(dataset, detections, directory, settings)
    for table in summary_tables(result):
        out.print(table)
    err.print(f"wrote {len(result.written)} analysis files to {escape(str(directory))}", highlight=False)
    return result
