"""The figures of ``ssd eval --analysis``, in the shared look of :mod:`ssdcli.plotting`: the SSD
paper's Fig. 3 (false-positive trend and pies) and Fig. 4 (size / aspect sensitivity), the
confusion matrix and TIDE's error bars. Every function returns a matplotlib ``Figure``; empty
inputs give a figure that says what is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ssdcli.evaluation.analysis import TICS, TYPES, Breakdown
from ssdcli.evaluation.sensitivity import ASPECT_BINS, SIZE_BINS, ClassSensitivity
from ssdcli.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS, TideResult
from ssdcli.plotting import RECALL_COLOUR, TYPE_COLOURS, empty_panel, new_figure, styled

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TIC_LABELS = ("1/8", "1/4", "1/2", "1", "2", "4", "8")
CLASSES_PER_PAGE = 20
BIN_COLOURS = ("#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c")


def trend_axes(ax: Axes, breakdown: Breakdown, legend: bool = True, compact: bool = False) -> None:
    """Stacked shares of Cor / Loc / Sim / Oth / BG against the number of detections (in
    multiples of the object count N), with recall at IoU 0.5 (solid) and 0.1 (dashed).
    ``compact``: N in the title instead of the axis labels (for grids of small panels)."""
    ax.set_title(f"{breakdown.name} (N = {breakdown.num_objects})" if compact else breakdown.name)
    if breakdown.num_objects == 0 or breakdown.num_detections == 0:
        message = "no ground truth" if breakdown.num_objects == 0 else "no detections"
        if compact:  # shared axes: keep the ticks the other panels show
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")
        else:
            empty_panel(ax, message)
        return
    x = np.arange(len(TICS))
    shares = np.nan_to_num(breakdown.trend_fractions) * 100  # (T, 5)
    reached = np.isfinite(breakdown.trend_fractions[:, 0])
    bottom = np.zeros(len(TICS))
    for k, name in enumerate(TYPES):
        ax.fill_between(x, bottom, bottom + shares[:, k], where=reached, color=TYPE_COLOURS[k], label=name,
                        edgecolor="#555555", linewidth=0.4)
        bottom = bottom + shares[:, k]
    ax.plot(x, breakdown.recall_strong * 100, color=RECALL_COLOUR, label="recall, IoU 0.5")
    ax.plot(x, breakdown.recall_weak * 100, color=RECALL_COLOUR, linestyle="--", label="recall, IoU 0.1")
    ax.set_xticks(x, TIC_LABELS)
    ax.set(xlim=(0, len(TICS) - 1), ylim=(0, 100))
    if not compact:
        ax.set(xlabel=f"total detections (x {breakdown.num_objects})", ylabel="percentage of each type")
    if legend:
        ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.85)


def pie_axes(ax: Axes, breakdown: Breakdown) -> None:
    """The types of the top-ranked false positives (Loc / Sim / Oth / BG) as a pie."""
    counts = breakdown.top_fp_counts
    total = int(counts.sum())
    ax.set_title(f"{breakdown.name}: top {total} false positives")
    if total == 0:
        empty_panel(ax, "no false positives" if breakdown.num_objects else "no ground truth")
        return
    shown = counts > 0
    labels = [f"{name}: {round(100 * c / total)}%" for name, c in zip(TYPES[1:], counts)]
    ax.pie(counts[shown], labels=[t for t, s in zip(labels, shown) if s], colors=[c for c, s in zip(TYPE_COLOURS[1:], shown) if s],
           startangle=90, counterclock=False, wedgeprops={"edgecolor": "white", "linewidth": 1}, textprops={"fontsize": 8})
    ax.set_aspect("equal")


@styled
def false_positive_figure(groups: list[Breakdown]) -> Figure:
    """The paper's Fig. 3: per group the trend, and the pie of its top-ranked false positives
    below it (beside it for a single group); at most 4 groups per row."""
    if len(groups) <= 1:
        figure = new_figure(8.4, 4.4)
        axes = figure.subplots(1, 2, squeeze=False, width_ratios=[1.2, 1])
        pairs = [(axes[0, 0], axes[0, 1])]
    else:
        columns = min(4, len(groups))
        rows = -(-len(groups) // columns)
        figure = new_figure(3.8 * columns, 6.8 * rows)
        grid = figure.subplots(2 * rows, columns, squeeze=False, height_ratios=[1.1, 0.9] * rows)
        pairs = [(grid[2 * (i // columns), i % columns], grid[2 * (i // columns) + 1, i % columns]) for i in range(rows * columns)]
    for index, (trend, pie) in enumerate(pairs):
        if index < len(groups):
            trend_axes(trend, groups[index], legend=False)
            pie_axes(pie, groups[index])
        else:
            trend.set_axis_off()
            pie.set_axis_off()
    handles = max((trend.get_legend_handles_labels() for trend, _ in pairs), key=lambda h: len(h[0]))
    if handles[0]:
        figure.legend(*handles, loc="outside lower center", ncol=7, fontsize=8)
    figure.suptitle("What the top-ranked detections are (Hoiem et al., SSD paper Fig. 3)", fontweight="bold")
    return figure


@styled
def class_trend_figures(classes: list[Breakdown]) -> list[Figure]:
    """The trend of every class, :data:`CLASSES_PER_PAGE` per figure (5 columns, shared axes:
    fewer labels to draw, and the panels compare at a glance)."""
    pages = []
    for start in range(0, max(len(classes), 1), CLASSES_PER_PAGE):
        chunk = classes[start : start + CLASSES_PER_PAGE]
        rows = max(1, -(-len(chunk) // 5))
        figure = new_figure(3.1 * 5, 0.9 + 2.5 * rows, layout=None)
        axes = figure.subplots(rows, 5, squeeze=False, sharex=True, sharey=True).ravel()
        for ax, breakdown in zip(axes, chunk):
            trend_axes(ax, breakdown, legend=False, compact=True)
        for ax in axes[len(chunk):]:
            ax.set_axis_off()
        if not chunk:
            empty_panel(axes[0], "no classes")
        axes[0].set(xlim=(0, len(TICS) - 1), ylim=(0, 100))
        axes[0].set_xticks(np.arange(len(TICS)), TIC_LABELS)
        handles = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0]))
        if handles[0]:
            figure.legend(*handles, loc="upper right", ncol=7, fontsize=8)
        figure.supxlabel("total detections (x N, the class's number of objects)")
        figure.supylabel("percentage of each type")
        figure.suptitle("Detection types by rank, per class", fontweight="bold", x=0.06, ha="left")
        figure.subplots_adjust(left=0.06, right=0.99, bottom=0.5 / figure.get_figheight() + 0.03,
                               top=1 - 0.55 / figure.get_figheight(), hspace=0.35, wspace=0.12)
        pages.append(figure)
    return pages


@styled
def fp_types_bar_figure(rows: list[Breakdown], groups: int = 0) -> Figure:
    """One horizontal bar per class or group: the shares of Loc / Sim / Oth / BG among its
    top-ranked false positives, the count at the end; the first ``groups`` rows (the summary
    groups) are ruled off from the classes."""
    figure = new_figure(8, 1.2 + 0.24 * max(len(rows), 1))
    ax = figure.subplots()
    totals = np.array([r.top_fp_counts.sum() for r in rows], np.float64)
    shares = np.array([r.top_fp_counts for r in rows], np.float64).reshape(-1, 4)
    shares = np.divide(shares * 100, totals[:, None], out=np.zeros_like(shares), where=totals[:, None] > 0)
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for k, name in enumerate(TYPES[1:]):
        ax.barh(y, shares[:, k], left=left, color=TYPE_COLOURS[k + 1], label=name, edgecolor="white", linewidth=0.5)
        left += shares[:, k]
    for yi, total in zip(y, totals):
        ax.text(101, yi, f"{int(total)}" if total else "none", va="center", fontsize=7, color="#444444")
    ax.set_yticks(y, [r.name for r in rows])
    ax.invert_yaxis()
    ax.set(xlim=(0, 112), xlabel="share of the top-ranked false positives (%)",
           title="Types of the top-ranked false positives (N per class = its objects; count at the right)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=4)
    if 0 < groups < len(rows):
        ax.axhline(groups - 0.5, color="#555555", linewidth=0.8)
    return figure


def _bins_axes(ax: Axes, results: list[ClassSensitivity], which: str, names: tuple[str, ...], title: str) -> None:
    width = 0.8 / len(names)
    x = np.arange(len(results))
    for b, name in enumerate(names):
        values = [getattr(r, which).apn[b] for r in results]
        ax.bar(x - 0.4 + (b + 0.5) * width, [np.nan if v is None else v for v in values], width, color=BIN_COLOURS[b], label=name)
    overall = [np.nan if r.apn is None else r.apn for r in results]
    ax.scatter(x, overall, marker="_", s=400, color="#d62728", zorder=3, label="all objects")
    ax.set_xticks(x, [r.name for r in results], rotation=45 if len(results) > 8 else 0, ha="right" if len(results) > 8 else "center")
    ax.set(ylim=(0, 1), ylabel="normalised AP", title=title, xlim=(-0.6, len(results) - 0.4))
    ax.legend(ncol=len(names) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(results) > 8 else -0.12))


@styled
def sensitivity_figure(results: list[ClassSensitivity]) -> Figure:
    """The paper's Fig. 4: normalised AP per size bin and per aspect-ratio bin, for every class
    with objects, and the class's AP over all its objects as a red mark."""
    shown = [r for r in results if r.num_objects > 0]
    figure = new_figure(max(8.0, 0.5 * len(shown) + 2), 8.4)
    size_ax, aspect_ax = figure.subplots(2, 1)
    if not shown:
        empty_panel(size_ax, "no ground truth")
        empty_panel(aspect_ax, "no ground truth")
        return figure
    _bins_axes(size_ax, shown, "size", SIZE_BINS, "object size (box area, XS..XL = 10/20/40/20/10 % of each class)")
    _bins_axes(aspect_ax, shown, "aspect", ASPECT_BINS, "aspect ratio (width / height, XT = extra tall .. XW = extra wide)")
    figure.suptitle("Sensitivity to object characteristics (Hoiem et al.; SSD paper Fig. 4)", fontweight="bold")
    return figure


@styled
def sensitivity_summary_figure(spreads: dict[str, dict | None]) -> Figure:
    """Hoiem's summary: per characteristic, the mean (over classes) of the worst and best bin's
    normalised AP joined by a line, and the mean overall normalised AP dashed."""
    figure = new_figure(4.6, 3.6)
    ax = figure.subplots()
    names = [name for name, value in spreads.items() if value]
    if not names:
        empty_panel(ax, "no ground truth")
        return figure
    for x, name in enumerate(names):
        value = spreads[name]
        ax.plot([x, x], [value["lowest"], value["highest"]], color="#4f81bd", linewidth=3, marker="o")
        ax.text(x + 0.08, value["highest"], f"{value['highest']:.3f}", va="center", fontsize=8)
        ax.text(x + 0.08, value["lowest"], f"{value['lowest']:.3f}", va="center", fontsize=8)
    mean_apn = float(np.mean([spreads[n]["apn"] for n in names]))
    ax.axhline(mean_apn, color="#555555", linestyle="--", linewidth=1, label=f"overall {mean_apn:.3f}")
    ax.set_xticks(range(len(names)), names)
    ax.set(xlim=(-0.5, len(names) - 0.3), ylim=(0, 1), ylabel="normalised AP",
           title="worst and best bin (mean over classes)")
    ax.legend(loc="upper right")
    return figure


@styled
def confusion_figure(counts: np.ndarray, classes: list[str], conf_threshold: float) -> Figure:
    """Counts and row-normalised shares side by side; rows true class, columns predicted,
    background last. Cells are written out up to 30 classes."""
    from ssdcli.evaluation.confusion import row_normalised

    names = [*classes, "background"]
    side = max(4.5, 0.32 * len(names) + 2)
    figure = new_figure(2 * side + 1, side + 1.2)
    for ax, matrix, title, fmt in zip(
        figure.subplots(1, 2), (counts, row_normalised(counts)), ("counts", "row-normalised (each true class sums to 1)"),
        ("{:d}", "{:.2f}"),
    ):
        image = ax.imshow(matrix if fmt == "{:.2f}" else np.log1p(matrix), cmap="Blues", vmin=0)
        ax.grid(False)
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        if len(names) <= 31:
            limit = image.get_array().max() * 0.6 if image.get_array().size else 0
            for (i, j), value in np.ndenumerate(matrix):
                if value:
                    shade = np.log1p(value) if fmt == "{:d}" else value
                    ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                            color="white" if shade > limit else "black")
    figure.suptitle(f"Confusion matrix at IoU 0.5, score >= {conf_threshold:g}", fontweight="bold")
    return figure


@styled
def tide_figure(tide: TideResult) -> Figure:
    """TIDE's dAP bars: the six main error types and the two special ones."""
    figure = new_figure(8.4, 3.4)
    main_ax, special_ax = figure.subplots(1, 2, width_ratios=[3, 1.4])
    if tide.ap is None:
        empty_panel(main_ax, "no ground truth and no detections")
        empty_panel(special_ax, "")
        return figure
    colours = ("#c0504d", "#4f81bd", "#9b59b6", "#f39c12", "#8064a2", "#7f8c8d")
    for ax, names, values, palette, title in (
        (main_ax, MAIN_ERRORS, tide.dap, colours, "main errors"),
        (special_ax, SPECIAL_ERRORS, tide.special, ("#2ca02c", "#17becf"), "special errors"),
    ):
        heights = [100 * values[n] for n in names]
        bars = ax.bar(range(len(names)), heights, color=palette)
        ax.bar_label(bars, [f"{h:.2f}" for h in heights], fontsize=7)
        ax.set_xticks(range(len(names)), names)
        ax.set(xlabel="error type", ylabel="dAP (AP points)", title=title, ylim=(0, max(1.0, max(heights) * 1.2)))
    figure.suptitle(f"TIDE errors (Bolya et al.): AP50 {100 * tide.ap:.2f}, and what fixing each error type would add",
                    fontweight="bold")
    return figure
