"""`ssd priors`: the default boxes, as a per-layer table, every box, a picture or their coverage of a
dataset; `--fit` searches boxes for a dataset and `--spec` shows a spec file like a preset."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssdcli.cli.common import err, error_boundary, out
from ssdcli.errors import UserError
from ssdcli.files import check_file_target
from ssdcli.config import PRESET_NAMES

if TYPE_CHECKING:
    from ssdcli.priors import PriorSpec

HELP = "Show the default boxes (priors) of an architecture: per layer, every box, a picture, coverage of a dataset; or fit them to one."
EPILOG = """\
[bold]Examples[/]

  ssd priors                                  # per-layer table, 8732 boxes for SSD300
  ssd priors --arch ssd512                    # 24564 boxes
  ssd priors --show --format csv > priors.csv # every box, cx,cy,w,h normalised, network order
  ssd priors --format json --output priors.json
  ssd priors --plot priors.png                # a sample of boxes per layer
  ssd priors --data data/raccoon              # how well the priors fit a dataset's boxes
  ssd priors --data data/bccd --format json   # the same as JSON
  ssd priors --arch ssdlite320 --data data/shapes --prior-scales 0.1 0.95   # smaller boxes fit better?
  ssd priors --arch ssdlite320 --fit data/bccd --split train --output bccd.json   # search boxes that fit
  ssd priors --fit data/bccd --budget 8 --output bccd8.json   # up to 8 boxes per location (larger heads)
  ssd priors --spec bccd.json --data data/bccd --split test   # show / check / --plot a spec file
"""


Arch = Enum("Arch", {name: name for name in PRESET_NAMES}, type=str)  # one choice per prior preset


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def layer_rows(spec: PriorSpec) -> list[dict]:
    """One row per source layer, as shown by the table and the JSON summary."""
    from ssdcli.priors import layer_box_sizes

    rows = []
    for index, layer in enumerate(spec.layers):
        rows.append(
            {
                "layer": index,
                "feature_map": layer.feature_map,
                "step": layer.step,
                "min_size": layer.min_size,
                "max_size": layer.max_size,
                "aspect_ratios": list(layer.aspect_ratios),
                "boxes_per_location": layer.boxes_per_location,
                "box_sizes_px": [[round(w, 2), round(h, 2)] for w, h in layer_box_sizes(layer)],
                "count": layer.num_priors,
            }
        )
    return rows


def _render_table(spec: PriorSpec) -> Table:
    table = Table(title=f"{escape(spec.name)}: default boxes for a {spec.image_size}x{spec.image_size} input")
    for column in ("layer", "feature map", "step", "min size", "max size", "aspect ratios", "boxes/loc", "count"):
        table.add_column(column, justify="right")
    for row in layer_rows(spec):
        table.add_row(
            str(row["layer"]),
            f"{row['feature_map']}x{row['feature_map']}",
            f"{row['step']:g}",
            f"{row['min_size']:g}",
            f"{row['max_size']:g}",
            ", ".join(f"{a:g}, 1/{a:g}" for a in row["aspect_ratios"]),
            str(row["boxes_per_location"]),
            str(row["count"]),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", str(spec.num_priors))
    return table


def _boxes_text(spec: PriorSpec) -> str:
    """Every default box as aligned text: index, source layer, cx, cy, w, h (normalised)."""
    from ssdcli.priors import generate_priors, prior_layer_index

    lines = [f"{'index':>6} {'layer':>5} {'cx':>9} {'cy':>9} {'w':>9} {'h':>9}"]
    layer_of = prior_layer_index(spec).tolist()
    for index, (cx, cy, w, h) in enumerate(generate_priors(spec).tolist()):
        lines.append(f"{index:>6} {layer_of[index]:>5} {cx:9.6f} {cy:9.6f} {w:9.6f} {h:9.6f}")
    return "\n".join(lines) + "\n"


def _boxes_csv(spec: PriorSpec) -> str:
    from ssdcli.priors import generate_priors

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cx", "cy", "w", "h"])
    for cx, cy, w, h in generate_priors(spec).tolist():
        writer.writerow([f"{cx:.6f}", f"{cy:.6f}", f"{w:.6f}", f"{h:.6f}"])
    return buffer.getvalue()


@error_boundary
def priors(
    arch: Annotated[Optional[Arch], typer.Option(help="Architecture (prior preset) whose default boxes to show or fit; default ssd300, or the --spec file's.")] = None,
    show: Annotated[bool, typer.Option("--show", help="List every default box, in network output order.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table, csv (cx,cy,w,h normalised) or json.")] = Format.table,
    output: Annotated[
        Optional[Path], typer.Option(help="Write the result to this file instead of stdout; with --fit, the fitted spec file (default priors.json, never overwritten).")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="Draw a sample of the default boxes of each layer into this PNG.")
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(help="Dataset whose ground-truth boxes to check against the priors (best IoU, share < 0.5)."),
    ] = None,
    classes: Annotated[
        Optional[Path], typer.Option(help="With --data or --fit: class names, one per line (as for ssd data check).")
    ] = None,
    split: Annotated[Optional[str], typer.Option(help="With --data or --fit: the dataset split (train, trainval, 07+12, train2017...).")] = None,
    prior_scales: Annotated[
        Optional[tuple[float, float]],
        typer.Option(metavar="MIN MAX", help="Spread the sizes linearly from MIN to MAX of the input (SSD paper eq. 4) in the arch's layout, as ssd train --prior-scales does. With --fit: the linear spread to compare with (default 0.1 0.95)."),
    ] = None,
    spec_file: Annotated[
        Optional[Path], typer.Option("--spec", help="Show (or check with --data, draw with --plot) the default boxes of this spec file instead of a preset.")
    ] = None,
    fit: Annotated[
        Optional[Path], typer.Option(help="Search default boxes that cover this dataset's boxes within the arch's layout; writes them to --output.")
    ] = None,
    budget: Annotated[str, typer.Option(help="With --fit: boxes per location per layer at most: 'same' (the preset's head) or a number N for every layer (a larger head).")] = "same",
    seed: Annotated[int, typer.Option(help="With --fit: seed of the random starts (and of --zoom-out); the same seed gives the same spec.")] = 0,
    zoom_out: Annotated[bool, typer.Option("--zoom-out", help="With --fit: also fit a zoomed-out copy of every box (training's zoom-out augmentation).")] = False,
) -> None:
    for target, flag in ((output, "--output"), (plot, "--plot")):
        if target is not None:
            check_file_target(target, flag)
    if fit is not None:
        if spec_file is not None:
            raise UserError("--fit searches from the arch's preset; give --arch, not --spec")
        if data is not None:
            raise UserError("--fit reports the coverage of its own data; check the spec file later with --spec FILE --data DIR")
        _run_fit(arch.value if arch else "ssd300", fit, split, classes, _parse_budget(budget), seed, zoom_out,
                 prior_scales, output, plot, fmt)
        return
    from ssdcli.prior_file import read_prior_spec_file
    from ssdcli.priors import preset_spec

    if spec_file is not None:
        if prior_scales is not None:
            raise UserError("--prior-scales respreads a preset; a --spec file has its own sizes")
        spec = read_prior_spec_file(spec_file, arch.value if arch else None).spec
    else:
        try:
            spec = preset_spec(arch.value if arch else "ssd300", prior_scales)
        except ValueError as exc:
            raise UserError(f"--prior-scales: {exc}") from None

    if data is not None:
        text = _coverage_text(spec, data, split, classes, fmt, to_terminal=output is None and out.is_terminal)
        _write(text, output)
        return
    if plot is not None:
        _plot(spec, plot)
    _write(_spec_text(spec, fmt, show, to_terminal=output is None and out.is_terminal), output)


def _spec_text(spec: PriorSpec, fmt: Format, show: bool, to_terminal: bool) -> str:
    """The default boxes of ``spec`` as a per-layer table, every box, csv or JSON."""
    from ssdcli.priors import generate_priors

    if fmt is Format.csv:
        return _boxes_csv(spec)  # csv is always one row per default box
    if fmt is Format.json:
        payload: dict = {
            "arch": spec.name,
            "image_size": spec.image_size,
            "total": spec.num_priors,
            "layers": layer_rows(spec),
        }
        if show:
            payload["priors_cxcywh_norm"] = [[round(v, 6) for v in box] for box in generate_priors(spec).tolist()]
        return json.dumps(payload, indent=2) + "\n"
    if show:
        return _boxes_text(spec)
    buffer = io.StringIO()
    Console(file=buffer, width=120, force_terminal=to_terminal).print(_render_table(spec))
    return buffer.getvalue()


def _plot(spec: PriorSpec, plot: Path) -> None:
    from ssdcli.render import draw_priors, write_image

    write_image(plot, draw_priors(spec))
    err.print(f"wrote {escape(str(plot))}", highlight=False)


def _parse_budget(text: str) -> int | None:
    if text == "same":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise UserError(f"--budget {text}: give 'same' or a number of boxes per location >= 2 (the two squares)")
    return value


def _run_fit(preset: str, data: Path, split: str | None, classes: Path | None, budget: int | None, seed: int,
             zoom_out: bool, prior_scales: tuple[float, float] | None, output: Path | None, plot: Path | None,
             fmt: Format) -> None:
    """``--fit``: read the data, search, show the comparison, write the spec file."""
    from ssdcli.cli.data import progress_bar
    from ssdcli.cli.priors_fit import fit_summary, render_fit
    from ssdcli.prior_file import save_prior_spec
    from ssdcli.prior_fit import DEFAULT_LINEAR_SCALES, FitSettings, fit_to_dataset
    from ssdcli.priors import preset_spec

    target = output if output is not None else Path("priors.json")
    if target.exists():
        raise UserError(f"{target}: exists; give another --output (spec files are never overwritten)")
    scales = prior_scales if prior_scales is not None else DEFAULT_LINEAR_SCALES
    try:
        preset_spec(preset, scales)
    except ValueError as exc:
        raise UserError(f"--prior-scales: {exc}") from None
    dataset = _read_dataset(data, split, classes)
    with progress_bar("fitting default boxes") as progress:
        comparison = fit_to_dataset(dataset, preset, FitSettings(budget=budget, seed=seed, zoom_out=zoom_out), scales,
                                    progress)
    _note_problems(dataset, data)
    notes = {"data": str(data), "split": split, "seed": seed, "zoom_out": zoom_out, **fit_summary(comparison)}
    save_prior_spec(target, comparison.fit.spec, preset, budget, notes)
    typer.echo(render_fit(comparison, fmt.value, str(data), to_terminal=out.is_terminal), nl=False)
    if plot is not None:
        _plot(comparison.fit.spec, plot)
    err.print(f"wrote {escape(str(target))} (use it with ssd priors --spec {escape(str(target))})", highlight=False)


def _read_dataset(data: Path, split: str | None, classes: Path | None):
    from ssdcli.cli.data import progress_bar
    from ssdcli.data.reader import load_classes_file, load_dataset

    class_list = load_classes_file(classes) if classes is not None else None
    with progress_bar(f"reading {escape(str(data))}") as progress:
        return load_dataset(data, split=split, classes=class_list, progress=progress, verify_pixels=False)


def _note_problems(dataset, data: Path) -> None:
    """After the work succeeded (a failure says what stopped it instead): how many problems the
    reader reported, and where to see them."""
    if dataset.problems:
        count = len(dataset.problems)
        err.print(f"note: {count} problem{'s' if count != 1 else ''} while reading {escape(str(data))}; "
                  f"see `ssd data check {escape(str(data))}`", highlight=False)


def _write(text: str, output: Path | None) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err.print(f"wrote {escape(str(output))}", highlight=False)
    else:
        typer.echo(text, nl=False)


def _coverage_text(spec: PriorSpec, data: Path, split: str | None, classes: Path | None, fmt: Format,
                   to_terminal: bool) -> str:
    """Prior coverage of the dataset at ``data`` as a table, csv or JSON."""
    from ssdcli.coverage import prior_coverage

    dataset = _read_dataset(data, split, classes)
    report = prior_coverage(dataset, spec)
    _note_problems(dataset, data)
    groups = [("all", report.overall)] + [("size", g) for g in report.by_size] + [("class", g) for g in report.by_class]
    if fmt is Format.json:
        return json.dumps({"data": str(data), **report.to_json()}, indent=2) + "\n"
    if fmt is Format.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "name", "num_boxes", "mean_best_iou", "median_best_iou", "share_below_0.5"])
        for kind, g in groups:
            writer.writerow([kind, g.name, g.num_boxes, *(("" if v is None else f"{v:.4f}")
                                                           for v in (g.mean_best_iou, g.median_best_iou, g.share_below))])
        return buffer.getvalue()
    table = Table(title=escape(f"{spec.name} priors vs {data}: best IoU of each ground-truth box with any default box"))
    for column in ("group", "boxes", "mean best IoU", "median best IoU", f"share < {report.threshold:g}"):
        table.add_column(column, justify="left" if column == "group" else "right")
    sections = ([("all boxes", report.overall)], [(f"{g.name} (COCO bins)", g) for g in report.by_size],
                [(g.name, g) for g in report.by_class])
    for section in sections:
        for label, g in section:
            cells = ["-" if v is None else f"{v:.3f}" for v in (g.mean_best_iou, g.median_best_iou)]
            share = "-" if g.share_below is None else f"{100 * g.share_below:.1f} %"
            table.add_row(escape(label), str(g.num_boxes), *cells, share)
        table.add_section()
    buffer = io.StringIO()
    Console(file=buffer, width=120, force_terminal=to_terminal).print(table)
    return buffer.getvalue()
