"""Export a trained SSD to ONNX or TorchScript, and prove the file computes what PyTorch does.

Two graphs (SPEC "ssd export"), both taking ``images`` float32 [N, 3, S, S] normalised as
:func:`ssdcli.data.transforms.to_model_input` makes them:

- raw (``--no-postprocess``): ``cls_logits`` [N, P, C + 1], ``box_deltas`` [N, P, 4] and the
  constant ``priors`` [P, 4] cxcywh normalised, in the network's row order.
- detections (``--postprocess``): the network followed by :func:`ssdcli.postprocess.postprocess_flat`
  itself (softmax, per-class top-k, decode, clip, NMS batched over classes and images, best
  ``max_detections`` per image) -> ``boxes`` [K, 4] xyxy normalised, ``scores`` [K], ``labels``
  [K] 1-based and ``batch_index`` [K], grouped by image, scores descending within an image.

Both formats are made by tracing. ONNX uses torch.onnx's TorchScript-based exporter
(``dynamo=False``): the torch.export-based default needs ``onnxscript``, which ssdcli does not
depend on, while the TorchScript path maps ``torchvision.ops.nms`` to ONNX ``NonMaxSuppression``
through the symbolic torchvision registers. Everything the model needs to be used (class names,
input size and normalisation, post-processing settings, box conventions) is stored in the file:
ONNX ``metadata_props`` / TorchScript ``_extra_files["ssdcli.json"]``.

After writing, :func:`export_checkpoint` runs the file (onnxruntime on CPU / ``torch.jit.load``)
on sample images and compares it with the PyTorch model; the file only reaches its final path
when every output is within tolerance.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ssdcli.errors import UserError
from ssdcli.files import replace_atomically, temp_file_for
from ssdcli.export_metadata import INPUT_NAME, ExportMetadata, metadata_for
from ssdcli.export_parity import (
    OutputCheck,
    check_parity,
    has_tied_scores,
    parity_batches,
    sample_images,
)
from ssdcli.models import SSD, model_from_checkpoint, priors_for_model
from ssdcli.models.winograd import direct_convolutions
from ssdcli.postprocess import PostprocessSettings, postprocess_flat

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
TORCHSCRIPT_METADATA_FILE = "ssdcli.json"
MIN_OPSET = 17
MAX_OPSET = 20  # the newest opset torch.onnx's TorchScript-based exporter writes
DEFAULT_OPSET = 17

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
            checkpoint's ``postprocess`` settings (0.01 / 0.45 / 200 when it has none); their
            ranges are checked by :class:`~ssdcli.postprocess.PostprocessSettings`.
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

    def postprocess_settings(self, checkpoint: dict) -> PostprocessSettings:
        """The checkpoint's post-processing settings with the options' overrides applied."""
        stored = checkpoint.get("postprocess")
        base = PostprocessSettings(**stored) if isinstance(stored, dict) else PostprocessSettings()
        return PostprocessSettings(
            score_threshold=base.score_threshold if self.score_threshold is None else self.score_threshold,
            nms_iou=base.nms_iou if self.nms_iou is None else self.nms_iou,
            top_k_candidates=base.top_k_candidates,
            max_detections=base.max_detections if self.max_detections is None else self.max_detections,
        )


# --------------------------------------------------------------------------------------------
# The graphs
# --------------------------------------------------------------------------------------------


class RawGraph(nn.Module):
    """The network with its priors as a third, constant output (``--no-postprocess``)."""

    def __init__(self, network: SSD, priors_cxcywh: Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``images`` [N, 3, S, S] -> cls_logits [N, P, C + 1], box_deltas [N, P, 4], priors [P, 4]."""
        cls_logits, box_deltas = self.network(images)
        return cls_logits, box_deltas, self.priors_cxcywh


class DetectionGraph(nn.Module):
    """The network followed by :func:`~ssdcli.postprocess.postprocess_flat` (``--postprocess``).

    The score threshold is a 0-dim buffer, not a Python float: a trace records only the branch it
    takes, and torchvision's ``batched_nms`` returns early when no box is left, so the graph is
    traced with the threshold at -1 (every candidate kept, the NMS path recorded) and the real
    threshold is then written into the buffer the traced graph reads.
    """

    def __init__(self, network: SSD, priors_cxcywh: Tensor, settings: PostprocessSettings) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone())
        self.register_buffer("score_threshold", torch.tensor(float(settings.score_threshold)))
        self.nms_iou = float(settings.nms_iou)
        self.top_k_candidates = int(settings.top_k_candidates)
        self.max_detections = int(settings.max_detections)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``images`` [N, 3, S, S] -> boxes [K, 4] xyxy normalised, scores [K], labels [K] (1-based),
        batch_index [K]."""
        cls_logits, box_deltas = self.network(images)
        flat = postprocess_flat(
            cls_logits,
            box_deltas,
            self.priors_cxcywh,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            top_k_candidates=self.top_k_candidates,
            max_detections=self.max_detections,
        )
        return flat.boxes_xyxy_norm, flat.scores, flat.labels, flat.batch_index


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the warnings torch prints on every trace/export that are expected here.

    - the TorchScript-based ONNX exporter and ``torch.jit`` are deprecated in torch 2.9+; they are
      still the paths that export ``torchvision.ops.nms`` (module docstring), and the files they
      write load with current onnxruntime and ``torch.jit.load``;
    - ``TracerWarning``: the branches they flag (``batched_nms``'s empty-input exit, sizes turned
      into Python ints for constant shapes) are handled by :class:`DetectionGraph` and checked by
      the parity run and the tests (empty and multi-image batches);
    - ``aten::index`` "negative indices": every index here comes from ``nonzero`` / ``topk`` / ``argsort``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore",
            message=r".*legacy TorchScript-based ONNX export",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=r"The feature will be removed",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=r".*torch\.jit\.\w+` is deprecated",
            category=FutureWarning,
        )
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator", category=UserWarning)
        # Exporting a traced module: there is no Python signature to read input names from; they
        # are given explicitly.
        warnings.filterwarnings("ignore", message=r"no signature found for", category=UserWarning)
        yield


def trace_graph(graph: nn.Module, sample: Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of a :class:`RawGraph` / :class:`DetectionGraph` on ``sample``
    [N, 3, S, S]; a detection graph is traced with every candidate kept (class docstring)."""
    graph.eval()
    threshold = getattr(graph, "score_threshold", None)
    saved = None if threshold is None else threshold.clone()
    with _quiet_export(), torch.no_grad():
        if threshold is not None:
            threshold.fill_(-1.0)
        try:
            traced = torch.jit.trace(graph, (sample,), check_trace=False)
        finally:
            if threshold is not None:
                threshold.copy_(saved)
    if threshold is not None:
        traced.score_threshold.copy_(saved)  # the traced module holds its own copy of buffers
    return traced


def write_onnx(
    traced: torch.jit.ScriptModule,
    sample: Tensor,
    path: Path,
    metadata: ExportMetadata,
    opset: int,
    dynamic_batch: bool,
) -> None:
    """Export a traced graph to ONNX at ``path``, add ``metadata`` and check the model.

    Raises:
        onnx.checker.ValidationError: the written graph is not valid ONNX.
    """
    import onnx

    names = list(metadata.outputs)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {INPUT_NAME: {0: "batch"}}
        if not metadata.postprocess:
            dynamic_axes.update({"cls_logits": {0: "batch"}, "box_deltas": {0: "batch"}})
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            traced,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=dynamic_axes,
        )
    model = onnx.load(str(path))
    model.producer_name = "ssdcli"
    model.producer_version = metadata.ssdcli_version
    model.doc_string = f"ssdcli {metadata.arch} export ({'detections' if metadata.postprocess else 'raw outputs'})"
    del model.metadata_props[:]
    for key, value in metadata.to_strings().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_torchscript(traced: torch.jit.ScriptModule, path: Path, metadata: ExportMetadata) -> None:
    """Save a traced graph with ``metadata`` as the extra file ``ssdcli.json``."""
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata.to_dict(), indent=2)}
    with _quiet_export():
        torch.jit.save(traced, str(path), _extra_files=extra)


def load_torchscript(
    path: str | os.PathLike[str],
) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """An exported TorchScript file and its metadata (on CPU).

    Raises:
        UserError: not a TorchScript file, or one ``ssd export`` did not write.
    """
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    try:
        with _quiet_export():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from exc
    if not extra[TORCHSCRIPT_METADATA_FILE]:
        raise UserError(f"{path}: a TorchScript file without ssdcli metadata; export it with `ssd export`")
    try:
        metadata = ExportMetadata.from_dict(json.loads(extra[TORCHSCRIPT_METADATA_FILE]))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    return module, metadata


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
    from ssdcli.onnx_model import OnnxDetector

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
    checkpoint = load_checkpoint(weights)
    network = model_from_checkpoint(checkpoint).eval()
    settings = options.postprocess_settings(checkpoint)
    metadata = metadata_for(checkpoint, options.postprocess, settings)
    priors = priors_for_model(network)
    graph: nn.Module = DetectionGraph(network, priors, settings) if options.postprocess else RawGraph(network, priors)
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
        try:
            if options.format == "onnx":
                write_onnx(
                    traced,
                    trace_batch,
                    tmp,
                    metadata,
                    options.opset,
                    options.dynamic_batch,
                )
            else:
                write_torchscript(traced, tmp, metadata)
        except OSError as exc:
            raise UserError(f"--output {output}: cannot write there ({exc.strerror or exc})") from exc
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
            report.note = (
                "the network gives many default boxes exactly the same score (typical of an untrained "
                "network), so top-k and NMS may keep different but equally scored boxes; check a trained "
                "checkpoint, or export with --no-postprocess"
            )
        return report


def default_output(weights: str | os.PathLike[str], fmt: str, postprocess: bool) -> Path:
    """``runs/train/best.pt`` -> ``runs/train/best.onnx`` (``best-raw.onnx`` without
    post-processing; ``best.torchscript.pt`` for TorchScript)."""
    weights = Path(weights)
    stem = weights.stem + ("" if postprocess else "-raw")
    return weights.with_name(f"{stem}.onnx" if fmt == "onnx" else f"{stem}.torchscript.pt")
