"""ImageNet MobileNetV3-Large weights for the SSDLite backbone (``--backbone-weights`` on ssdlite320).

torchvision's ``MobileNet_V3_Large_Weights.IMAGENET1K_V1`` is a classifier with the full last
stage (960 channels), so it fits an ``ssdlite320`` built with ``reduced_tail=False``, as
torchvision itself builds SSDLite around ImageNet weights. Its ``features.N`` map one to one
onto :class:`~ssdcli.models.mobilenet.MobileNetV3Backbone` (``s = split_index``, ``r =
split_rest``):

    features.{i}, i < s            -> backbone.stage16.{i}
    features.{s}.block.0           -> backbone.stage16.{s}         (the expansion 1x1)
    features.{s}.block.{j}, j >= 1 -> backbone.stage32.{j - 1}
    features.{i}, i > s            -> backbone.stage32.{r + i - s - 1}

BatchNorm running statistics (and ``num_batches_tracked``) come along; ``classifier.*`` is not
used; the extras and heads keep their initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ssdcli.downloads import ProgressCallback
from ssdcli.errors import UserError
from ssdcli.models.mobilenet import MobileNetV3Backbone
from ssdcli.models.ssd import SSD

ADVICE = "; or pass --backbone-weights FILE (a torchvision mobilenet_v3_large state dict) or --backbone-weights none"
NO_FILE = (
    "no such file. Pass a torchvision mobilenet_v3_large state dict file, or --backbone-weights none to train "
    "from scratch"
)


def resolve_mobilenet_backbone_weights(
    spec: str | Path | None, on_progress: ProgressCallback | None = None
) -> Path | None:
    """The MobileNetV3-Large state-dict file that ``--backbone-weights`` asks for.

    Args:
        spec: a file; ``"none"`` (any case) for scratch; ``None`` / ``""`` / ``"imagenet"`` for torchvision's
            ImageNet weights, from torch.hub's cache or downloaded into it with ``on_progress``.

    Raises:
        UserError: no such file, or offline without the cached file (names URL and path).
    """
    if spec is not None and str(spec).strip().lower() == "none":
        return None
    if spec is not None and str(spec).strip() and str(spec).strip().lower() != "imagenet":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"--backbone-weights {path}: {NO_FILE}")
        return path
    from ssdcli.pretrained.names import backbones, fetch_named  # lazy: pretrained imports models

    return fetch_named(backbones()["mobilenet_v3_large"], on_progress, ADVICE)


def features_key(key: str, backbone: MobileNetV3Backbone) -> str:
    """The torchvision ``mobilenet_v3_large`` key of a backbone key (``stage16.0.0.weight``)."""
    stage, index, rest = key.split(".", 2)
    index, split = int(index), backbone.split_index
    if stage == "stage16":
        return f"features.{split}.block.0.{rest}" if index == split else f"features.{index}.{rest}"
    if stage == "stage32":
        if index < backbone.split_rest:
            return f"features.{split}.block.{index + 1}.{rest}"
        return f"features.{split + 1 + index - backbone.split_rest}.{rest}"
    raise KeyError(f"{key!r} is not a MobileNetV3 features key")


def load_mobilenet_v3_backbone(model: SSD, state_dict_or_path: Mapping[str, Tensor] | str | Path) -> None:
    """Copy torchvision's (ImageNet) ``mobilenet_v3_large`` features into ``model``'s backbone.

    Everything is checked before anything is copied.

    Raises:
        UserError: the model is not an ssdlite320 with the full tail at width 1.0, the file is
            missing or unsafe, or keys are missing, unexpected or of another shape.
    """
    backbone = model.backbone
    if not isinstance(backbone, MobileNetV3Backbone):
        raise UserError(f"--backbone-weights: {model.arch} has no MobileNetV3 backbone")
    if backbone.reduced_tail or model.options.get("width_mult", 1.0) != 1.0:
        raise UserError(
            "--backbone-weights: ImageNet MobileNetV3-Large weights need ssdlite320 at width 1.0 "
            "with the full tail (reduced_tail=False), the network they were trained as"
        )
    state, name = _read(state_dict_or_path)
    ours = {key: value for key, value in backbone.state_dict().items() if key.startswith("stage")}
    wanted = {features_key(key, backbone): key for key in ours}
    missing = [key for key in wanted if key not in state]
    unexpected = [k for k in state if k not in wanted and not k.startswith("classifier.")]
    if missing or unexpected:
        bad = missing or unexpected
        what = "missing" if missing else "unexpected"
        raise UserError(
            f"backbone weights {name}: not a torchvision mobilenet_v3_large state dict, {what} "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} ({len(bad)} keys)"
        )
    for theirs, key in wanted.items():
        if tuple(state[theirs].shape) != tuple(ours[key].shape):
            raise UserError(
                f"backbone weights {name}: {theirs} has shape {tuple(state[theirs].shape)}, "
                f"expected {tuple(ours[key].shape)}"
            )
    backbone.load_state_dict({key: state[theirs] for theirs, key in wanted.items()}, strict=False)


def _read(source: Mapping[str, Tensor] | str | Path) -> tuple[Mapping[str, Tensor], str]:
    if isinstance(source, Mapping):
        return source, "the given state dict"
    from ssdcli.pretrained.state_dict import read_state_dict  # lazy: pretrained imports models

    path = Path(source)
    if not path.is_file():
        raise UserError(f"backbone weights {path}: {NO_FILE}")
    return read_state_dict(path), str(path)


def load_imagenet_mobilenet_v3(model: SSD, weights: str | None, on_progress: ProgressCallback | None = None) -> None:
    """What ``--backbone-weights`` asks of an ssdlite320: the file
    :func:`resolve_mobilenet_backbone_weights` finds (or downloads, reporting ``on_progress``),
    loaded by :func:`load_mobilenet_v3_backbone`; ``"none"`` keeps the network as initialised."""
    path = resolve_mobilenet_backbone_weights(weights, on_progress)
    if path is not None:
        load_mobilenet_v3_backbone(model, path)
