"""MultiBoxLoss: SSD paper sec. 2.2 "Training objective" and "Hard negative mining".

``L = (L_conf + alpha * L_loc) / N`` with ``N`` the number of positive default boxes in the batch
(``max(1, N)`` so a batch without objects gives 0, never NaN), ``L_loc`` the smooth L1 loss of the
positives' deltas and ``L_conf`` the softmax cross-entropy over the positives and the hardest
negatives: per image, the ``neg_pos_ratio * n_pos`` background default boxes with the highest
confidence loss (3:1 in the paper), capped by the number of negatives available.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossOutput(NamedTuple):
    """The loss and its parts, each already divided by ``max(1, num_positives)``."""

    total: Tensor
    loc: Tensor
    conf: Tensor
    num_positives: Tensor


def hard_negative_mask(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """The hardest negatives of each image.

    Args:
        conf_loss: Tensor[B, P], per-default-box cross-entropy (no gradient needed).
        positive: Tensor[B, P] bool.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        Tensor[B, P] bool: for image ``b``, the ``min(ratio * n_pos_b, P - n_pos_b)`` negatives with
        the largest loss (ties broken by the lower index, deterministically).
    """
    num_priors = positive.shape[1]
    num_pos = positive.sum(dim=1, keepdim=True)  # (B, 1)
    num_neg = torch.clamp((num_pos * neg_pos_ratio).floor().long(), max=num_priors - num_pos)  # (B, 1)
    loss = conf_loss.detach().masked_fill(positive, float("-inf"))
    order = loss.argsort(dim=1, descending=True, stable=True)  # (B, P)
    rank = order.argsort(dim=1)  # (B, P): position of each default box in that order
    return rank < num_neg


class MultiBoxLoss(nn.Module):
    """SSD's training loss.

    Args:
        neg_pos_ratio: hard negatives per positive, per image (3 in the paper).
        alpha: weight of the localisation term (1 in the paper).
    """

    def __init__(self, neg_pos_ratio: float = 3.0, alpha: float = 1.0) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        target_labels: Tensor,
        target_deltas: Tensor,
        num_positives: Tensor | None = None,
    ) -> LossOutput:
        """
        Args:
            cls_logits: Tensor[B, P, C + 1], raw class scores, background at index 0.
            box_deltas: Tensor[B, P, 4], predicted deltas.
            target_labels: Tensor[B, P] int64, 0 = background (from ``matching.assign_targets``).
            target_deltas: Tensor[B, P, 4], regression targets (finite everywhere).
            num_positives: the ``N`` to divide by, a 0-dim tensor; ``None`` = these images' own.
                Slices of one batch given the whole batch's ``N`` have losses that add up to the
                batch's loss (hard negatives are mined per image, so nothing else crosses images).

        Returns:
            :class:`LossOutput` with scalar tensors.
        """
        num_classes = cls_logits.shape[-1]
        positive = target_labels > 0  # (B, P)
        num_pos = positive.sum() if num_positives is None else num_positives
        normaliser = num_pos.clamp(min=1).float()  # paper's N, never 0

        conf_loss = F.cross_entropy(
            cls_logits.reshape(-1, num_classes).float(), target_labels.reshape(-1), reduction="none"
        ).view_as(target_labels)  # (B, P)
        with torch.no_grad():
            negative = hard_negative_mask(conf_loss, positive, self.neg_pos_ratio)
        conf = conf_loss[positive | negative].sum() / normaliser

        loc = F.smooth_l1_loss(
            box_deltas[positive].float(), target_deltas[positive].float(), beta=1.0, reduction="sum"
        ) / normaliser

        total = conf + self.alpha * loc
        return LossOutput(total=total, loc=loc, conf=conf, num_positives=num_pos)
