"""What an imported detector needs besides its weights, as plain frozen data.

An :class:`ImportedModel` is the network (an ordinary :class:`ssdcli.models.SSD` with its default
boxes in ``model.prior_spec``) plus the conventions it was trained with: class names (and COCO
category ids), how an image becomes its input (:class:`Preprocessing`) and how its outputs become
detections (:class:`PostprocessRule`). :meth:`ImportedModel.checkpoint_fields` gives them as the
plain values a checkpoint stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssdcli.models import SSD
from ssdcli.postprocess import RULES as POSTPROCESS_RULES
from ssdcli.preprocessing import CHANNEL_ORDERS, RESIZE_RULES, Preprocessing

__all__ = ["CHANNEL_ORDERS", "POSTPROCESS_RULES", "RESIZE_RULES", "ImportedModel", "PostprocessRule", "Preprocessing"]


@dataclass(frozen=True)
class PostprocessRule:
    """The source's own post-processing (its evaluation settings).

    Attributes:
        rule: one of :data:`POSTPROCESS_RULES`.
        score_threshold: class probabilities strictly above this become candidates.
        nms_iou: NMS IoU threshold.
        top_k_candidates: candidates per class and image entering NMS.
        max_detections: detections per image after NMS.
    """

    rule: str
    score_threshold: float
    nms_iou: float
    top_k_candidates: int
    max_detections: int

    def __post_init__(self) -> None:
        if self.rule not in POSTPROCESS_RULES:
            raise ValueError(f"post-processing rule {self.rule!r}: expected one of {', '.join(POSTPROCESS_RULES)}")

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "top_k_candidates": self.top_k_candidates,
            "max_detections": self.max_detections,
        }


@dataclass(frozen=True)
class ImportedModel:
    """A detector converted from another project's weights.

    Attributes:
        model: the network, weights loaded, in eval mode; ``model.prior_spec`` holds the source's
            default boxes and ``model.mean`` / ``model.std`` its normalisation.
        source: the file or name it came from (for messages and the checkpoint).
        source_format: ``torchvision-ssd300``, ``torchvision-ssdlite320`` or ``ssd.pytorch``.
        class_names: name of label ``i`` at index ``i - 1`` (``model.num_classes`` entries;
            label 0 is background). Unused output rows have a placeholder name
            (``__unused_12__``) and are listed in ``ignored_labels``.
        category_ids: the COCO category id of each label (same indexing), when the classes are
            COCO's; ``None`` otherwise.
        ignored_labels: labels that exist in the network's outputs but are no class (the 10 "N/A"
            ids of torchvision's COCO models). Their logits stay in the softmax, so the other
            scores equal the source's, and their detections are dropped at the very end of
            post-processing: detections never carry them.
        preprocessing: how images become the network input.
        postprocess: the source's post-processing.
    """

    model: SSD
    source: str
    source_format: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] | None
    ignored_labels: tuple[int, ...]
    preprocessing: Preprocessing
    postprocess: PostprocessRule

    def __post_init__(self) -> None:
        count = self.model.num_classes
        if len(self.class_names) != count:
            raise ValueError(f"{len(self.class_names)} class names for a network with {count} classes")
        if self.category_ids is not None and len(self.category_ids) != count:
            raise ValueError(f"{len(self.category_ids)} category ids for a network with {count} classes")
        if any(not 1 <= label <= count for label in self.ignored_labels):
            raise ValueError(f"ignored labels {self.ignored_labels} outside 1..{count}")

    def checkpoint_fields(self) -> dict:
        """Plain values for the checkpoint writer, besides ``model_settings(model)`` and the weights.

        ``class_names``, ``image_size``, ``mean``, ``std`` and ``priors`` are the existing
        checkpoint keys (``priors`` comes from ``model.prior_spec``); the others are new.
        """
        prep = self.preprocessing
        return {
            "class_names": list(self.class_names),
            "category_ids": None if self.category_ids is None else list(self.category_ids),
            "ignored_labels": list(self.ignored_labels),
            "image_size": prep.image_size,
            "channel_order": prep.channel_order,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "resize": prep.resize,
            "priors": self.model.prior_spec.to_dict(),
            "postprocess": self.postprocess.to_dict(),
            "imported_from": {"source": self.source, "format": self.source_format},
        }
