"""``ssd export --format openvino``: a checkpoint -> ONNX (checked) -> OpenVINO IR (checked) -> kept.

The IR is converted from the ONNX file :func:`ssdcli.export.export_checkpoint` writes (any batch
size), which has already been compared with PyTorch; then:

- fp32: the IR is run by OpenVINO at fp32 on the same sample images and compared with PyTorch
  within the ONNX tolerances (:mod:`ssdcli.export.parity`);
- bf16: the same fp32 comparison (the IR holds fp32 weights; bf16 is how it is compiled), and
  then the VOC07 mAP change of OpenVINO at bf16 against fp32 on annotated images;
- int8: NNCF quantizes it on the calibration images (:mod:`ssdcli.export.calibration`), and the
  mAP change against fp32 is checked: raw int8 outputs differ by design.

The check fails above ``max_map_drop`` points; nothing is written at the destination then.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ssdcli.errors import UserError
from ssdcli.export.accuracy import DEFAULT_MAX_MAP_DROP, AccuracyCheck, check_dataset, map_change
from ssdcli.export.calibration import CalibrationSet, calibration_set, quantize_openvino
from ssdcli.export.metadata import ExportMetadata
from ssdcli.export.openvino import PRECISIONS, OpenVinoDetector, convert_onnx, keep_ir, save_ir, set_metadata, temp_ir_for
from ssdcli.export.parity import OutputCheck, check_parity, sample_images
from ssdcli.export.pipeline import ExportOptions, export_checkpoint

Progress = Callable[[str], None]
EMBEDDED_NMS_REASON = (
    "bf16 and int8 OpenVINO models hold raw outputs (decoding and NMS then run in fp32, in ssdcli or your "
    "code): OpenVINO's bf16 mode crashes on the embedded NMS when an image has no detection"
)


@dataclass(frozen=True)
class OpenVinoOptions:
    """What ``ssd export --format openvino`` writes and checks (the CLI's flags, checked).

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8``; stored in the IR, the precision it runs at.
        postprocess: embed decoding and NMS (detections out) instead of raw outputs.
        calibration_data: int8: the images to calibrate on (a dataset or a folder of images);
            when annotated, also the mAP check's data unless ``check_data`` is given.
        check_data: bf16 / int8: annotated images for the mAP check.
        max_map_drop: bf16 / int8: the largest VOC07 mAP fall against fp32 that passes, in points.
        score_threshold, nms_iou, max_detections: embedded post-processing overrides, as
            :class:`~ssdcli.export.pipeline.ExportOptions`.
        check_accuracy: run the mAP check of bf16 / int8 (the export cache skips it).
    """

    precision: str = "fp32"
    postprocess: bool = True
    calibration_data: Path | None = None
    check_data: Path | None = None
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    score_threshold: float | None = None
    nms_iou: float | None = None
    max_detections: int | None = None
    check_accuracy: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: OpenVINO models are {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.postprocess:
            raise UserError(f"--precision {self.precision}: {EMBEDDED_NMS_REASON}; add --no-postprocess")
        if self.precision == "int8" and self.calibration_data is None:
            raise UserError("--precision int8 needs --calibration-data DIR: a few hundred images of your data")
        if self.precision != "fp32" and self.check_accuracy and self.check_data is None and self.calibration_data is None:
            raise UserError(
                f"--precision {self.precision} is checked by its VOC07 mAP change against fp32: give --val-data DIR "
                "(annotated images, any dataset `ssd data check` reads)"
            )
        if not self.max_map_drop >= 0:
            raise UserError(f"--max-map-drop {self.max_map_drop}: give a number of mAP points >= 0")
        self.onnx_options()  # the post-processing overrides' ranges

    def onnx_options(self) -> ExportOptions:
        """The ONNX export the IR is converted from (any batch size)."""
        return ExportOptions(
            format="onnx", postprocess=self.postprocess, dynamic_batch=True,
            score_threshold=self.score_threshold, nms_iou=self.nms_iou, max_detections=self.max_detections,
        )


@dataclass
class OpenVinoReport:
    """What :func:`export_openvino` wrote and how it compared.

    Attributes:
        checks: the ONNX file's parity rows, then (fp32 / bf16) the IR's at fp32 against PyTorch.
        accuracy: bf16 / int8: the mAP change against fp32; ``None`` when not checked.
        batch_sizes: the batch sizes the parity check ran.
    """

    path: Path
    metadata: ExportMetadata | None
    precision: str
    checks: list[OutputCheck] = field(default_factory=list)
    accuracy: AccuracyCheck | None = None
    batch_sizes: list[int] = field(default_factory=list)
    size_bytes: int = 0
    note: str = ""
    format: str = "openvino"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and (self.accuracy is None or self.accuracy.passed)


def export_openvino(
    weights: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: OpenVinoOptions,
    progress: Progress | None = None,
    calibration: CalibrationSet | None = None,
    from_onnx: Path | None = None,
) -> OpenVinoReport:
    """Export a checkpoint to an OpenVINO IR at ``output`` (``.xml``, and its ``.bin``) and check it.

    Args:
        calibration: int8: the calibration set of ``options.calibration_data`` when the caller
            has read it already.
        from_onnx: convert this ONNX export of ``weights`` (already checked against PyTorch, any
            batch size, ``options.postprocess`` alike) instead of exporting one.

    Returns:
        The report; when ``report.passed`` is False nothing was written at ``output``.

    Raises:
        CheckpointError: ``weights`` is not a usable checkpoint.
        UserError: openvino / nncf missing, unusable calibration or check data, ``output``
            not writable or not an ``.xml`` name.
    """
    step = progress if progress is not None else (lambda message: None)
    output = Path(output)
    if output.suffix.lower() != ".xml":
        raise UserError(f"--output {output}: an OpenVINO model is an .xml file (its weights go to the .bin beside it)")
    if options.precision == "int8" and calibration is None:
        calibration = calibration_set(options.calibration_data)
    with tempfile.TemporaryDirectory(prefix="ssdcli-openvino-") as tmp:
        if from_onnx is None:
            onnx_path = Path(tmp) / "model.onnx"
            onnx_report = export_checkpoint(weights, onnx_path, options.onnx_options(), progress)
            onnx_checks = [OutputCheck(f"onnx {c.name}", c.shape, c.max_diff, c.tolerance) for c in onnx_report.checks]
            report = OpenVinoReport(output, onnx_report.metadata, options.precision, onnx_checks,
                                    batch_sizes=onnx_report.batch_sizes, note=onnx_report.note)
            if not onnx_report.passed:
                return report
        else:
            from ssdcli.export.runtime import OnnxDetector

            onnx_path = from_onnx
            report = OpenVinoReport(output, OnnxDetector(onnx_path).metadata, options.precision, batch_sizes=[2, 1])
        step("converting to OpenVINO")
        model = convert_onnx(onnx_path)
        if calibration is not None:
            model = quantize_openvino(model, calibration, report.metadata.image_size, report.metadata.mean,
                                      report.metadata.std, step)
        set_metadata(model, report.metadata, options.precision)
        _write_checked(model, output, onnx_path, weights, options, calibration, report, step)
    return report


def _write_checked(model, output: Path, onnx_path: Path, weights, options: OpenVinoOptions,
                   calibration: CalibrationSet | None, report: OpenVinoReport, step: Progress) -> None:
    """Save ``model`` beside ``output``, run the checks into ``report``, keep it when they pass."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot create its folder ({exc.strerror})") from exc
    with temp_ir_for(output) as tmp_xml:
        try:
            save_ir(model, tmp_xml)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"--output {output}: cannot write there ({exc})") from exc
        if options.precision != "int8":
            step("checking the OpenVINO model at fp32 against PyTorch")
            report.checks += ir_parity(weights, OpenVinoDetector(tmp_xml, precision="fp32"), options.postprocess)
        if options.precision != "fp32" and options.check_accuracy and report.passed:
            data = options.check_data or (calibration.source if calibration is not None else options.calibration_data)
            step(f"checking the VOC07 mAP change of {options.precision} against fp32 on {data}")
            report.accuracy = accuracy_check(onnx_path, tmp_xml, options.precision, data, options.max_map_drop)
        report.size_bytes = tmp_xml.stat().st_size + tmp_xml.with_suffix(".bin").stat().st_size
        if report.passed:
            keep_ir(tmp_xml, output)


def ir_parity(weights, detector: OpenVinoDetector, postprocess: bool) -> list[OutputCheck]:
    """The IR's outputs (at its compiled precision) against the PyTorch graph of ``weights`` on
    the sample images, batch 2 and 1, within the ONNX tolerances (raw outputs: or
    ``parity.RELATIVE_TOLERANCE`` of their largest magnitude); rows named ``openvino <output>``."""

    from ssdcli.checkpoint import load_checkpoint
    from ssdcli.export.graphs import DetectionGraph, RawGraph
    from ssdcli.models import model_from_checkpoint, priors_for_model
    from ssdcli.models.winograd import direct_convolutions

    network = model_from_checkpoint(load_checkpoint(weights)).eval()
    priors = priors_for_model(network)
    graph: nn.Module = DetectionGraph(network, priors, detector.metadata.settings) if postprocess else RawGraph(network, priors)
    samples = sample_images(network.image_size, network.mean, network.std)
    with direct_convolutions():  # the exported graph has the direct convolutions (winograd.py)
        checks = check_parity(graph, detector.run, [samples, samples[:1]], postprocess)
    return [OutputCheck(f"openvino {c.name}", c.shape, c.max_diff, c.tolerance) for c in checks]


def accuracy_check(onnx_path: Path, xml_path: Path, precision: str, data, max_drop: float) -> AccuracyCheck:
    """VOC07 mAP of the IR at ``precision`` against the fp32 ONNX model (onnxruntime) on ``data``,
    both with the post-processing stored in the files."""
    from ssdcli.export.runtime import OnnxDetector

    reference = OnnxDetector(onnx_path)
    candidate = OpenVinoDetector(xml_path, precision=precision)
    dataset = check_dataset(data, reference.class_names)
    return map_change(reference, candidate, dataset, precision, max_drop, Path(data))
