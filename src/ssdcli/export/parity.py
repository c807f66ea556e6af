"""Parity of an exported model with PyTorch: sample inputs, the comparison, the report.

``ssd export`` runs the written file (onnxruntime / ``torch.jit.load``) and the PyTorch graph it
was traced from on the same batches. Raw outputs must agree element-wise; detections are paired
by image, label and box (an exported NMS may list equal-score detections in another order) and
must agree in number, labels, boxes and scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ssdcli.export.metadata import RAW_OUTPUTS
from ssdcli.postprocess import FlatDetections

RAW_TOLERANCE = 1e-4
"""Max absolute difference allowed in ``cls_logits`` / ``box_deltas`` / ``priors`` (or
:data:`RELATIVE_TOLERANCE` of the output's largest magnitude, when that is more)."""
RELATIVE_TOLERANCE = 1e-6
"""A raw output may also differ by this share of its largest magnitude: an exported graph's
convolutions (onnxruntime's, OpenVINO's) sum in another order than PyTorch's oneDNN, and a trained
SSD's logits reach ~200, where one float32 step is 1.5e-5 (the absolute 1e-4 is then 7 steps).
Measured: an SSDLite's onnxruntime logits 1.07e-4 off on an AMD EPYC with AVX-512."""
BOX_TOLERANCE = 1e-3
"""Max absolute difference allowed in a detection's normalised box coordinates."""
SCORE_TOLERANCE = 1e-4
"""Max absolute difference allowed in a detection's score."""


@dataclass(frozen=True)
class OutputCheck:
    """One row of the parity table: an output (or aspect of the detections) and its worst error.

    Attributes:
        name: output name (``cls_logits``, ``boxes``, ``detections``).
        shape: the exported output's shape(s) over the runs, e.g. ``(2, 3234, 5)``.
        max_diff: largest absolute difference from PyTorch (for ``detections``: detections of
            either side with no counterpart of the same image and label within tolerance).
        tolerance: the largest ``max_diff`` that passes.
    """

    name: str
    shape: str
    max_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_diff <= self.tolerance)  # NaN fails


def sample_images(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Two deterministic model inputs, Tensor[2, 3, S, S] normalised: uniform noise (seed 0) and
    an image of the synthetic shapes dataset, so scores spread as on real inputs."""
    from ssdcli.data.synth import synth_image
    from ssdcli.data.transforms import to_model_input

    noise = np.random.default_rng(0).integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    shapes, _ = synth_image(seed=0, index=1)
    return to_model_input([noise, shapes], image_size, mean, std)


def compare_raw(expected: Sequence[Tensor], got: Sequence[Tensor]) -> list[OutputCheck]:
    """Max absolute difference per raw output (``RAW_OUTPUTS`` order), against :data:`RAW_TOLERANCE`
    or :data:`RELATIVE_TOLERANCE` of the expected output's largest magnitude, whichever is more; a
    shape mismatch is NaN."""
    checks = []
    for name, e, g in zip(RAW_OUTPUTS, expected, got):
        if e.shape != g.shape:
            diff = float("nan")
        else:
            diff = float((e.float() - g.float()).abs().max()) if e.numel() else 0.0
        scale = float(e.float().abs().max()) if e.numel() else 0.0
        checks.append(OutputCheck(name, str(tuple(g.shape)), diff, max(RAW_TOLERANCE, RELATIVE_TOLERANCE * scale)))
    return checks


def compare_detections(expected: FlatDetections, got: FlatDetections) -> list[OutputCheck]:
    """Detections of the exported graph against PyTorch's, order-free.

    Each detection is paired with the detection of the other side that has the same image and
    label and the closest box; the pair must agree within ``BOX_TOLERANCE`` (box) and
    ``SCORE_TOLERANCE`` (score). Ties in score may list detections in another order, so
    pairing is by content, not position.

    Returns:
        Rows ``boxes`` and ``scores`` (worst paired difference) and ``detections`` (number of
        detections on either side without a counterpart within tolerance, or paired twice).
    """
    expected = FlatDetections(*(t.detach() for t in expected))
    got = FlatDetections(*(t.detach() for t in got))
    e_boxes, g_boxes = expected.boxes_xyxy_norm.float(), got.boxes_xyxy_norm.float()
    same_group = (expected.batch_index[:, None] == got.batch_index[None, :]) & (
        expected.labels[:, None] == got.labels[None, :]
    )  # (Ke, Kg)
    box_diff = (e_boxes[:, None, :] - g_boxes[None, :, :]).abs().amax(dim=2)  # (Ke, Kg)
    box_diff = box_diff.masked_fill(~same_group, float("inf"))
    score_diff = (expected.scores[:, None].float() - got.scores[None, :].float()).abs()  # (Ke, Kg)
    ok = (box_diff <= BOX_TOLERANCE) & (score_diff <= SCORE_TOLERANCE)  # (Ke, Kg)

    worst_box = worst_score = 0.0
    if expected.scores.numel() and got.scores.numel():
        best = box_diff.argmin(dim=1)  # (Ke,) closest exported detection of the same image and label
        rows = torch.arange(best.numel())
        paired = torch.isfinite(box_diff[rows, best])
        if paired.any():
            worst_box = float(box_diff[rows, best][paired].max())
            worst_score = float(score_diff[rows, best][paired].max())
        # NMS never keeps two near-identical boxes of one class, so a detection matching two is a bug.
        twice = int((ok.sum(dim=0) > 1).sum() + (ok.sum(dim=1) > 1).sum())
    else:
        twice = 0
    unmatched = int((~ok.any(dim=1)).sum() + (~ok.any(dim=0)).sum()) + twice
    shape = f"{tuple(got.boxes_xyxy_norm.shape)} vs {tuple(expected.boxes_xyxy_norm.shape)}"
    return [
        OutputCheck("boxes", shape, worst_box, BOX_TOLERANCE),
        OutputCheck("scores", str(tuple(got.scores.shape)), worst_score, SCORE_TOLERANCE),
        OutputCheck(
            "detections",
            f"{got.scores.numel()} vs {expected.scores.numel()}",
            float(unmatched),
            0.0,
        ),
    ]


def _merge_checks(runs: list[list[OutputCheck]]) -> list[OutputCheck]:
    """Rows of several runs -> one row per name, shapes joined: the run closest to failing (largest
    difference over its own tolerance; tolerances differ between runs when they scale with the
    outputs), so the row's difference and tolerance are of the same run; NaN anywhere stays NaN."""
    merged: dict[str, OutputCheck] = {}
    for checks in runs:
        for check in checks:
            previous = merged.get(check.name)
            if previous is None:
                merged[check.name] = check
                continue
            worst = max((previous, check), key=_closeness)
            diff = float("nan") if math.isnan(check.max_diff) or math.isnan(previous.max_diff) else worst.max_diff
            merged[check.name] = OutputCheck(check.name, f"{previous.shape}; {check.shape}", diff, worst.tolerance)
    return list(merged.values())


def _closeness(check: OutputCheck) -> float:
    """How near ``check`` is to failing: its difference over its tolerance (NaN: infinitely)."""
    if math.isnan(check.max_diff):
        return math.inf
    return check.max_diff / check.tolerance if check.tolerance > 0 else (math.inf if check.max_diff > 0 else 0.0)


def parity_batches(samples: Tensor, fmt: str, dynamic_batch: bool) -> list[Tensor]:
    """The batches the exported file is run on: both samples together and the first alone when
    the batch size may vary, else each sample alone (a fixed-batch ONNX graph takes batch 1)."""
    if fmt == "torchscript" or dynamic_batch:
        return [samples, samples[:1]]
    return [samples[i : i + 1] for i in range(samples.shape[0])]


def check_parity(
    graph: nn.Module,
    run_exported: Callable[[Tensor], tuple[Tensor, ...]],
    batches: Sequence[Tensor],
    postprocess: bool,
) -> list[OutputCheck]:
    """Run PyTorch ``graph`` and the exported file on each batch and compare (see
    :func:`compare_raw`, :func:`compare_detections`)."""
    runs = []
    graph.eval()
    for batch in batches:
        with torch.no_grad():
            expected = graph(batch)
        got = run_exported(batch)
        if postprocess:
            runs.append(
                compare_detections(
                    FlatDetections(*_detection_order(expected)),
                    FlatDetections(*_detection_order(got)),
                )
            )
        else:
            runs.append(compare_raw(expected, got))
    return _merge_checks(runs)


def has_tied_scores(network: nn.Module, images: Tensor, top_k_candidates: int) -> bool:
    """Whether any image and class has equal scores among its ``top_k_candidates + 1`` best
    default boxes: then which boxes enter NMS, and which of two equal boxes survives, depends on
    how a runtime breaks ties, and detections may legitimately differ between runtimes."""
    with torch.no_grad():
        cls_logits, _ = network(images)
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, P, C)
    k = min(top_k_candidates + 1, scores.shape[1])
    top = scores.topk(k, dim=1).values  # (B, k, C), descending along dim 1
    return bool((top[:, 1:] == top[:, :-1]).any())


def _detection_order(
    outputs: Sequence[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Graph outputs (boxes, scores, labels, batch_index) -> FlatDetections field order."""
    boxes, scores, labels, batch_index = outputs
    return batch_index.long(), boxes, scores, labels.long()
