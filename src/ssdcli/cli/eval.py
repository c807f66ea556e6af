"""`ssd eval`: score detections against a dataset with VOC07, VOC all-point and COCO AP."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ssdcli.cli.common import Device, err, error_boundary, out
from ssdcli.cli.runtime import (
    RUNTIME_EPILOG, BackendOption, CalibrationOption, PrecisionOption, print_note, runtime_options,
)
from ssdcli.data.records import DetectionDataset
from ssdcli.errors import UserError
from ssdcli.wording import plural
from ssdcli.files import atomic_write_json, check_file_target, check_folder_target
from ssdcli.evaluation import ClassResult, EvalResult, Metric, evaluate, load_detections, save_detections

HELP = "Score a model (--weights) or saved detections against a dataset: VOC07 11-point, VOC all-point and COCO AP."
EPILOG = """\
[bold]Examples[/]

  ssd eval --weights runs/train/best.pt --data VOCdevkit --split 2007-test
  ssd eval --weights runs/train/best.pt --data my_voc_folder --metric voc07 --batch-size 16
  ssd eval --detections dets.json --data VOCdevkit/VOC2007 --split test
  ssd eval --detections dets.json --data coco/annotations/instances_val2017.json --metric coco
  ssd eval --detections dets.json --data my_voc_folder --json metrics.json --plot-dir pr_curves
  ssd eval --weights runs/train/best.pt --data VOCdevkit --split 2007-test --analysis analysis
  ssd eval --detections dets.json --data my_data --analysis analysis --similar similar.txt
  ssd eval --weights runs/train/best.pt --data my_voc_folder --precision int8 --calibration-data my_voc_folder

[bold]Detections[/] are COCO results json: a list of {"image_id", "category_id", "bbox": \\[x, y, w, h],
"score"} in original-image pixels. For VOC-style data image_id is the image file stem (a string)
and category_id the 1-based class index (the list `ssd data check` prints); for COCO data both
are the json's own ids.

[bold]Classes[/]: with --weights the model's classes are scored, matched to the dataset's by name;
objects of other classes are left out (a warning says which), and a model that shares no class
with the data is an error.

[bold]Metrics[/]: voc07 = PASCAL VOC2007 11-point AP at IoU > 0.5, voc12 = all-point AP (area under
the interpolated precision-recall curve), both per the PASCAL devkit with "difficult" objects
ignored; coco = COCO box AP/AR (pycocotools COCOeval bbox numbers, computed by ssdcli's own
evaluator; difficult VOC boxes become crowd "ignore" regions).

[bold]--analysis DIR[/] explains the errors: what the top-ranked detections are (Cor, Loc = poor
localisation or duplicate, Sim / Oth = confusion with a similar / other class, BG = background;
the SSD paper's Fig. 3 after Hoiem et al.), normalised AP by object size and aspect ratio (Fig. 4),
a confusion matrix with a background row and column (PNG + CSV), TIDE's dAP per error type
(Cls, Loc, Both, Dupe, Bkg, Miss) and the worst images drawn, plus analysis.json with every number.
For the PASCAL VOC classes the similar classes and groups are the paper's (animals, vehicles,
furniture); for other data give --similar FILE, one group per line, names separated by commas,
optionally named ("pets: cat, dog"). The folder must be new, empty or an earlier analysis.
""" + RUNTIME_EPILOG


class MetricChoice(str, Enum):
    voc07 = "voc07"
    voc12 = "voc12"
    coco = "coco"
    all = "all"


def metrics_for(choice: MetricChoice) -> list[Metric]:
    """``all`` -> the three metrics; anything else -> that one."""
    return list(Metric) if choice is MetricChoice.all else [Metric(choice.value)]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def result_tables(result: EvalResult) -> list[Table]:
    """A per-class table (AP in %) and a summary table of the computed metrics."""
    has_voc07 = result.voc07_map is not None or any(c.voc07_ap is not None for c in result.classes)
    has_voc12 = result.voc12_map is not None or any(c.voc12_ap is not None for c in result.classes)
    has_coco = result.coco is not None
    per_class = Table(title="AP per class (%)")
    per_class.add_column("class")
    per_class.add_column("gt", justify="right")
    per_class.add_column("detections", justify="right")
    columns = [("VOC07", "voc07_ap", has_voc07), ("VOC12", "voc12_ap", has_voc12), ("COCO", "coco_ap", has_coco)]
    for title, _, shown in columns:
        if shown:
            per_class.add_column(title, justify="right")
    for c in result.classes:
        values = [_percent(getattr(c, key)) for _, key, shown in columns if shown]
        per_class.add_row(escape(c.name), str(c.num_gt), str(c.num_detections), *values)

    summary = Table(title=f"Summary: {plural(result.num_images, 'image')}, {plural(result.num_detections, 'detection')}")
    summary.add_column("metric")
    summary.add_column("value (%)", justify="right")
    if has_voc07:
        summary.add_row("VOC07 mAP (11-point, IoU 0.5)", _percent(result.voc07_map))
    if has_voc12:
        summary.add_row("VOC12 mAP (all-point, IoU 0.5)", _percent(result.voc12_map))
    if result.coco is not None:
        labels = {
            "ap": "COCO AP @[.5:.95]", "ap50": "COCO AP50", "ap75": "COCO AP75",
            "aps": "COCO AP small", "apm": "COCO AP medium", "apl": "COCO AP large",
            "ar1": "COCO AR @1", "ar10": "COCO AR @10", "ar100": "COCO AR @100",
        }
        for key, label in labels.items():
            summary.add_row(label, _percent(result.coco[key]))
    return [per_class, summary]


def _plot_title(c: ClassResult) -> str:
    aps = [f"{label} {_percent(ap)}%" for label, ap in (("VOC07", c.voc07_ap), ("VOC12", c.voc12_ap)) if ap is not None]
    return f"{c.name}: AP " + "  ".join(aps) if aps else f"{c.name}"


def _read_dataset(
    data: Path, split: Optional[str], classes_file: Optional[Path], need_pixels: bool = True
) -> DetectionDataset:
    """The ground truth, read as `ssd train` / `ssd data check` read it. Without ``need_pixels``
    (scoring saved detections) images are not opened where the annotation gives their size, so
    an unreadable image keeps its ground truth in the recall."""
    from ssdcli.data.reader import load_classes_file, load_dataset

    classes = load_classes_file(classes_file) if classes_file is not None else None
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(f"reading {escape(str(data))}", total=None)
        dataset = load_dataset(
            data, split=split, classes=classes, check_images=need_pixels,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if not dataset.records:
        raise UserError(f"{data}: no images with annotations found; run `ssd data check {data}` to see why")
    if dataset.problems:
        err.print(
            f"[yellow]warning:[/] {plural(len(dataset.problems), 'problem')} while reading {escape(str(data))} "
            f"(unreadable images and unusable boxes are left out); `ssd data check {escape(str(data))}` lists them.",
            highlight=False,
        )
    return dataset


def _coco_ground_truth(dataset: DetectionDataset) -> dict | None:
    """COCO data: the annotation json itself, so COCO numbers use its areas and crowd regions."""
    if dataset.annotation_file is None:
        return None
    from ssdcli.data.coco import load_coco_json

    return load_coco_json(dataset.annotation_file, evaluation=True)


def score_and_report(
    dataset: DetectionDataset,
    detections: list[dict],
    metric: MetricChoice,
    json_file: Optional[Path] = None,
    plot_dir: Optional[Path] = None,
    save_detections_file: Optional[Path] = None,
) -> EvalResult:
    """Score ``detections`` (already checked against ``dataset``), print the tables and write
    the requested files. The scoring half of `ssd eval`, whatever produced the detections."""
    wanted = metrics_for(metric)
    if plot_dir is not None and not {Metric.voc07, Metric.voc12} & set(wanted):
        raise UserError("--plot-dir draws the VOC precision-recall curves; use --metric voc07, voc12 or all")
    if save_detections_file is not None:
        save_detections(save_detections_file, detections)
        err.print(f"wrote {plural(len(detections), 'detection')} to {escape(str(save_detections_file))}", highlight=False)
    coco_gt = _coco_ground_truth(dataset) if Metric.coco in wanted else None
    result = evaluate(dataset, detections, wanted, coco_ground_truth=coco_gt)
    for table in result_tables(result):
        out.print(table)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_file, result.to_json())  # OSErrors (a full disk) reach the CLI boundary
        err.print(f"wrote {escape(str(json_file))}", highlight=False)
    if plot_dir is not None:
        from ssdcli.evaluation.plots import write_pr_curves

        curves = [(c.name, c.curve, _plot_title(c)) for c in result.classes if c.curve is not None]
        written = write_pr_curves(plot_dir, curves)
        err.print(f"wrote {plural(len(written), 'precision-recall curve')} to {escape(str(plot_dir))}", highlight=False)
    return result


def _predict(
    weights: Path, data: Path, split: Optional[str], classes_file: Optional[Path], batch_size: int, device: str,
    workers: int, runtime=None,
) -> tuple[DetectionDataset, list[dict]]:
    """Run a model over a dataset with its own post-processing (the evaluation settings, score
    0.01, NMS 0.45, 200 per image, for models trained here; an import's are its source's),
    scoring the model's classes (or the --classes file's, which it must know)."""
    from ssdcli.data.reader import load_classes_file
    from ssdcli.evaluation.classes import align_classes, check_listed_classes
    from ssdcli.inference import detect_dataset, load_detector

    from ssdcli.cli.import_model import resolve_weights_option

    detector = load_detector(resolve_weights_option(weights), device, runtime=runtime, notes=print_note)
    if classes_file is not None:  # before reading the data: a wrong name fails fast
        check_listed_classes(load_classes_file(classes_file), detector.class_names)
    dataset = _read_dataset(data, split, classes_file)
    detector, dataset, warnings = align_classes(detector, dataset, str(data), listed=classes_file is not None)
    for message in warnings:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        runs_on = f"{getattr(detector, 'backend', '')} {getattr(detector, 'precision', '')}".strip()
        task = bar.add_task(f"detecting with {escape(weights.name)} ({runs_on})", total=len(dataset.records))
        detections = detect_dataset(
            detector, dataset, batch_size=batch_size, workers=workers,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    return dataset, detections


@error_boundary
def eval_command(
    data: Annotated[
        Path, typer.Option("--data", help="The ground truth: a VOC folder / VOCdevkit or a COCO instances json.")
    ],
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="A checkpoint (best.pt / last.pt), exported model (.onnx, OpenVINO .xml) or pretrained name (torchvision:ssd300_vgg16) to run over --data and score.")
    ] = None,
    detections: Annotated[
        Optional[Path], typer.Option("--detections", help="Or: a COCO results json of detections to score (see below).")
    ] = None,
    split: Annotated[
        Optional[str], typer.Option(help="Which split of the dataset (e.g. test, val2017); the reader's default when omitted.")
    ] = None,
    classes: Annotated[
        Optional[Path], typer.Option("--classes", help="Class names, one per line, overriding the dataset's class list; with --weights, score only these of the model's classes.")
    ] = None,
    metric: Annotated[
        MetricChoice, typer.Option(help="voc07, voc12, coco, or all three from the same detections.")
    ] = MetricChoice.all,
    json_file: Annotated[
        Optional[Path], typer.Option("--json", help="Write the metrics as json (fractions in [0, 1]) to this file.")
    ] = None,
    plot_dir: Annotated[
        Optional[Path], typer.Option("--plot-dir", help="Write a precision-recall curve (PNG) per class into this folder.")
    ] = None,
    save_detections_file: Annotated[
        Optional[Path], typer.Option("--save-detections", help="Write the detections that were scored to this json file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="With --weights: images per forward pass.")] = 8,
    device: Annotated[Device, typer.Option(help="With --weights: auto = CUDA when available.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="With --weights: image-reading worker processes.")] = 2,
    analysis: Annotated[
        Optional[Path], typer.Option("--analysis", help="Write the error analysis (figures, analysis.json, worst images) into this folder.")
    ] = None,
    similar: Annotated[
        Optional[Path], typer.Option("--similar", help="With --analysis: groups of similar classes, one group of names per line.")
    ] = None,
    conf_threshold: Annotated[
        float, typer.Option("--conf-threshold", help="With --analysis: score threshold of the confusion matrix and worst images.")
    ] = 0.3,
    worst: Annotated[int, typer.Option("--worst", help="With --analysis: how many worst images to draw.")] = 20,
    backend: BackendOption = None,
    precision: PrecisionOption = None,
    calibration_data: CalibrationOption = None,
) -> None:
    if (weights is None) == (detections is None):
        raise UserError("give exactly one of --weights CKPT (run a model) or --detections FILE (score saved detections)")
    if batch_size < 1 or workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    for target, flag in ((json_file, "--json"), (save_detections_file, "--save-detections")):
        if target is not None:
            check_file_target(target, flag)
    if plot_dir is not None:
        check_folder_target(plot_dir, "--plot-dir")
    if detections is not None and detections.is_dir():
        raise UserError(f"--detections {detections}: is a folder; give the COCO results json (`ssd detect --coco-json`)")
    from ssdcli.cli.eval_analysis import analysis_settings, report_analysis

    settings = analysis_settings(analysis, similar, conf_threshold, worst)
    if weights is not None:
        runtime = runtime_options(backend, precision, calibration_data, batch_size)
        dataset, scored = _predict(weights, data, split, classes, batch_size, device.value, workers, runtime)
    else:
        dataset = _read_dataset(data, split, classes, need_pixels=False)
        scored = load_detections(detections, dataset)
    score_and_report(dataset, scored, metric, json_file, plot_dir, save_detections_file)
    if settings is not None:
        report_analysis(dataset, scored, analysis, settings)
