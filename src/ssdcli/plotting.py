"""Figures with matplotlib: one look for every chart ssdcli draws (precision-recall curves, the
priors picture, the error analysis of ``ssd eval --analysis``, training curves).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
display, no global backend switch, nothing kept alive between figures; PNGs are rendered by the
Agg canvas. :func:`styled` applies the shared style (:data:`STYLE`) for the duration of one
drawing function only, so importing ssdcli changes no matplotlib setting.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ssdcli.errors import UserError
from ssdcli.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

F = TypeVar("F", bound=Callable[..., Any])

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "lines.linewidth": 1.6,
    "text.parse_math": False,  # class names and paths are shown as written, "$" included
}
DPI = 100
# Hoiem et al.'s colours for Cor / Loc / Sim / Oth / BG (Cor white there; a light grey here).
TYPE_COLOURS = ("#eeeeee", "#4f81bd", "#c0504d", "#5ce660", "#8064a2")
RECALL_COLOUR = "#d62728"


def styled(draw: F) -> F:
    """Run a figure-building function inside ``matplotlib.rc_context(STYLE)``."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width_in: float, height_in: float, layout: str | None = "constrained") -> Figure:
    """A blank figure of ``width_in`` x ``height_in`` inches at :data:`DPI` (call inside
    :func:`styled`)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)


def empty_panel(ax: Axes, message: str) -> None:
    """An axes that says why it has nothing to show (no ground truth, no detections, ...)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG, atomically.

    Raises:
        UserError: the folder cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI))
    except OSError as exc:
        raise UserError(f"{path}: cannot write a figure there ({exc.strerror or exc}); choose a writable folder") from None
    return path


def to_bgr(figure: Figure) -> np.ndarray:
    """Render ``figure`` with Agg. Returns np.ndarray[H, W, 3] uint8 BGR (OpenCV's order)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4)
    return np.ascontiguousarray(rgba[..., 2::-1])  # (H, W, 3) BGR


# ---------------------------------------------------------------------------------------------
# training curves

LOSS_COLUMNS = (("train_loss", "train loss"), ("train_loc", "train localisation"), ("train_conf", "train confidence"),
                ("val_loss", "validation loss"))


def read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """The numeric columns of a run's ``metrics.csv``: ``{column: float64[epochs]}``, NaN where
    a cell is empty (not measured that epoch), rows sorted by epoch.

    Raises:
        UserError: the file is missing, unreadable or has no ``epoch`` column.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read the training metrics ({exc})") from None
    if not rows or "epoch" not in rows[0]:
        raise UserError(f"{path}: no training metrics (a metrics.csv with an epoch column and one row per epoch)")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    columns = {name: np.array([number(row.get(name)) for row in rows]) for name in rows[0]}
    order = np.argsort(columns["epoch"], kind="stable")
    return {name: values[order] for name, values in columns.items() if np.isfinite(values).any()}


def _plot_series(ax: Axes, epochs: np.ndarray, values: np.ndarray, label: str, **style: Any) -> bool:
    finite = np.isfinite(values)
    if not finite.any():
        return False
    ax.plot(epochs[finite], values[finite], marker="o" if finite.sum() < 30 else None, markersize=3, label=label, **style)
    return True


@styled
def draw_training_curves(metrics: dict[str, np.ndarray], title: str = "training") -> Figure:
    """Loss and its parts, validation loss, validation mAP and learning rate per epoch.

    Args:
        metrics: from :func:`read_metrics_csv`; absent or empty columns are left out (a panel
            with nothing to show says so).
    """
    figure = new_figure(11, 3.4)
    loss_ax, map_ax, lr_ax = figure.subplots(1, 3)
    epochs = metrics.get("epoch", np.zeros(0))
    drawn = [_plot_series(loss_ax, epochs, metrics[c], label) for c, label in LOSS_COLUMNS if c in metrics]
    if any(drawn):
        loss_ax.legend()
    else:
        empty_panel(loss_ax, "no loss recorded")
    loss_ax.set(title="loss", xlabel="epoch", ylabel="loss")
    map_columns = [c for c in metrics if c.startswith("val_") and c.endswith("map")]
    if not any([_plot_series(map_ax, epochs, 100 * metrics[c], c) for c in map_columns]):
        empty_panel(map_ax, "no validation run")
    else:
        map_ax.legend()
    map_ax.set(title="validation mAP", xlabel="epoch", ylabel="mAP (%)")
    if "lr" in metrics and _plot_series(lr_ax, epochs, metrics["lr"], "learning rate", color="#2ca02c"):
        if (metrics["lr"][np.isfinite(metrics["lr"])] > 0).all():
            lr_ax.set_yscale("log")
    else:
        empty_panel(lr_ax, "no learning rate recorded")
    lr_ax.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    figure.suptitle(title, fontweight="bold")
    return figure


def write_training_curves(metrics_csv: Path, output: Path | None = None) -> Path:
    """Draw ``metrics.csv`` (a run folder's) into ``curves.png`` beside it, or into ``output``.

    Returns:
        The PNG written.
    """
    metrics_csv = Path(metrics_csv)
    figure = draw_training_curves(read_metrics_csv(metrics_csv), title=f"training: {metrics_csv.parent.name}")
    return save_png(figure, output if output is not None else metrics_csv.parent / "curves.png")
