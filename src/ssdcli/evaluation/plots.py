"""Precision-recall curves as images, drawn with matplotlib in the shared look of
:mod:`ssdcli.plotting`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ssdcli.evaluation.voc import PrecisionRecall, precision_envelope
from ssdcli.plotting import empty_panel, new_figure, save_png, styled, to_bgr

RAW_COLOUR, ENVELOPE_COLOUR = "#4f81bd", "#d62728"  # blue raw curve, red envelope


@styled
def pr_curve_figure(curve: PrecisionRecall, title: str, size: tuple[int, int] = (560, 440)):
    """One class's precision (y) against recall (x): the raw curve and its monotone envelope
    (the curve VOC all-point AP integrates). ``size`` is ``(width, height)`` in pixels."""
    figure = new_figure(size[0] / 100, size[1] / 100)
    ax = figure.subplots()
    if curve.recall.size and curve.num_gt > 0:
        ax.plot(curve.recall, curve.precision, color=RAW_COLOUR, linewidth=1, label="precision")
        # The envelope as a step function: precision holds until recall moves on.
        envelope = precision_envelope(curve.precision)
        recall_steps = np.repeat(np.concatenate(([0.0], curve.recall)), 2)[1:-1]  # (2P,)
        ax.plot(recall_steps, np.repeat(envelope, 2), color=ENVELOPE_COLOUR, linewidth=2, label="interpolated (envelope)")
        ax.legend(loc="lower left")
    else:
        empty_panel(ax, "no ground truth" if curve.num_gt == 0 else "no detections")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.set_xticks(np.linspace(0, 1, 11))
    ax.set_yticks(np.linspace(0, 1, 11))
    return figure


def draw_pr_curve(curve: PrecisionRecall, title: str, size: tuple[int, int] = (560, 440)) -> np.ndarray:
    """:func:`pr_curve_figure` rendered. Returns np.ndarray[H, W, 3] uint8 BGR."""
    return to_bgr(pr_curve_figure(curve, title, size))


def plot_file_name(class_index: int, name: str) -> str:
    """``pr_<index>_<name>.png`` with the 1-based class index, the name made file-system safe."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"
    return f"pr_{class_index:02d}_{safe}.png"


def write_pr_curves(directory: Path, curves: list[tuple[str, PrecisionRecall, str]]) -> list[Path]:
    """Write one PNG per class into ``directory``; ``curves`` holds ``(name, curve, title)`` in
    class-index order. Returns the files written."""
    directory = Path(directory)
    return [
        save_png(pr_curve_figure(curve, title), directory / plot_file_name(index, name))
        for index, (name, curve, title) in enumerate(curves, start=1)
    ]
