"""Run a model written by ``ssd export --format onnx`` with onnxruntime (imported when a model is
opened: the ``[export]`` extra).

:class:`OnnxDetector` is a :class:`ssdcli.inference.Detector`, so ``ssd detect --weights
model.onnx`` uses it exactly where it would use a checkpoint. A raw export (``--no-postprocess``)
gets the same :func:`ssdcli.postprocess.postprocess` as the checkpoint it came from, with the
variances stored in the file; a detections export already ran that function inside the graph,
and its outputs are only scaled to pixels and, when asked, cut to a higher score threshold or
fewer detections.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.export.metadata import INPUT_NAME, ExportMetadata
from ssdcli.inference import Timings
from ssdcli.postprocess import (
    Detections, FlatDetections, PostprocessSettings, postprocess, settings_for_model, split_by_image,
)
from ssdcli.score_hint import best_class_scores


SESSION_CONFIG: dict[str, str] = {"session.force_spinning_stop": "1"}
"""onnxruntime session settings of every :class:`OnnxDetector`.

``session.force_spinning_stop``: onnxruntime's worker threads stop spinning as soon as a run
returns, instead of busy-waiting for the next one. In ``ssd detect`` torch pre-processes and
post-processes each batch between two runs, and spinning workers took the cores those steps
need: an SSDLite batch of one took about twice as long (README "CPU speed notes").
"""


def session_options():
    """``onnxruntime.SessionOptions`` with :data:`SESSION_CONFIG` applied."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


class OnnxDetector:
    """An exported ONNX model and its metadata, ready for batches of pre-processed images.

    Args:
        path: a ``.onnx`` file written by ``ssd export``.
        settings: post-processing; ``None`` uses the settings stored in the file. For a
            detections export only a higher ``score_threshold`` or a lower ``max_detections``
            than the embedded ones can be applied (NMS already ran with its own settings).
        providers: onnxruntime execution providers; CPU by default.

    Attributes:
        metadata: the :class:`~ssdcli.export.metadata.ExportMetadata` stored in the file.
        image_size, mean, std, class_names: from the metadata (the :class:`Detector` protocol).

    Raises:
        UserError: the file is missing, not an ONNX model, not written by ``ssd export``, or the
            settings cannot be applied to its embedded post-processing.
    """

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: PostprocessSettings | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX model not found; check the path (e.g. runs/train/best.onnx)")
        options = session_options()
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.path}: not an ONNX model onnxruntime can load ({first})") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if "ssdcli_export" not in props:
            raise UserError(
                f"{self.path}: an ONNX model without ssdcli metadata (class names, input size, normalisation); "
                "export it with `ssd export --format onnx`"
            )
        try:
            self.metadata = ExportMetadata.from_dict(dict(props))
        except ValueError as exc:
            raise UserError(f"{self.path}: {exc}") from exc
        names = [o.name for o in self.session.get_outputs()]
        if names != list(self.metadata.outputs) or [i.name for i in self.session.get_inputs()] != [INPUT_NAME]:
            raise UserError(
                f"{self.path}: outputs {names} do not match its ssdcli metadata {list(self.metadata.outputs)}"
            )
        self._check_input()
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) else None
        self.settings = self._check_settings(settings)

        self.image_size: int = self.metadata.image_size
        self.mean = list(self.metadata.mean)
        self.std = list(self.metadata.std)
        self.preprocessing = self.metadata.preprocessing
        self.class_names = list(self.metadata.class_names)
        self.category_ids = self.metadata.category_ids
        self.ignored_labels = tuple(self.metadata.ignored_labels)

    def _check_input(self) -> None:
        """The graph's input must be what the metadata promises: ``[N, 3, S, S]``, a usable
        normalisation (else onnxruntime refuses every batch, or the inputs divide by zero)."""
        from ssdcli.checkpoint_checks import normalisation_problems

        shape = list(self.session.get_inputs()[0].shape)  # ints, or names / None for symbolic dims
        size = self.metadata.image_size
        expected = [None, 3, size, size]
        if len(shape) != 4 or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expected)):
            shown = "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in shape) + "]"
            raise UserError(
                f"{self.path}: its input is {shown} but its ssdcli metadata says [N, 3, {size}, {size}]; "
                "the file was edited or its metadata mixed up: export it again with `ssd export`"
            )
        problems = normalisation_problems(self.metadata.mean, self.metadata.std)
        if problems:
            raise UserError(f"{self.path}: unusable ssdcli metadata: {'; '.join(problems)}")

    def _check_settings(self, settings: PostprocessSettings | dict | None) -> PostprocessSettings:
        stored = self.metadata.settings
        settings = settings_for_model(stored, settings)  # the model's rule; a dict: overrides
        if not self.metadata.postprocess:
            return settings
        if settings.nms_iou != stored.nms_iou or settings.top_k_candidates != stored.top_k_candidates:
            raise UserError(
                f"{self.path}: its NMS was exported with IoU {stored.nms_iou} and {stored.top_k_candidates} "
                f"candidates per class; --nms-iou {settings.nms_iou} needs a re-export "
                f"(`ssd export --nms-iou {settings.nms_iou}`) or a --no-postprocess export"
            )
        if settings.score_threshold < stored.score_threshold:
            raise UserError(
                f"{self.path}: exported with --min-score {stored.score_threshold}; a lower --min-score "
                f"{settings.score_threshold} needs a re-export (`ssd export --min-score {settings.score_threshold}`)"
            )
        if settings.max_detections > stored.max_detections:
            raise UserError(
                f"{self.path}: exported with at most {stored.max_detections} detections per image; "
                f"--top-k {settings.max_detections} needs a re-export (`ssd export --top-k {settings.max_detections}`)"
            )
        return settings

    def run(self, images: Tensor) -> tuple[Tensor, ...]:
        """The graph's outputs for ``images`` float Tensor[B, 3, S, S] normalised, as CPU tensors in
        ``metadata.outputs`` order. A fixed-batch model is run one image at a time and the results
        joined (``batch_index`` renumbered; ``priors`` returned once)."""
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        if self.fixed_batch is None or self.fixed_batch == array.shape[0]:
            return tuple(torch.from_numpy(o) for o in self.session.run(None, {INPUT_NAME: array}))
        if self.fixed_batch != 1:
            raise UserError(f"{self.path}: takes batches of exactly {self.fixed_batch} images, got {array.shape[0]}")
        parts = [self.session.run(None, {INPUT_NAME: array[i : i + 1]}) for i in range(array.shape[0])]
        if not self.metadata.postprocess:
            cls_logits = np.concatenate([p[0] for p in parts])  # (B, P, C + 1)
            box_deltas = np.concatenate([p[1] for p in parts])  # (B, P, 4)
            return (
                torch.from_numpy(cls_logits),
                torch.from_numpy(box_deltas),
                torch.from_numpy(parts[0][2]),
            )
        boxes, scores, labels, batch_index = (np.concatenate([p[k] for p in parts]) for k in range(4))
        batch_index = np.concatenate([np.full(len(p[3]), i, dtype=p[3].dtype) for i, p in enumerate(parts)])
        return tuple(torch.from_numpy(a) for a in (boxes, scores, labels, batch_index))

    def predict(
        self,
        images: Tensor,
        sizes: Sequence[tuple[int, int]],
        timings: Timings | None = None,
    ) -> list[Detections]:
        """Detections per image in original-image pixels (the :class:`Detector` protocol).

        Args:
            images: float Tensor[B, 3, S, S], normalised as ``metadata`` says.
            sizes: ``(width, height)`` of each original image.
            timings: forward and post-processing seconds are added to it.
        """
        start = time.perf_counter()
        outputs = self.run(images)
        forwarded = time.perf_counter()
        batch = images.shape[0]
        if self.metadata.postprocess:
            boxes, scores, labels, batch_index = outputs
            flat = FlatDetections(batch_index.long(), boxes, scores, labels.long())
            per_image = split_by_image(flat, batch, list(sizes))
            # Scores descend within an image, so a higher threshold or a lower cap keeps a prefix,
            # exactly what running the post-processing with those settings would have kept.
            detections = [self._cut(d) for d in per_image]
            if timings is not None:
                # The graph returns only detections above its export threshold: a class's best
                # score is known when it has one (NMS keeps each class's best box), else hidden.
                timings.hidden_below = self.metadata.settings.score_threshold
                best = torch.full((len(self.class_names),), float("nan"))
                timings.see_scores(best.scatter_reduce(0, labels.long() - 1, scores.float(), "amax", include_self=False))
        else:
            cls_logits, box_deltas, priors = outputs
            detections = postprocess(
                cls_logits,
                box_deltas,
                priors,
                image_sizes=list(sizes),
                variances=self.metadata.variances,
                ignored_labels=self.metadata.ignored_labels,
                **self.settings.to_dict(),
            )
            if timings is not None:
                timings.see_scores(best_class_scores(cls_logits))
        if timings is not None:
            timings.forward += forwarded - start
            timings.post += time.perf_counter() - forwarded
        return detections

    def _cut(self, detections: Detections) -> Detections:
        keep = int((detections.scores > self.settings.score_threshold).sum())
        keep = min(keep, self.settings.max_detections)
        return Detections(*(t[:keep] for t in detections))
