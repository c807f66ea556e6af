"""ssd.pytorch (github amdegroot/ssd.pytorch) SSD300 weights as an ssdcli network.

Its ``build_ssd('test', 300, num_classes)`` is the Caffe SSD300 (``ssd.py``): ``vgg`` is a
ModuleList with torchvision's VGG16 ``features`` indices plus pool5 (30), conv6 (31, 3x3
dilation 6), conv7 (33); ``L2Norm`` on conv4_3; ``extras`` eight bare convolutions (ReLU applied
in ``forward``), pairs ``2j`` (1x1) and ``2j + 1`` (3x3) being our ``extras.{j}.0`` / ``.2``;
``loc`` / ``conf`` the 3x3 heads (output row order and columns as ours). Keys, ours -> theirs:
``backbone.vgg.N`` -> ``vgg.N``, ``backbone.conv4_3_norm.weight`` -> ``L2Norm.weight``,
``backbone.extras.{j}.{0|2}`` -> ``extras.{2j|2j+1}``, ``loc_heads.i`` / ``conf_heads.i`` ->
``loc.i`` / ``conf.i``.

Its conventions (``data/config.py``, ``layers/functions/prior_box.py``, ``data/__init__.py``):

- default boxes: the VOC configuration (Caffe's min sizes 30 ... 264) when the model has 21
  outputs, else the COCO one (21 ... 261), as ``SSD.__init__`` picks ``(coco, voc)[num_classes
  == 21]``; all four cxcywh values clamped to [0, 1] (``clip: True``);
- input: ``cv2.imread`` (BGR), ``cv2.resize`` to 300x300, float32 minus ``MEANS = (104, 117,
  123)`` in BGR order, no scaling. The channels the network then sees depend on the weights:
  its training and ``eval.py`` go through ``VOCDetection.pull_item``, which turns the result
  to RGB (``img[:, :, (2, 1, 0)]``), so natively trained weights (``ssd300_mAP_77.43_v2.pth``)
  take RGB with means (123, 117, 104); the weights converted from the authors' Caffe model
  (``ssd_300_VOC0712.pth``) take BGR (ssd.pytorch issues #31 and #44). ``channel_order``
  chooses; RGB is the default.
- post-processing: its ``Detect`` (softmax, per class score > 0.01 and the best 200 into NMS at
  0.45, no clipping, no cap per image) is not reproduced: imports use this project's Caffe
  ``DetectionOutput`` rule (400 per class, 200 per image).
- L2 norm: ``x / (sqrt(sum x^2) + 1e-10)`` against our ``x / sqrt(sum x^2 + 1e-10)``: equal to
  float rounding for any norm above about 1e-4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.models import build_model
from ssdcli.pretrained.convert import classes_from_heads, load_mapped
from ssdcli.pretrained.info import CHANNEL_ORDERS, ImportedModel, PostprocessRule, Preprocessing
from ssdcli.pretrained.labels import coco81_labels, label_space, voc21_labels
from ssdcli.priors import PriorSpec, ssd300_coco_spec, ssd300_spec

MEANS_BGR = (104.0, 117.0, 123.0)
"""ssd.pytorch ``data/config.py`` ``MEANS``, subtracted from 0-255 BGR values."""
VOC_OUTPUTS, COCO_OUTPUTS = 21, 81
POSTPROCESS = PostprocessRule("caffe", 0.01, 0.45, 400, 200)
KNOWN_LABELS = {VOC_OUTPUTS: voc21_labels, COCO_OUTPUTS: coco81_labels}


def ssd_pytorch_spec(outputs: int) -> PriorSpec:
    """ssd.pytorch's default boxes for a model with ``outputs`` class outputs (module docstring)."""
    if outputs == VOC_OUTPUTS:
        return replace(ssd300_spec(), name="ssd.pytorch_voc", clip="cxcywh")
    return replace(ssd300_coco_spec(), name="ssd.pytorch_coco", clip="cxcywh")


def preprocessing(channel_order: str) -> Preprocessing:
    """``cv2.resize`` then minus :data:`MEANS_BGR` (in the network's channel order), no scaling."""
    if channel_order not in CHANNEL_ORDERS:
        raise UserError(f"channel order {channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
    means = MEANS_BGR if channel_order == "bgr" else MEANS_BGR[::-1]
    return Preprocessing(300, channel_order, tuple(m / 255.0 for m in means), (1 / 255,) * 3, "cv2")


def ssd_pytorch_key(key: str) -> str:
    """The ssd.pytorch key of one of our SSD300 keys (module docstring)."""
    parts = key.split(".")
    if parts[:2] == ["backbone", "vgg"]:
        return "vgg." + ".".join(parts[2:])
    if key == "backbone.conv4_3_norm.weight":
        return "L2Norm.weight"
    if parts[:2] == ["backbone", "extras"] and parts[3] in ("0", "2"):
        return f"extras.{2 * int(parts[2]) + int(parts[3]) // 2}.{'.'.join(parts[4:])}"
    if parts[0] == "loc_heads":
        return "loc." + ".".join(parts[1:])
    if parts[0] == "conf_heads":
        return "conf." + ".".join(parts[1:])
    raise KeyError(f"no ssd.pytorch counterpart for {key!r}")


def convert_ssd_pytorch(
    state: Mapping[str, Tensor], source: str, class_names: Sequence[str] | None = None, channel_order: str = "rgb"
) -> ImportedModel:
    """An ssd.pytorch SSD300 state dict as an :class:`ImportedModel`.

    Raises:
        UserError: not exactly that layout, wrong ``class_names`` or ``channel_order``.
    """
    layout = "ssd.pytorch SSD300"
    prep = preprocessing(channel_order)
    anchors = ssd300_spec().boxes_per_location  # 4, 6, 6, 6, 4, 4 (``mbox['300']``)
    keys = [f"conf.{i}.weight" for i in range(len(anchors))]
    outputs = classes_from_heads(state, keys, anchors, source, layout)
    names, category_ids, ignored = label_space(outputs, class_names, source, KNOWN_LABELS)
    model = build_model("ssd300", num_classes=outputs - 1, prior_spec=ssd_pytorch_spec(outputs))
    load_mapped(model, state, ssd_pytorch_key, source, layout)
    model.mean, model.std = prep.mean, prep.std
    return ImportedModel(model.eval(), source, "ssd.pytorch", names, category_ids, ignored, prep, POSTPROCESS)
