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
from rich.table import Table

from ssdcli.cli.common import error_boundary, err, out
from ssdcli.priors import PRESETS, PriorSpec, generate_priors, layer_box_sizes, prior_layer_index

HELP = "Show the default boxes (priors) of an architecture: per layer, every box, or a picture."
EPILOG = """\
[bold]Examples[/]

  ssd priors                                  # per-layer table, 8732 boxes for SSD300
  ssd priors --arch ssd512                    # 24564 boxes
  ssd priors --show --format csv > priors.csv # every box, cx,cy,w,h normalised, network order
  ssd priors --format json --output priors.json
  ssd priors --plot priors.png                # a sample of boxes per layer
"""


class Arch(str, Enum):
    ssd300 = "ssd300"
    ssd300_coco = "ssd300_coco"
    ssd512 = "ssd512"


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
    table = Table(title=f"{spec.name}: default boxes for a {spec.image_size}x{spec.image_size} input")
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
) -> None:
    spec = PRESETS[arch.value]()

    if plot is not None:
        from ssdcli.render import draw_priors, write_image

        write_image(plot, draw_priors(spec))
        err.print(f"wrote {plot}")

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

    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        typer.echo(text, nl=False)
