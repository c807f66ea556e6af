"""Reading a foreign state-dict file safely, and recognising whose layout it has.

Files are untrusted: they are only read with ``torch.load(weights_only=True)`` (the checkpoint
module's loader, which refuses pickled code unexecuted). The one class admitted besides what
``weights_only`` rebuilds is ``argparse.Namespace``, a plain attribute bag: torchvision's
reference training scripts store their arguments as one next to the weights
(``{"model", "optimizer", "lr_scheduler", "args", "epoch"}``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ssdcli.safe_torch import safe_torch_load
from ssdcli.errors import UserError

FORMATS = ("torchvision-ssd300", "torchvision-ssdlite320", "ssd.pytorch")
"""Layouts ``import_weights`` converts; ``auto`` picks one from the keys."""

SIGNATURES: dict[str, tuple[str, ...]] = {
    "torchvision-ssd300": ("backbone.features.0.weight", "backbone.scale_weight"),
    "torchvision-ssdlite320": ("backbone.features.0.0.0.weight", "backbone.features.1.0.1.0.weight"),
    "ssd.pytorch": ("vgg.0.weight", "L2Norm.weight"),
}
"""Keys that only a state dict of that layout has (``--format auto``)."""

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net", "weights")
"""Where training scripts put the weights inside a bigger dict (torchvision references and
lufficc/SSD: ``model``; mmdetection and Lightning: ``state_dict``), tried in this order."""

PREFIXES = ("module.", "model.")
"""Key prefixes that wrappers add to every key (DataParallel / DDP, Lightning), stripped."""


def is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict in ``path``: a bare one, or one inside a training checkpoint dict.

    Raises:
        UserError: no such file; empty, truncated or not a PyTorch file; a pickle payload
            (refused unexecuted); an ssdcli checkpoint (nothing to import); or no state dict
            inside. The message names the file.
    """
    if not path.is_file():
        raise UserError(
            f"{path}: no such file; give a .pth / .pt state-dict file or a name such as torchvision:ssd300_vgg16"
        )
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = safe_torch_load(
            path,
            "cpu",
            kind="a state-dict file",
            advice="Save the weights with torch.save(model.state_dict(), FILE) and import that file.",
        )
    if isinstance(obj, Mapping) and obj.get("format") == "ssdcli-checkpoint":
        raise UserError(
            f"{path}: is already an ssdcli checkpoint; use it directly (--weights {path}), no import needed"
        )
    return _unwrap(path, obj)


def _unwrap(path: Path, obj: object) -> dict[str, Tensor]:
    """The state dict held by ``obj`` (itself, or under a :data:`WRAPPER_KEYS` key), prefixes stripped."""
    state = obj
    if isinstance(obj, Mapping) and not is_state_dict(obj):
        state = next((obj[key] for key in WRAPPER_KEYS if is_state_dict(obj.get(key))), None)
        if state is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            raise UserError(
                f"{path}: holds a dict without a state dict in it (keys {keys or 'none'}; looked "
                f"under {', '.join(WRAPPER_KEYS)}); save the weights with torch.save(model.state_dict(), FILE)"
            )
    if not is_state_dict(state):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict (names -> tensors)")
    state = dict(state)
    for prefix in PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def recognise_format(state: Mapping[str, Tensor], source: str) -> str:
    """The layout of ``state`` among :data:`FORMATS` (``--format auto``).

    Raises:
        UserError: no layout's signature keys are present, naming what the keys look like.
    """
    found = [name for name, keys in SIGNATURES.items() if all(key in state for key in keys)]
    if len(found) == 1:
        return found[0]
    examples = ", ".join(repr(key) for key in list(state)[:3])
    hint = ""
    if any(key.startswith("classifier.") for key in state):
        hint = " It looks like an ImageNet classifier (classifier.* keys): use it with --backbone-weights."
    elif "backbone.vgg.0.weight" in state or "loc_heads.0.weight" in state:
        hint = " It looks like the 'model' of an ssdcli checkpoint: use the checkpoint itself."
    known = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in SIGNATURES.items())
    raise UserError(
        f"{source}: not a state dict of a known SSD layout ({len(state)} tensors, e.g. {examples}); "
        f"--format auto recognises {known}.{hint}"
    )
