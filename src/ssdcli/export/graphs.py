"""The two graphs ``ssd export`` traces, and the trace itself.

Both take ``images`` float32 [N, 3, S, S] as :func:`ssdcli.preprocessing.to_network_input` makes
them with the checkpoint's preprocessing (channel order, normalisation, resize rule: the metadata
says which):

- :class:`RawGraph` (``--no-postprocess``): ``cls_logits`` [N, P, C + 1], ``box_deltas`` [N, P, 4]
  and the constant ``priors`` [P, 4] cxcywh normalised, in the network's row order.
- :class:`DetectionGraph` (``--postprocess``): the network followed by
  :func:`ssdcli.postprocess.postprocess_flat` itself (softmax, per-class top-k, decode with the
  network's own variances, NMS batched over classes and images under the checkpoint's rule
  (``caffe``: clip the kept boxes; ``torchvision``: clip before NMS), best ``max_detections`` per
  image, the checkpoint's ignored labels dropped) -> ``boxes`` [K, 4] xyxy normalised, ``scores`` [K], ``labels`` [K] 1-based and
  ``batch_index`` [K], grouped by image, scores descending within an image.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import SSD
from ssdcli.postprocess import postprocess_flat


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

    Boxes are decoded with ``network.prior_spec.variances``, the variances the network was
    trained with (they travel in its checkpoint).

    The score threshold is a 0-dim buffer, not a Python float: a trace records only the branch it
    takes, and torchvision's ``batched_nms`` returns early when no box is left, so the graph is
    traced with the threshold at -1 (every candidate kept, the NMS path recorded) and the real
    threshold is then written into the buffer the traced graph reads.
    """

    def __init__(
        self, network: SSD, priors_cxcywh: Tensor, settings: PostprocessSettings, ignored_labels: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone())
        self.register_buffer("score_threshold", torch.tensor(float(settings.score_threshold)))
        self.nms_iou = float(settings.nms_iou)
        self.top_k_candidates = int(settings.top_k_candidates)
        self.max_detections = int(settings.max_detections)
        self.rule = settings.rule
        self.ignored_labels = tuple(int(label) for label in ignored_labels)
        self.variances = tuple(float(v) for v in network.prior_spec.variances)

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
            variances=self.variances,
            rule=self.rule,
            ignored_labels=self.ignored_labels,
        )
        return flat.boxes_xyxy_norm, flat.scores, flat.labels, flat.batch_index


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the warnings torch prints on every trace/export that are expected here.

    - the TorchScript-based ONNX exporter and ``torch.jit`` are deprecated in torch 2.9+; they are
      still the paths that export ``torchvision.ops.nms`` (:mod:`ssdcli.export.formats`), and the
      files they write load with current onnxruntime and ``torch.jit.load``;
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
    with quiet_export(), torch.no_grad():
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
