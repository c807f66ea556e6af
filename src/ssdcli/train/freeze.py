"""``--freeze-backbone-epochs N``: the backbone fixed for the first N epochs, then trained.

Frozen means what torchvision's detection models (``trainable_backbone_layers``, with
``FrozenBatchNorm2d``) and mmdetection (``frozen_stages`` with ``norm_eval=True``) do: the
parameters get no gradient (``requires_grad`` False, so SGD leaves them, their weight decay and
their momentum untouched) and the BatchNorm layers inside normalise with their running statistics,
which neither training steps nor precise BN (:func:`~ssdcli.train.validation.recompute_batchnorm_stats`)
change. Whether an epoch is frozen is a function of the epoch number alone, so ``--resume``
continues exactly. The backbone is :func:`ssdcli.models.backbone_modules` (VGG16 conv1_1..conv7,
MobileNetV3's features); extras and heads always train.
"""

from __future__ import annotations

from torch import nn

from ssdcli.config import TrainConfig
from ssdcli.models import SSD, backbone_modules


def frozen_modules(model: SSD, config: TrainConfig, epoch: int) -> list[nn.Module]:
    """The modules fixed during (0-based) ``epoch``: the backbone while ``epoch < N``, else none."""
    return backbone_modules(model) if epoch < config.freeze_backbone_epochs else []


def apply_freeze(model: SSD, config: TrainConfig, epoch: int) -> None:
    """Set ``requires_grad`` and the BatchNorm mode of the backbone for ``epoch``; call it after
    ``model.train()`` (which puts every BatchNorm back in training mode)."""
    if not config.freeze_backbone_epochs:
        return
    frozen = epoch < config.freeze_backbone_epochs
    for module in backbone_modules(model):
        for param in module.parameters():
            param.requires_grad_(not frozen)
        if frozen:
            module.eval()
