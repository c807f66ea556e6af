"""torchvision's ``ssd300_vgg16`` carrying our SSD300's weights: the reference of the benchmarks.

Both networks are the Caffe SSD300 (VGG16 reduced + atrous fc6/fc7, L2-normalised conv4_3, four
extra blocks, 3x3 heads); only the module layout differs. The key correspondence is the one
``ssd import`` uses, :func:`ssdcli.pretrained.torchvision_ssd.ssd300_key` (table in that module's
docstring): torchvision's ``SSDFeatureExtractorVGG`` splits our ``backbone.vgg`` at pool4.

Head layouts agree too: torchvision views a head output ``(N, A*K, H, W)`` as ``(N, A, K, H, W)``
and permutes to ``(N, H, W, A, K)``; ours permutes ``(N, H, W, A*K)`` and reshapes: row
``(y, x, a)``, column ``k`` in both. Its ``DefaultBoxGenerator`` lists the boxes of a location in
our order (square of scale ``s_k``, square of ``sqrt(s_k s_k+1)``, then ``ar``, ``1/ar`` per ratio),
so the permutation between the two models' rows is the identity: :func:`raw_outputs` of both are
equal up to float rounding (the L2 norm's epsilon differs: ``F.normalize`` clamps the norm at
1e-12, ours adds 1e-10 under the square root). Only the default boxes differ (torchvision's scales
0.07, 0.15, ... against Caffe's 30/300, 60/300, ...), which matters for decoding, not for speed.

The reference is built with our ImageNet mean/std instead of its Caffe-style defaults, so both see
the same normalised input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import ssd300_vgg16
from torchvision.models.detection.ssd import SSD as TorchvisionSSD
from torchvision.ops import box_iou

from ssdcli.boxes import cxcywh_to_xyxy
from ssdcli.models import SSD
from ssdcli.pretrained.torchvision_ssd import ssd300_key as torchvision_key


def to_torchvision_state_dict(model: SSD) -> dict[str, Tensor]:
    """Our SSD300's weights under torchvision's keys (tensors shared, not copied)."""
    return {torchvision_key(key): value for key, value in model.state_dict().items()}


def build_reference(model: SSD, score_thresh: float = 0.01) -> TorchvisionSSD:
    """torchvision ``ssd300_vgg16`` with ``model``'s weights, classes and normalisation.

    Every key must map and every torchvision tensor must be covered (``strict`` loading), so a
    layout change on either side fails here instead of silently benchmarking different networks.
    """
    if model.arch != "ssd300":
        raise ValueError(f"the torchvision reference is SSD300 on VGG16, not {model.arch}")
    reference = ssd300_vgg16(
        weights=None,
        weights_backbone=None,
        num_classes=model.num_classes + 1,
        image_mean=list(model.mean),
        image_std=list(model.std),
        score_thresh=score_thresh,
    )
    reference.load_state_dict(to_torchvision_state_dict(model), strict=True)
    return reference


def raw_outputs(reference: TorchvisionSSD, images: Tensor) -> tuple[Tensor, Tensor]:
    """torchvision's head outputs for an already normalised batch, in our ``forward`` form.

    Args:
        images: Tensor[N, 3, 300, 300], normalised like our model's input.

    Returns:
        cls_logits Tensor[N, P, K + 1], box_deltas Tensor[N, P, 4].
    """
    features = list(reference.backbone(images).values())
    heads = reference.head(features)
    return heads["cls_logits"], heads["bbox_regression"]


def anchors_xyxy_px(priors_cxcywh: Tensor, image_size: int) -> Tensor:
    """Our default boxes in torchvision's anchor form: Tensor[P, 4], xyxy in input pixels."""
    return cxcywh_to_xyxy(priors_cxcywh) * image_size


def reference_target_assignment(
    reference: TorchvisionSSD, targets: list[dict[str, Tensor]], anchors_px: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """torchvision's matching + encoding, exactly as ``SSD.forward`` / ``compute_loss`` do it.

    Per image: ``box_iou`` -> ``SSDMatcher`` -> foreground indices -> ``BoxCoder.encode_single`` of
    the matched boxes, plus the dense class-target vector.

    Args:
        targets: per image ``{"boxes": Tensor[G, 4] xyxy px, "labels": Tensor[G]}``.
        anchors_px: Tensor[P, 4], xyxy in input pixels.

    Returns:
        Per image ``(class targets Tensor[P], regression targets Tensor[F, 4])``.
    """
    out = []
    for target in targets:
        if target["boxes"].numel() == 0:
            matched = torch.full((anchors_px.shape[0],), -1, dtype=torch.int64)
        else:
            matched = reference.proposal_matcher(box_iou(target["boxes"], anchors_px))
        foreground = torch.where(matched >= 0)[0]
        matched_fg = matched[foreground]
        regression = reference.box_coder.encode_single(target["boxes"][matched_fg], anchors_px[foreground])
        classes = torch.zeros(anchors_px.shape[0], dtype=target["labels"].dtype)
        classes[foreground] = target["labels"][matched_fg]
        out.append((classes, regression))
    return out


def reference_postprocess(
    reference: TorchvisionSSD,
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors_px: Tensor,
    image_size: int,
    score_thresh: float,
) -> list[dict[str, Tensor]]:
    """torchvision's ``postprocess_detections`` on our head outputs (same anchors per image).

    Args:
        cls_logits: Tensor[B, P, K + 1]; box_deltas: Tensor[B, P, 4].
        anchors_px: Tensor[P, 4], xyxy in pixels of the ``image_size`` square input.

    Returns:
        Per image ``{"boxes" xyxy px, "scores", "labels"}``, as torchvision returns them.
    """
    reference.score_thresh = score_thresh
    batch = cls_logits.shape[0]
    heads = {"cls_logits": cls_logits, "bbox_regression": box_deltas}
    return reference.postprocess_detections(heads, [anchors_px] * batch, [(image_size, image_size)] * batch)


def uses_same_weights(model: nn.Module, reference: nn.Module) -> bool:
    """True when every tensor of ``model`` is the very tensor torchvision holds under its key."""
    theirs = reference.state_dict()
    return all(torch.equal(value, theirs[torchvision_key(key)]) for key, value in model.state_dict().items())
