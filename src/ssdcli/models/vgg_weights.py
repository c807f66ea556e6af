"""ImageNet VGG16 weights for the SSD backbone: torchvision's state dict, fc6/fc7 made convolutional.

SSD paper sec. 3: "we convert fc6 and fc7 to convolutional layers, subsample parameters from fc6
and fc7, change pool5 from 2x2-s2 to 3x3-s1, and use the a trous algorithm to fill the holes".
With pool5 at stride 1, fc6's 7x7 window over pool5 becomes a 3x3 window with dilation 6 (taps
0, 3, 6 of the 7x7 grid, one every 3 cells); keeping every 4th of the 4096 units gives 1024:

    conv6.weight = fc6.weight.view(4096, 512, 7, 7)[::4, :, ::3, ::3]   # (1024, 512, 3, 3)
    conv7.weight = fc7.weight[::4, ::4].view(1024, 1024, 1, 1)
    conv6.bias = fc6.bias[::4];  conv7.bias = fc7.bias[::4]

The source is a ``torchvision.models.vgg16`` state dict (``features.N.*``, ``classifier.0`` =
fc6, ``classifier.3`` = fc7), read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ssdcli.downloads import ProgressCallback, fetch_cached
from ssdcli.errors import UserError
from ssdcli.models.ssd import SSD
from ssdcli.models.vgg import CONV6, CONV7, VGG16Backbone

FC6_KEY = "classifier.0"
FC7_KEY = "classifier.3"
FC6_SHAPE = (4096, 512 * 7 * 7)
FC7_SHAPE = (4096, 4096)


def vgg16_imagenet_url() -> str:
    """Download address of torchvision's ``VGG16_Weights.IMAGENET1K_V1``."""
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1.url


def default_weights_path() -> Path:
    """Where torch.hub caches ``VGG16_Weights.IMAGENET1K_V1`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    filename = os.path.basename(urlparse(vgg16_imagenet_url()).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


IMAGENET = "imagenet"
"""The ``--backbone-weights`` value that asks for torchvision's published ImageNet weights."""

VGG_ADVICE = (
    ". Or pass --backbone-weights FILE (a torchvision vgg16 state dict) or --backbone-weights none to train "
    "from scratch"
)


def resolve_backbone_weights(
    spec: str | Path | None,
    on_download: Callable[[str, Path], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path | None:
    """The VGG16 state-dict file that ``--backbone-weights`` asks for.

    Args:
        spec: a file path; ``"none"`` (any case) to train from scratch; ``None``, ``""`` or
            ``"imagenet"`` for
            torchvision's ImageNet weights: the torch.hub cache file if present, else a download
            into that cache (:func:`ssdcli.downloads.fetch_cached`: sha256-checked, atomic).
        on_download: called as ``on_download(url, destination)`` before a download starts, so
            the CLI can say what is happening.
        on_progress: the download's progress (``on_progress(bytes_done, bytes_total)``).

    Returns:
        The file to pass to :func:`load_vgg16_backbone`, or ``None`` for scratch.

    Raises:
        UserError: the file does not exist, or the default weights are not cached and cannot be
            downloaded (offline: the message names the URL and the path to put the file at).
    """
    if spec is not None and str(spec).strip().lower() == "none":
        return None
    if spec is not None and str(spec).strip() and str(spec).strip().lower() != IMAGENET:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(
                f"--backbone-weights {path}: no such file. Pass a torchvision vgg16 state dict "
                "file, or --backbone-weights none to train from scratch."
            )
        return path
    cached = default_weights_path()  # spec None, "" or "imagenet"
    if cached.is_file():
        return cached
    url = vgg16_imagenet_url()
    if on_download is not None:
        on_download(url, cached)
    return fetch_cached(url, "the ImageNet VGG16 weights", on_progress, VGG_ADVICE)


def _read_state_dict(source: Mapping[str, Tensor] | str | Path) -> tuple[Mapping[str, Tensor], str]:
    """The state dict and a name for messages; files are read with ``weights_only=True``."""
    if isinstance(source, Mapping):
        return source, "the given state dict"
    path = Path(source)
    if not path.is_file():
        raise UserError(
            f"backbone weights {path}: no such file. Pass --backbone-weights FILE (a torchvision "
            "vgg16 state dict) or --backbone-weights none."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(
            f"backbone weights {path}: not a PyTorch state dict that loads with "
            f"weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, Mapping):
        raise UserError(f"backbone weights {path}: holds a {type(state).__name__}, not a state dict")
    return state, str(path)


def subsample_fc6(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """fc6 ``(4096, 25088)`` / ``(4096,)`` -> conv6 ``(1024, 512, 3, 3)`` / ``(1024,)`` (a view)."""
    conv_weight = weight.unflatten(1, (512, 7, 7))  # (4096, 512, 7, 7): torch flattens pool5 C, H, W
    return conv_weight[::4, :, ::3, ::3], bias[::4]  # (1024, 512, 3, 3), (1024,)


def subsample_fc7(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """fc7 ``(4096, 4096)`` / ``(4096,)`` -> conv7 ``(1024, 1024, 1, 1)`` / ``(1024,)``."""
    return weight[::4, ::4][:, :, None, None], bias[::4]  # (1024, 1024, 1, 1), (1024,)


def load_vgg16_backbone(model: SSD, state_dict_or_path: Mapping[str, Tensor] | str | Path) -> None:
    """Copy torchvision's ImageNet VGG16 weights into ``model``'s VGG layers, in place.

    conv1_1 .. conv5_3 are copied as they are; fc6 / fc7 are subsampled into conv6 / conv7 (module
    docstring). The L2Norm scale, extras and heads keep their initialisation. Everything is
    checked before anything is copied, so a failure leaves the model untouched.

    Raises:
        UserError: the model has no VGG16 backbone, the file is missing or not a safe state dict,
            or a key is missing or has the wrong shape (the message names the first few).
    """
    if not isinstance(model.backbone, VGG16Backbone):
        raise UserError(
            f"--backbone-weights: {model.arch} has no VGG16 backbone; ImageNet VGG16 weights "
            "apply to ssd300 and ssd512 only (use --backbone-weights none)"
        )
    state, name = _read_state_dict(state_dict_or_path)
    vgg = model.backbone.vgg
    expected: dict[str, tuple[int, ...]] = {}
    for index, layer in enumerate(vgg[:CONV6]):
        if isinstance(layer, nn.Conv2d):
            expected[f"features.{index}.weight"] = tuple(layer.weight.shape)
            expected[f"features.{index}.bias"] = tuple(layer.bias.shape)
    expected.update(
        {
            f"{FC6_KEY}.weight": FC6_SHAPE,
            f"{FC6_KEY}.bias": (FC6_SHAPE[0],),
            f"{FC7_KEY}.weight": FC7_SHAPE,
            f"{FC7_KEY}.bias": (FC7_SHAPE[0],),
        }
    )
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(
            f"backbone weights {name}: not a torchvision vgg16 state dict, missing "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)} keys)"
        )
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise UserError(f"backbone weights {name}: {key} has shape {got}, expected {shape}")

    conv6_weight, conv6_bias = subsample_fc6(state[f"{FC6_KEY}.weight"], state[f"{FC6_KEY}.bias"])
    conv7_weight, conv7_bias = subsample_fc7(state[f"{FC7_KEY}.weight"], state[f"{FC7_KEY}.bias"])
    with torch.no_grad():
        for index, layer in enumerate(vgg[:CONV6]):
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_(state[f"features.{index}.weight"])
                layer.bias.copy_(state[f"features.{index}.bias"])
        vgg[CONV6].weight.copy_(conv6_weight)
        vgg[CONV6].bias.copy_(conv6_bias)
        vgg[CONV7].weight.copy_(conv7_weight)
        vgg[CONV7].bias.copy_(conv7_bias)


def load_imagenet_vgg16(model: SSD, weights: str | None, on_progress: ProgressCallback | None = None) -> None:
    """What ``--backbone-weights`` asks of a VGG16 SSD: the file :func:`resolve_backbone_weights`
    finds (or downloads, reporting ``on_progress``), loaded by :func:`load_vgg16_backbone`;
    ``"none"`` keeps the network as initialised."""
    path = resolve_backbone_weights(weights, on_progress=on_progress)
    if path is not None:
        load_vgg16_backbone(model, path)
