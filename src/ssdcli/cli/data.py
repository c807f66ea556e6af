"""`ssd data check / split / convert / synth`: look at a dataset before training on it, split it,
write it in another layout, or make a synthetic one."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from enum import Enum
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

HELP = "Check a dataset before training on it, split it, convert it, or make a synthetic one."
CHECK_HELP = "Read a dataset the way training would; report classes, box statistics and every problem."
CHECK_EPILOG = """\
[bold]Examples[/]

  ssd data check data/VOCdevkit --split 07+12     # VOC2007 + VOC2012 trainval
  ssd data check data/raccoon                     # a folder of images + VOC .xml files
  ssd data check data/coco --split val2017 --json report.json
  ssd data check data/mine --classes classes.txt  # keep only the listed classes, in that order
  ssd data check data/coco8/data.yaml --split val # YOLO: a data.yaml, or images/ + labels/ + classes.txt
  ssd data check data/bccd/test.csv               # CSV, one row per box (columns found by name)
  ssd data check boxes.csv --csv-coords pixels --images photos/

--json FILE writes {"format", "classes", "num_images", "num_boxes", "boxes_per_class", "box_sizes", \
"problems"}; box_sizes holds the box-size table: {"width" | "height" | "area": {"min", "median", "max"}, \
"small", "medium", "large"} in original-image pixels (null without boxes).

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
SPLIT_HELP = "Write a reproducible, stratified train / val / test split as list files in the dataset's own layout."
SPLIT_EPILOG = """\
[bold]Examples[/]

  ssd data split data/mine --val 0.2                # VOC: ImageSets/Main/{train,val,trainval}.txt
  ssd data split data/yolo --val 0.2 --test 0.1     # YOLO: train/val/test.txt + data.yaml
  ssd data split data/raccoon/data/raccoon_labels.csv --val 0.2 --seed 1   # CSV: splits/*.txt
  ssd train --data data/mine --split train --val-data data/mine --val-split val --epochs 30

Images keep their place; stratified by each image's rarest class. An existing split is
replaced only with --force.
"""
CONVERT_HELP = "Write a dataset in another layout (VOC, COCO, YOLO), losslessly; images are linked (or copied)."
CONVERT_EPILOG = """\
[bold]Examples[/]

  ssd data convert data/VOCdevkit/VOC2007 --to yolo data/voc07-yolo --split trainval
  ssd data convert data/yolo/data.yaml --to coco data/mine-coco --split val
  ssd data convert data/bccd/test.csv --to voc data/bccd-voc --copy

Reading OUT gives the same images, classes (same order) and boxes (YOLO: within its
6 decimals). Existing files in OUT are never overwritten.
"""
MAX_PROBLEMS_SHOWN = 50


class CsvCoordsChoice(str, Enum):
    """``--csv-coords``: VOC-style 1-based inclusive corners, or continuous pixels."""

    voc = "voc"
    pixels = "pixels"


class TargetFormat(str, Enum):
    """``ssd data convert --to``."""

    voc = "voc"
    coco = "coco"
    yolo = "yolo"


CsvCoordsOption = Annotated[
    CsvCoordsChoice, typer.Option(help="CSV corners: voc = 1-based inclusive pixels (as in VOC XML), pixels = continuous.")
]
ImagesOption = Annotated[
    Optional[Path], typer.Option("--images", help="CSV: the folder holding the images (default: found beside the CSV).")
]

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
    data: Annotated[Path, typer.Argument(help="Dataset folder (VOCdevkit, VOC folder, images + xml, COCO, YOLO) or a COCO json, YOLO yaml or CSV file.")],
    split: Annotated[
        Optional[str], typer.Option(help="VOC ImageSets name (trainval, test, 07+12), COCO json (val2017), YOLO yaml key (train, val), or a list written by `ssd data split`.")
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
    csv_coords: CsvCoordsOption = CsvCoordsChoice.voc,
    images: ImagesOption = None,
) -> None:
    from ssdcli.data.check import summarize
    from ssdcli.data.reader import load_classes_file, load_dataset

    if json_file is not None and str(json_file) != "-":
        check_file_target(json_file, "--json")
    class_list = load_classes_file(classes) if classes is not None else None
    with progress_bar(f"reading {escape(str(data))}") as progress:
        dataset = load_dataset(data, split=split, classes=class_list, progress=progress, verify_pixels=decode,
                               csv_coords=csv_coords.value, image_dir=images)
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
        f"({summary.images_without_boxes} without boxes: negatives, background only), {plural(summary.num_boxes, 'box')} "
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

    with progress_bar(f"writing {escape(str(output))}") as progress:
        summary = make_synthetic_dataset(output, num_images=images, seed=seed, overwrite=force, progress=progress)
    per_class = ", ".join(f"{name} {count}" for name, count in summary.boxes_per_class.items())
    out.print(
        f"wrote {summary.num_images} images to {escape(str(summary.root))} ({summary.num_train} train / {summary.num_val} val), "
        f"{sum(summary.boxes_per_class.values())} boxes: {escape(per_class)}",
        highlight=False,
    )


def _split_table(result) -> Table:
    from ssdcli.data.split import SPLIT_NAMES

    shown = [name for name in SPLIT_NAMES if result.num_images[name] or name != "test"]
    table = Table(title=f"Split ({result.format.upper()})")
    table.add_column("class")
    for name in shown:
        table.add_column(name, justify="right")
    table.add_row("[bold]images[/]", *(str(result.num_images[name]) for name in shown))
    table.add_section()
    for index, cls in enumerate(result.classes):
        table.add_row(escape(cls), *(str(result.boxes_per_class[name][index]) for name in shown))
    return table


@data_app.command("split", help=SPLIT_HELP, epilog=SPLIT_EPILOG)
@error_boundary
def split(
    data: Annotated[Path, typer.Argument(help="Dataset folder, YOLO yaml or CSV file (as for `ssd data check`).")],
    val: Annotated[float, typer.Option(help="Fraction of the images for validation.")] = 0.2,
    test: Annotated[float, typer.Option(help="Fraction of the images for test (0: no test split).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Shuffle seed; the same seed and data give the same split.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing split.")] = False,
    csv_coords: CsvCoordsOption = CsvCoordsChoice.voc,
    images: ImagesOption = None,
) -> None:
    from ssdcli.data.split import write_split

    with progress_bar(f"reading {escape(str(data))}") as progress:
        result = write_split(data, val, test, seed, force, csv_coords=csv_coords.value, image_dir=images, progress=progress)
    out.print(_split_table(result))
    for path in result.files:
        err.print(f"wrote {escape(str(path))}", highlight=False)


@data_app.command("convert", help=CONVERT_HELP, epilog=CONVERT_EPILOG)
@error_boundary
def convert(
    source: Annotated[Path, typer.Argument(help="Dataset to read (as for `ssd data check`).")],
    output: Annotated[Path, typer.Argument(help="Folder to write to (new, or without the files to write).")],
    to: Annotated[TargetFormat, typer.Option("--to", help="Layout to write.")],
    split: Annotated[Optional[str], typer.Option(help="Split of SOURCE to read; OUT files it under the same name.")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the images instead of linking them.")] = False,
    classes: Annotated[
        Optional[Path], typer.Option(help="Class names, one per line: the class order; other classes are dropped.")
    ] = None,
    csv_coords: CsvCoordsOption = CsvCoordsChoice.voc,
    images: ImagesOption = None,
) -> None:
    from ssdcli.data.convert import convert_dataset
    from ssdcli.data.reader import load_classes_file, load_dataset

    class_list = load_classes_file(classes) if classes is not None else None
    with progress_bar(f"reading {escape(str(source))}") as progress:
        dataset = load_dataset(source, split=split, classes=class_list, progress=progress, verify_pixels=False,
                               csv_coords=csv_coords.value, image_dir=images)
    with progress_bar(f"writing {escape(str(output))}") as progress:
        result = convert_dataset(dataset, to.value, output, split=split, copy=copy, progress=progress)
    how = {"copy": "copied", "symlink": "symlinked", "hardlink": "hard-linked"}[result.link]
    out.print(f"wrote {result.num_images} images ({how}) and {result.num_boxes} boxes of {dataset.num_classes} "
              f"classes as {result.format.upper()} to {escape(str(result.output))}"
              f"{f' (split {escape(result.split)})' if result.split else ''}", highlight=False)
    for note in result.notes:
        err.print(f"note: {escape(note)}", highlight=False)
    if dataset.problems:
        err.print(f"{len(dataset.problems)} problems reading {escape(str(source))} (what was skipped is not in OUT); "
                  f"see `ssd data check {escape(str(source))}`", highlight=False)
