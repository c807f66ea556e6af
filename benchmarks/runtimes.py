"""The runtime rows: ``ssd detect`` end to end (decoded images in, detections in image pixels out)
on every backend x precision, against the external runtimes run as a deployment would run them,
all on the same weights; and the VOC07 mAP change of bf16 / int8 against fp32.

Ours is :func:`ssdcli.inference.load_detector` + ``to_model_input`` + ``Detector.predict``, the
path of ``ssd detect``: torch fp32 / bf16, onnxruntime fp32, OpenVINO fp32 / bf16 / int8 (exports
from the export cache, here ``runs/bench/exports``), plus ``default`` (what ``--backend auto`` at
fp32 picks on this machine) and ``fastest`` (the quickest of ours).

External is the runtime as a deployment would call it, with OpenCV resize + numpy normalisation in
front (as ``examples/onnx_inference.py``): onnxruntime fp32 on the model ``ssd export`` writes for
deployment (decoding and NMS inside, any batch size, min score 0.3); OpenVINO fp32 / bf16 / int8
on the raw-output IR of the export cache (the int8 one quantized by NNCF on the same calibration
images) followed by ssdcli's post-processing: bf16 / int8 IRs are raw (:mod:`ssdcli.export.ir`).

Each of our rows is reported against the fastest external runtime at its precision (``ratio``)
and against the fastest external runtime at any precision (``ratio_to_fastest``). bf16 rows need
native bf16 (AVX512-BF16 or AMX); elsewhere they read "n/a".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.timing import compare_many
from ssdcli.backends import RuntimeOptions
from ssdcli.data.transforms import to_model_input
from ssdcli.hardware import native_bf16
from ssdcli.inference import load_detector
from ssdcli.postprocess import PostprocessSettings

DETECT_MIN_SCORE = 0.3
OURS: tuple[tuple[str, str], ...] = (
    ("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"),
    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
)
CALIBRATION_IMAGES = 64
"""Calibration images of the bench's int8 models (``ssd``'s own default is 300; fewer keep the
bench inside its time budget)."""


@dataclass
class RuntimeRow:
    """One timed configuration; ``ours_ms`` is ``None`` where it cannot run here ("n/a")."""

    name: str
    ours_ms: float | None
    reference_ms: float | None
    fastest_external_ms: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.ours_ms is None or not self.reference_ms else self.ours_ms / self.reference_ms

    @property
    def ratio_to_fastest(self) -> float | None:
        return None if self.ours_ms is None or not self.fastest_external_ms else self.ours_ms / self.fastest_external_ms

    def to_json(self) -> dict:
        return {"name": self.name, "ours_ms": self.ours_ms, "reference_ms": self.reference_ms, "ratio": self.ratio,
                "fastest_external_ms": self.fastest_external_ms, "ratio_to_fastest": self.ratio_to_fastest,
                "note": self.note}


@dataclass
class MapRow:
    """VOC07 mAP of one backend x precision against torch fp32 on the same held-out images."""

    name: str
    precision: str
    fp32_map: float
    map: float | None
    images: int

    @property
    def change_points(self) -> float | None:
        return None if self.map is None else 100.0 * (self.map - self.fp32_map)

    def to_json(self) -> dict:
        return {"name": self.name, "map_fp32": self.fp32_map, "map": self.map, "change_points": self.change_points,
                "images": self.images}


def runnable(precision: str) -> bool:
    """bf16 rows only where bf16 is native; elsewhere they would time an emulation."""
    return precision != "bf16" or native_bf16()


def our_detectors(weights: Path, cache: Path, calibration: Path, progress) -> dict[str, object]:
    """``backend_precision`` -> the detector ``ssd detect --backend B --precision P`` runs."""
    settings = PostprocessSettings(score_threshold=DETECT_MIN_SCORE)
    detectors = {}
    for backend, precision in OURS:
        if runnable(precision):
            progress(f"{weights.stem}: {backend} {precision}")
            options = RuntimeOptions(backend, precision, calibration_data=calibration, cache_dir=cache)
            detectors[f"{backend}_{precision}"] = load_detector(weights, "cpu", settings, options, notes=progress)
    return detectors


def default_detector(weights: Path, cache: Path, batch: int, progress):
    """The detector ``ssd detect``'s default (``--backend auto``, fp32) runs here at ``batch``
    images per forward pass (exports and the decision cached in ``cache``)."""
    return load_detector(weights, "cpu", PostprocessSettings(score_threshold=DETECT_MIN_SCORE),
                         RuntimeOptions(cache_dir=cache, batch_size=batch), notes=progress)


def default_choice(weights: Path, cache: Path, batch: int, progress) -> str:
    """What :func:`default_detector` runs: ``backend_precision``."""
    detector = default_detector(weights, cache, batch, progress)
    return f"{detector.backend}_{detector.precision}"


def ssd300_checkpoint() -> Path:
    """The SSD300 of the other rows (seeded weights) as a checkpoint, for ``ssd detect``'s paths."""
    from benchmarks import workloads

    return saved_checkpoint(workloads.ssd300(), workloads.CACHE / "ssd300-seed0.pt")


def external_runners(weights: Path, folder: Path, detectors: dict, progress) -> dict[str, Callable]:
    """``runtime_precision`` -> a function of a list of uint8 HxWx3 RGB images running the runtime
    as a deployment would: OpenCV resize + numpy normalisation, then

    - onnxruntime fp32: the deployable ONNX (``ssd export`` with decoding and NMS inside, any batch
      size, min score 0.3, exported once into ``folder``), boxes scaled to pixels;
    - OpenVINO fp32 / bf16 / int8: the raw-output IR our OpenVINO detectors run (the same file),
      compiled at that precision, then :func:`ssdcli.postprocess.postprocess` (OpenVINO 2026.4's
      bf16 mode crashes on an embedded NMS that keeps nothing, so bf16 / int8 IRs are raw).
    """
    from ssdcli.export import ExportOptions, export_checkpoint
    from ssdcli.export.runtime import OnnxDetector

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    onnx_path = folder / f"{weights.stem}-{digest}-detections.onnx"
    if not onnx_path.is_file():
        progress(f"{weights.stem}: exporting the deployable ONNX")
        folder.mkdir(parents=True, exist_ok=True)
        report = export_checkpoint(weights, onnx_path, ExportOptions(dynamic_batch=True, score_threshold=DETECT_MIN_SCORE))
        assert report.passed, [c for c in report.checks if not c.passed]
    metadata = OnnxDetector(onnx_path).metadata
    runners = {"onnxruntime_fp32": _deployed(_onnxruntime_call(onnx_path), metadata)}
    for name, detector in detectors.items():
        if name.startswith("openvino"):
            runners[name] = _deployed_raw(_openvino_call(detector.path, detector.precision), detector)
    return runners


def _onnxruntime_call(path: Path) -> Callable:
    """The deployed session, with the one setting ours has (``force_spinning_stop``): without it its
    idle workers spin after each run and bill the next configuration of the round-robin (alone
    in its own process it measured the same either way)."""
    import onnxruntime as ort

    from ssdcli.export.runtime import session_options

    session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})


def _openvino_call(path: Path, precision: str) -> Callable:
    from ssdcli.export.openvino import shared_core

    hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
    compiled = shared_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    return lambda batch: [np.asarray(v) for v in compiled(batch).values()]


def _preprocess(images: list[np.ndarray], metadata) -> np.ndarray:
    """OpenCV resize + numpy normalisation -> float32 [B, 3, S, S] (examples/onnx_inference.py)."""
    size = metadata.image_size
    mean = np.asarray(metadata.mean, dtype=np.float32)
    std = np.asarray(metadata.std, dtype=np.float32)
    resized = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) for image in images])
    return np.ascontiguousarray(((resized.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2))


def _deployed(call: Callable, metadata) -> Callable:
    """A detections graph: pre-process, run ``call``, split and scale the detections."""

    def run(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        boxes, scores, labels, batch_index = call(_preprocess(images, metadata))
        out = []
        for i, image in enumerate(images):
            keep = batch_index == i
            scale = np.array([image.shape[1], image.shape[0]] * 2, dtype=np.float32)
            out.append((boxes[keep] * scale, scores[keep], labels[keep]))
        return out

    return run


def _deployed_raw(call: Callable, detector) -> Callable:
    """A raw-output graph: pre-process, run ``call``, then ssdcli's post-processing (fp32)."""
    from ssdcli.postprocess import postprocess

    def run(images: list[np.ndarray]):
        cls_logits, box_deltas, priors = (torch.from_numpy(a) for a in call(_preprocess(images, detector.metadata)))
        sizes = [(image.shape[1], image.shape[0]) for image in images]
        return postprocess(cls_logits, box_deltas, priors, image_sizes=sizes, variances=detector.metadata.variances,
                           **detector.settings.to_dict())

    return run


def time_configurations(detectors: dict, runners: dict, images_hwc: list[torch.Tensor], repeats: int,
                        warmup: int, min_seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of ours (``ssd detect``'s path) and of the external runners on ``images_hwc``,
    all timed round-robin."""
    sizes = [(int(image.shape[1]), int(image.shape[0])) for image in images_hwc]
    arrays = [image.numpy() for image in images_hwc]

    def ours(detector):
        return lambda: detector.predict(to_model_input(images_hwc, detector.image_size, detector.mean, detector.std), sizes)

    calls = {f"ours:{name}": ours(d) for name, d in detectors.items()}
    calls.update({f"external:{name}": (lambda r=runner: r(arrays)) for name, runner in runners.items()})
    times = compare_many(calls, repeats, torch.device("cpu"), warmup, min_seconds)
    ours_ms = {name.split(":", 1)[1]: ms for name, ms in times.items() if name.startswith("ours:")}
    external_ms = {name.split(":", 1)[1]: ms for name, ms in times.items() if name.startswith("external:")}
    return ours_ms, external_ms


def rows_for(prefix: str, ours_ms: dict, external_ms: dict, default: str) -> list[RuntimeRow]:
    """One row per configuration of ours (``n/a`` where it cannot run), then ``default`` and
    ``fastest``, then the external runtimes themselves."""
    fastest_any = min(external_ms.values())

    def best_external(precision: str) -> float | None:
        found = [ms for name, ms in external_ms.items() if name.endswith(precision)]
        return min(found) if found else None

    rows = [RuntimeRow(f"{prefix}_{b}_{p}", ours_ms.get(f"{b}_{p}"), best_external(p), fastest_any,
                       "" if runnable(p) else "n/a: needs AVX512-BF16 or AMX") for b, p in OURS]
    precision = default.rsplit("_", 1)[1]
    rows.append(RuntimeRow(f"{prefix}_default", ours_ms[default], best_external(precision), fastest_any, f"= {default}"))
    quickest = min(ours_ms, key=ours_ms.get)
    openvino_best = min(ms for name, ms in external_ms.items() if name.startswith("openvino"))
    rows.append(RuntimeRow(f"{prefix}_fastest", ours_ms[quickest], openvino_best, fastest_any, f"= {quickest}"))
    rows += [RuntimeRow(f"{prefix}_external_{name}", ms, None, fastest_any) for name, ms in external_ms.items()]
    return rows


def map_rows(weights: Path, dataset, cache: Path, calibration: Path) -> list[MapRow]:
    """VOC07 mAP of each lowered precision against torch fp32 on ``dataset`` (evaluation settings)."""
    from ssdcli.evaluation import evaluate
    from ssdcli.inference import detect_dataset

    def voc07(backend: str, precision: str) -> float:
        options = RuntimeOptions(backend, precision, calibration_data=calibration, cache_dir=cache)
        detections = detect_dataset(load_detector(weights, "cpu", runtime=options), dataset, workers=0)
        known = len(dataset.classes)
        detections = [d for d in detections if d["category_id"] <= known]
        return evaluate(dataset, detections, metrics=["voc07"]).voc07_map

    fp32 = voc07("torch", "fp32")
    rows = []
    for backend, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "bf16"), ("openvino", "bf16"),
                               ("openvino", "int8")):
        value = voc07(backend, precision) if runnable(precision) else None
        rows.append(MapRow(f"map_change_{weights.stem.split('-')[0]}_{backend}_{precision}", precision, fp32, value,
                           len(dataset.records)))
    return rows


def calibration_folder(images: list[Path], folder: Path) -> Path:
    """A folder of links to ``images`` (``--calibration-data`` takes a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        link = folder / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
    return folder


def saved_checkpoint(model, path: Path) -> Path:
    """``model`` (20 classes) as an ssdcli checkpoint at ``path``, written once."""
    from ssdcli.checkpoint import save_checkpoint
    from ssdcli.models import model_settings

    if not path.is_file():
        settings = model_settings(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {
            "model": model.state_dict(), "arch": model.arch, "num_classes": model.num_classes,
            "options": settings["options"], "class_names": [f"class{i}" for i in range(1, model.num_classes + 1)],
            "image_size": settings["image_size"], "mean": settings["mean"], "std": settings["std"],
            "priors": settings["prior_spec"], "postprocess": PostprocessSettings().to_dict(),
        })
    return path


@dataclass
class Timing:
    """How :func:`compare_many` runs: at least ``repeats`` rounds after ``warmup``, ``min_seconds`` in all."""

    repeats: int
    warmup: int
    min_seconds: float


def arch_rows(arch: str, weights: Path, calibration: Path, images_hwc: list[torch.Tensor], batches: tuple[int, ...],
              timing: Timing, cache: Path, progress) -> list[RuntimeRow]:
    """Every runtime row of one checkpoint at each batch size."""
    detectors = our_detectors(weights, cache, calibration, progress)
    runners = external_runners(weights, cache / "deployed", detectors, progress)
    rows = []
    for batch in batches:
        default = default_choice(weights, cache, batch, progress)
        progress(f"timing {arch} batch {batch}: {len(detectors)} of ours, {len(runners)} external")
        batch_images = (images_hwc * batch)[:batch]
        ours_ms, external_ms = time_configurations(detectors, runners, batch_images, timing.repeats, timing.warmup,
                                                   timing.min_seconds)
        rows += rows_for(f"detect_{arch}_b{batch}", ours_ms, external_ms, default)
    return rows


def runtime_suite(images_hwc: list[torch.Tensor], quick: bool, timing: Timing, wanted: Callable[[str], bool],
                  progress) -> tuple[list, list[str]]:
    """The runtime rows of SSD300 (seeded weights, as the other rows) and of the bench's trained
    SSDLite, and the mAP rows of the SSDLite on its held-out images; plus notes for the table."""
    from benchmarks import workloads
    from ssdcli.data.reader import load_dataset
    from ssdcli.hardware import describe_cpu

    cache = workloads.CACHE  # exports in runs/bench/exports, the auto decisions in runs/bench/choices
    batches = (1, 2) if quick else (1, 8)
    count = 8 if quick else CALIBRATION_IMAGES
    rows: list = []
    notes = [f"runtime rows: {describe_cpu()}; bf16 native: {'yes' if native_bf16() else 'no (bf16 rows n/a)'}"]
    if wanted("runtimes_ssd300"):
        weights = ssd300_checkpoint()
        dataset, _ = workloads.coco128_dataset()
        calibration = calibration_folder([r.image_path for r in dataset.records[:count]],
                                         workloads.CACHE / "calibration" / f"coco128-{count}")
        rows += arch_rows("ssd300", weights, calibration, images_hwc, batches, timing, cache, progress)
        notes.append(f"ssd300 runtime rows: seeded weights (20 classes), int8 calibrated on {count} coco128 photos")
    if wanted("runtimes_ssdlite320") or wanted("map_change"):
        setup = workloads.QUICK_TRAINING if quick else workloads.TrainingSetup()
        weights, synth = workloads.trained_checkpoint(setup, progress)
        train = load_dataset(synth, split="train")
        calibration = calibration_folder([r.image_path for r in train.records[:count]],
                                         workloads.CACHE / "calibration" / f"{synth.name}-{count}")
        if wanted("runtimes_ssdlite320"):
            rows += arch_rows("ssdlite320", weights, calibration, images_hwc, batches, timing, cache, progress)
        if wanted("map_change"):
            val = load_dataset(synth, split="val")
            rows += map_rows(weights, val, cache, calibration)
            notes.append(f"map_change rows: the bench SSDLite on {len(val.records)} held-out synth images, "
                         f"int8 calibrated on {count} of its training images")
    return rows, notes


def wide_console(console, width: int):
    """``console`` at least ``width`` columns wide: the row names are long, and a table squeezed to
    a pipe's 80 columns truncates them. A console already that wide is returned as it is (one
    that records keeps what is printed)."""
    from rich.console import Console

    if console.width >= width:
        return console
    return Console(file=console.file, width=width, force_terminal=console.is_terminal)


def render(rows: list, console) -> None:
    """The runtime and mAP rows as two rich tables, at least 150 columns wide (names are long)."""
    from rich.table import Table

    console = wide_console(console, 150)

    from benchmarks.cases import TARGETS

    timed = [r for r in rows if isinstance(r, RuntimeRow)]
    if timed:
        table = Table(title="ssd detect end to end per backend x precision vs the external runtimes (ms per batch)")
        for column in ("name", "runs", "ms", "best external, same precision", "ratio", "fastest external", "ratio",
                       "target", "met?"):
            table.add_column(column, justify="left" if column in ("name", "runs") else "right", no_wrap=column == "name")
        for row in timed:
            target = TARGETS.get(row.name)
            met = target.met(row.ratio) if target else None
            table.add_row(row.name, row.note, _ms(row.ours_ms), _ms(row.reference_ms),
                          _ratio(row.ratio), _ms(row.fastest_external_ms), _ratio(row.ratio_to_fastest),
                          f"<= {target.limit}" if target else "",
                          "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"))
        console.print(table)
    accuracy = [r for r in rows if isinstance(r, MapRow)]
    if accuracy:
        table = Table(title="VOC07 mAP change against torch fp32 (points)")
        for column in ("name", "fp32 mAP (%)", "mAP (%)", "change", "target", "met?"):
            table.add_column(column, justify="left" if column == "name" else "right", no_wrap=column == "name")
        for row in accuracy:
            limit = MAP_TARGETS.get(row.precision)
            met = None if limit is None or row.change_points is None else -row.change_points <= limit
            table.add_row(row.name, f"{100 * row.fp32_map:.2f}", "n/a" if row.map is None else f"{100 * row.map:.2f}",
                          "n/a" if row.change_points is None else f"{row.change_points:+.2f}",
                          f">= -{limit}" if limit is not None else "",
                          "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"))
        console.print(table)


MAP_TARGETS = {"bf16": 0.5, "int8": 1.0}
"""Largest VOC07 mAP fall against fp32, in points, of the issue-17 targets."""


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
