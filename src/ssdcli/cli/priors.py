"""`ssd priors`: the default boxes, as a per-layer table, every box, or a picture."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssdcli.cli.common import error_boundary, err, out
from ssdcli.errors import UserError
from ssdcli.files import check_file_target
from ssdcli.wording import plural
from ssdcli.priors import PRESETS, PriorSpec, generate_priors, layer_box_sizes, preset_spec, prior_layer_index

HELP = "Show the default boxes (priors) of an architecture: per layer, every box, or a picture."
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
"""


Arch = Enum("Arch", {name: name for name in PRESETS}, type=str)  # one choice per prior preset


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def layer_rows(spec: PriorSpec) -> list[dict]:
    """One row per source layer, as shown by the table and the JSON summary."""
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
    lines = [f"{'index':>6} {'layer':>5} {'cx':>9} {'cy':>9} {'w':>9} {'h':>9}"]
    layer_of = prior_layer_index(spec).tolist()
    for index, (cx, cy, w, h) in enumerate(generate_priors(spec).tolist()):
        lines.append(f"{index:>6} {layer_of[index]:>5} {cx:9.6f} {cy:9.6f} {w:9.6f} {h:9.6f}")
    return "\n".join(lines) + "\n"


def _boxes_csv(spec: PriorSpec) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cx", "cy", "w", "h"])
    for cx, cy, w, h in generate_priors(spec).tolist():
        writer.writerow([f"{cx:.6f}", f"{cy:.6f}", f"{w:.6f}", f"{h:.6f}"])
    return buffer.getvalue()


@error_boundary
def priors(
    arch: Annotated[Arch, typer.Option(help="Architecture whose default boxes to show.")] = Arch.ssd300,
    show: Annotated[bool, typer.Option("--show", help="List every default box, in network output order.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table, csv (cx,cy,w,h normalised) or json.")] = Format.table,
    output: Annotated[
        Optional[Path], typer.Option(help="Write the result to this file instead of stdout.")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="Draw a sample of the default boxes of each layer into this PNG.")
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(help="Dataset whose ground-truth boxes to check against the priors (best IoU, share < 0.5)."),
    ] = None,
    classes: Annotated[
        Optional[Path], typer.Option(help="With --data: class names, one per line (as for ssd data check).")
    ] = None,
    prior_scales: Annotated[
        Optional[tuple[float, float]],
        typer.Option(metavar="MIN MAX", help="Spread the sizes linearly from MIN to MAX of the input (SSD paper eq. 4) in the arch's layout, as ssd train --prior-scales does."),
    ] = None,
) -> None:
    for target, flag in ((output, "--output"), (plot, "--plot")):
        if target is not None:
            check_file_target(target, flag)
    try:
        spec = preset_spec(arch.value, prior_scales)
    except ValueError as exc:
        raise UserError(f"--prior-scales: {exc}") from None

    if data is not None:
        text = _coverage_text(spec, data, classes, fmt, to_terminal=output is None and out.is_terminal)
        _write(text, output)
        return

    if plot is not None:
        from ssdcli.render import draw_priors, write_image

        write_image(plot, draw_priors(spec))
        err.print(f"wrote {escape(str(plot))}", highlight=False)

    if fmt is Format.csv:
        text = _boxes_csv(spec)  # csv is always one row per default box
    elif fmt is Format.json:
        payload: dict = {
            "arch": spec.name,
            "image_size": spec.image_size,
            "total": spec.num_priors,
            "layers": layer_rows(spec),
        }
        if show:
            payload["priors_cxcywh_norm"] = [[round(v, 6) for v in box] for box in generate_priors(spec).tolist()]
        text = json.dumps(payload, indent=2) + "\n"
    elif show:
        text = _boxes_text(spec)
    else:
        buffer = io.StringIO()
        Console(file=buffer, width=120, force_terminal=output is None and out.is_terminal).print(_render_table(spec))
        text = buffer.getvalue()

    _write(text, output)


def _write(text: str, output: Optional[Path]) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err.print(f"wrote {escape(str(output))}", highlight=False)
    else:
        typer.echo(text, nl=False)


def _coverage_text(spec: PriorSpec, data: Path, classes: Optional[Path], fmt: Format, to_terminal: bool) -> str:
    """Prior coverage of the dataset at ``data`` as a table, csv or JSON."""
    from ssdcli.cli.data import progress_bar
    from ssdcli.coverage import prior_coverage
    from ssdcli.data.reader import load_classes_file, load_dataset

    class_list = load_classes_file(classes) if classes is not None else None
    with progress_bar(f"reading {data}") as progress:
        dataset = load_dataset(data, classes=class_list, progress=progress, verify_pixels=False)
    if dataset.problems:
        err.print(f"note: {plural(len(dataset.problems), 'problem')} while reading {escape(str(data))}; "
                  f"see `ssd data check {escape(str(data))}`", highlight=False)
    report = prior_coverage(dataset, spec)
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
    table = Table(title=f"{escape(spec.name)} priors vs {escape(str(data))}: best IoU of each ground-truth box with any default box")
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
