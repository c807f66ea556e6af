"""The whole export: a checkpoint -> a traced graph -> the file -> the parity check -> a report.

:func:`export_checkpoint` writes the file next to its destination under a temporary name, runs it
(onnxruntime on CPU / ``torch.jit.load``) on sample images, compares it with the PyTorch graph it
was traced from (:mod:`ssdcli.export.parity`), and only then renames it onto the destination.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ssdcli.errors import UserError
from ssdcli.export.formats import (
    DEFAULT_OPSET,
    FORMATS,
    MAX_OPSET,
    MIN_OPSET,
    load_torchscript,
    write_onnx,
    write_torchscript,
)
from ssdcli.export.graphs import DetectionGraph, RawGraph, trace_graph
from ssdcli.export.metadata import ExportMetadata, metadata_for
from ssdcli.export.parity import OutputCheck, check_parity, has_tied_scores, parity_batches, sample_images
from ssdcli.files import DISK_FULL_ERRNOS, check_file_target, replace_atomically, temp_file_for
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import model_from_checkpoint, priors_for_model
from ssdcli.models.winograd import direct_convolutions

# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """What to export (the CLI's flags, checked).

    Attributes:
        format: ``onnx`` or ``torchscript``.
        postprocess: embed decoding and NMS (detections out) instead of raw outputs.
        opset: ONNX opset, ``MIN_OPSET`` .. ``MAX_OPSET`` (ignored for TorchScript).
        dynamic_batch: ONNX input batch dimension is symbolic; otherwise fixed at 1. TorchScript
            graphs always take any batch size.
        score_threshold, nms_iou, max_detections: embedded post-processing; ``None`` takes the
            checkpoint's ``postprocess`` settings (0.01 / 0.45 / 200 when it has none).
    """

    format: str = "onnx"
    postprocess: bool = True
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = False
    score_threshold: float | None = None
    nms_iou: float | None = None
    max_detections: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format}: choose one of {', '.join(FORMATS)}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UserError(f"--opset {self.opset}: choose an ONNX opset from {MIN_OPSET} to {MAX_OPSET}")
        self.postprocess_settings({})  # the overrides' ranges, checked by PostprocessSettings itself

    def postprocess_settings(self, checkpoint: dict) -> PostprocessSettings:
        """The checkpoint's post-processing settings with the options' overrides applied."""
        stored = checkpoint.get("postprocess")
        base = PostprocessSettings(**stored) if isinstance(stored, dict) else PostprocessSettings()
        return PostprocessSettings(
            score_threshold=base.score_threshold if self.score_threshold is None else self.score_threshold,
            nms_iou=base.nms_iou if self.nms_iou is None else self.nms_iou,
            top_k_candidates=base.top_k_candidates,
            max_detections=base.max_detections if self.max_detections is None else self.max_detections,
            rule=base.rule,
        )


# --------------------------------------------------------------------------------------------
# The whole export
# --------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and how the file compared with PyTorch."""

    path: Path
    format: str
    metadata: ExportMetadata
    checks: list[OutputCheck]
    batch_sizes: list[int]
    size_bytes: int = 0
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def _onnx_runner(path: Path) -> Callable[[Tensor], tuple[Tensor, ...]]:
    from ssdcli.export.runtime import OnnxDetector

    return OnnxDetector(path).run


def _torchscript_runner(path: Path) -> Callable[[Tensor], tuple[Tensor, ...]]:
    module, _ = load_torchscript(path)

    def run(images: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return tuple(module(images))

    return run


def export_checkpoint(
    weights: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: ExportOptions,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a checkpoint to ``output`` and check the written file against PyTorch.

    The file is written next to ``output`` under a temporary name, checked, and renamed onto
    ``output`` only when every output is within tolerance; a failed check leaves no ``output``.

    Args:
        weights: an ssdcli checkpoint (``best.pt`` / ``last.pt``).
        output: the file to write (``.onnx`` / ``.pt``); its folder is created.
        options: what to export.
        progress: called with a short description before each stage.

    Returns:
        The report; ``report.passed`` is False when the exported file disagrees with PyTorch
        (nothing is then written at ``output``).

    Raises:
        CheckpointError: ``weights`` is not a usable checkpoint.
        UserError: ``output`` cannot be written.
    """
    from ssdcli.checkpoint import load_checkpoint

    def step(message: str) -> None:
        if progress is not None:
            progress(message)

    output = Path(output)
    check_file_target(output, "--output")
    checkpoint = load_checkpoint(weights)
    network = model_from_checkpoint(checkpoint, source=weights).eval()
    settings = options.postprocess_settings(checkpoint)
    metadata = metadata_for(checkpoint, options.postprocess, settings)
    priors = priors_for_model(network)
    ignored = tuple(checkpoint.get("ignored_labels", ()))
    graph: nn.Module = (
        DetectionGraph(network, priors, settings, ignored) if options.postprocess else RawGraph(network, priors)
    )
    graph.eval()

    samples = sample_images(network.image_size, network.mean, network.std)
    trace_batch = samples if (options.format == "torchscript" or options.dynamic_batch) else samples[:1]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot create its folder ({exc.strerror})") from exc
    with temp_file_for(output) as tmp:
        step(f"tracing {metadata.arch} ({'with' if options.postprocess else 'without'} post-processing)")
        traced = trace_graph(graph, trace_batch)
        step(f"writing {options.format}")
        _write(traced, trace_batch, tmp, metadata, options, output)
        step("checking the exported file against PyTorch")
        runner = _onnx_runner(tmp) if options.format == "onnx" else _torchscript_runner(tmp)
        batches = parity_batches(samples, options.format, options.dynamic_batch)
        with direct_convolutions():  # the exported graph has the direct convolutions (winograd.py)
            checks = check_parity(graph, runner, batches, options.postprocess)
        report = ExportReport(
            path=output,
            format=options.format,
            metadata=metadata,
            checks=checks,
            batch_sizes=[int(b.shape[0]) for b in batches],
            size_bytes=tmp.stat().st_size,
        )
        if report.passed:
            replace_atomically(tmp, output)
        elif options.postprocess and has_tied_scores(network, samples, settings.top_k_candidates):
            report.note = TIED_SCORES_NOTE
        return report


TIED_SCORES_NOTE = (
    "the network gives many default boxes exactly the same score (typical of an untrained "
    "network), so top-k and NMS may keep different but equally scored boxes; check a trained "
    "checkpoint, or export with --no-postprocess"
)
""":attr:`ExportReport.note` when detections differ and the network has tied scores."""


def _write(
    traced: torch.jit.ScriptModule,
    sample: Tensor,
    path: Path,
    metadata: ExportMetadata,
    options: ExportOptions,
    output: Path,
) -> None:
    """Write ``traced`` at ``path`` in ``options.format``; an OS error names ``output``, the
    destination the user gave."""
    try:
        if options.format == "onnx":
            write_onnx(traced, sample, path, metadata, options.opset, options.dynamic_batch)
        else:
            write_torchscript(traced, path, metadata)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise OSError(exc.errno, exc.strerror, str(output)) from exc  # exit 1, "disk full"
        raise UserError(f"--output {output}: cannot write there ({exc.strerror or exc})") from exc


def default_output(weights: str | os.PathLike[str], fmt: str, postprocess: bool, precision: str = "fp32") -> Path:
    """``runs/train/best.pt`` -> ``runs/train/best.onnx`` (``best-raw.onnx`` without
    post-processing; ``best.torchscript.pt`` for TorchScript; ``best.xml`` for OpenVINO,
    ``best-int8.xml`` at another precision than fp32)."""
    weights = Path(weights)
    stem = weights.stem + ("" if postprocess else "-raw") + ("" if precision == "fp32" else f"-{precision}")
    suffix = {"onnx": ".onnx", "openvino": ".xml"}.get(fmt, ".torchscript.pt")
    return weights.with_name(stem + suffix)
