"""`ssd data check` and `ssd data synth`: look at a dataset before training on it, or make one."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ssdcli.cli.common import EXIT_INTERNAL, err, error_boundary, out
from ssdcli.data.check import DatasetSummary
from ssdcli.data.records import Problem
from ssdcli.files import check_file_target
from ssdcli.wording import plural

HELP = "Check a dataset before training on it, or make a synthetic one."
CHECK_HELP = "Read a dataset the way training would; report classes, box statistics and every problem."
CHECK_EPILOG = """\
[bold]Examples[/]

  ssd data check data/VOCdevkit --split 07+12     # VOC2007 + VOC2012 trainval
  ssd data check data/raccoon                     # a folder of images + VOC .xml files
  ssd data check data/coco --split val2017 --json report.json
  ssd data check data/mine --classes classes.txt  # keep only the listed classes, in that order

Exit status: 0 when training could proceed (warnings are fixed or skipped data),
1 when not (errors), 2 when the dataset cannot be read at all.
"""
SYNTH_HELP = "Write a small VOC-layout dataset of coloured shapes (the data behind `make demo`)."
SYNTH_EPILOG = """\
[bold]Examples[/]

  ssd data synth data/shapes                      # 240 images, seed 0
  ssd data synth data/shapes --images 1000 --seed 3 --force
  ssd data check data/shapes
"""
MAX_PROBLEMS_SHOWN = 50

data_app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode="rich")


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a rich bar on stderr (only on a terminal)."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(escape(description), total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _class_table(summary: DatasetSummary) -> Table:
    table = Table(title="Classes")
    table.add_column("index", justify="right")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    for index, name in enumerate(summary.classes, start=1):
        table.add_row(str(index), escape(name), str(summary.boxes_per_class[name]))
    return table


def _size_table(summary: DatasetSummary) -> Table:
    stats = summary.box_stats
    table = Table(title="Box sizes (original-image pixels)")
    table.add_column("")
    for column in ("min", "median", "max"):
        table.add_column(column, justify="right")
    for name, values in (("width", stats.width), ("height", stats.height), ("area", stats.area)):
        table.add_row(name, *(f"{v:,.0f}" for v in values))
    table.add_section()
    table.add_row("small (< 32²)", str(stats.small), "", "")
    table.add_row("medium", str(stats.medium), "", "")
    table.add_row("large (≥ 96²)", str(stats.large), "", "")
    return table


def _problem_table(problems: list[Problem]) -> Table:
    table = Table(title=f"Problems ({len(problems)})")
    table.add_column("severity")
    table.add_column("file", overflow="fold")
    table.add_column("message", overflow="fold")
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        colour = "red" if problem.severity == "error" else "yellow"
        table.add_row(f"[{colour}]{problem.severity}[/]", escape(problem.file), escape(problem.message))
    if len(problems) > MAX_PROBLEMS_SHOWN:
        table.add_row("", f"... {len(problems) - MAX_PROBLEMS_SHOWN} more", "all of them are in --json FILE")
    return table


@data_app.command("check", help=CHECK_HELP, epilog=CHECK_EPILOG)
@error_boundary
def check(
    data: Annotated[Path, typer.Argument(help="Dataset folder (VOCdevkit, VOC folder, images + xml, COCO) or COCO json.")],
    split: Annotated[
        Optional[str], typer.Option(help="VOC ImageSets name (trainval, test, 07+12, 2007-test) or COCO json (val2017).")
    ] = None,
    classes: Annotated[
        Optional[Path], typer.Option(help="Class names, one per line: the class order; other classes are dropped.")
    ] = None,
    json_file: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file ('-' for stdout).")
    ] = None,
    decode: Annotated[
        bool, typer.Option(help="Decode every image to find truncated files (--no-decode: headers only, faster).")
    ] = True,
) -> None:
    from ssdcli.data.check import summarize
    from ssdcli.data.reader import load_classes_file, load_dataset

    if json_file is not None and str(json_file) != "-":
        check_file_target(json_file, "--json")
    class_list = load_classes_file(classes) if classes is not None else None
    with progress_bar(f"reading {data}") as progress:
        dataset = load_dataset(data, split=split, classes=class_list, progress=progress, verify_pixels=decode)
    summary = summarize(dataset)

    if json_file is not None and str(json_file) == "-":
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _print_report(summary)
        if json_file is not None:
            json_file.parent.mkdir(parents=True, exist_ok=True)
            json_file.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
            err.print(f"wrote {escape(str(json_file))}", highlight=False)
    if not summary.trainable:
        raise typer.Exit(EXIT_INTERNAL)  # SPEC: 1 when training could not proceed


def _print_report(summary: DatasetSummary) -> None:
    out.print(
        f"[bold]{summary.format.upper()}[/] dataset {escape(str(summary.root))}: {plural(summary.num_images, 'image')} "
        f"({summary.images_without_boxes} without boxes), {plural(summary.num_boxes, 'box')} "
        f"({summary.num_difficult} difficult, {summary.num_crowd} crowd), {plural(len(summary.classes), 'class')}",
        highlight=False,
    )
    out.print(_class_table(summary))
    if summary.box_stats is not None:
        out.print(_size_table(summary))
    if summary.problems:
        out.print(_problem_table(summary.problems))
    if summary.trainable:
        out.print(f"[green]OK[/]: training can proceed ({plural(summary.num_warnings, 'warning')}).", highlight=False)
    else:
        out.print(f"[red]NOT READY[/]: {plural(summary.num_errors, 'error')} to fix before training"
                  f"{'' if summary.num_images else ' (no usable images)'}.", highlight=False)


@data_app.command("synth", help=SYNTH_HELP, epilog=SYNTH_EPILOG)
@error_boundary
def synth(
    output: Annotated[Path, typer.Argument(help="Folder to write the dataset to (new or empty).")],
    images: Annotated[int, typer.Option(min=2, help="Number of images (80 % train, 20 % val).")] = 240,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace Annotations/, JPEGImages/ and ImageSets/ in a non-empty OUT.")
    ] = False,
) -> None:
    from ssdcli.data.synth import make_synthetic_dataset

    with progress_bar(f"writing {output}") as progress:
        summary = make_synthetic_dataset(output, num_images=images, seed=seed, overwrite=force, progress=progress)
    per_class = ", ".join(f"{name} {count}" for name, count in summary.boxes_per_class.items())
    out.print(
        f"wrote {summary.num_images} images to {escape(str(summary.root))} ({summary.num_train} train / {summary.num_val} val), "
        f"{sum(summary.boxes_per_class.values())} boxes: {escape(per_class)}",
        highlight=False,
    )
