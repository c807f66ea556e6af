"""Strict state-dict conversion: every foreign key used, every key of ours filled, shapes checked.

A converter names, for each key of our network, the key it comes from (``foreign_key``);
:func:`load_mapped` then refuses anything but an exact one-to-one cover with equal shapes, so a
state dict of another architecture, another class count or a truncated save is a clear error,
never a half-loaded model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.models import SSD


def _listing(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{' ...' if len(keys) > limit else ''} ({len(keys)} keys)"


def classes_from_heads(
    state: Mapping[str, Tensor], class_keys: Sequence[str], anchors: Sequence[int], source: str, layout: str
) -> int:
    """The number of class outputs (background included) that the class heads give per box.

    Args:
        class_keys: the weight key of each source layer's class head (output channels first).
        anchors: default boxes per location of each layer.

    Raises:
        UserError: a head is missing, or the layers disagree / do not divide by their box
            counts (another class or box layout); the message gives each layer's arithmetic.
    """
    missing = [key for key in class_keys if key not in state]
    if missing:
        raise UserError(f"{source}: looks like {layout} but has no {_listing(missing)}")
    outputs = [int(state[key].shape[0]) for key in class_keys]
    counts = [out / a for out, a in zip(outputs, anchors)]
    if all(c == counts[0] for c in counts) and counts[0] == int(counts[0]) and counts[0] >= 2:
        return int(counts[0])
    parts = [
        f"{key} has {out} outputs for {a} boxes: {out / a:g} classes"
        for key, out, a in zip(class_keys, outputs, anchors)
    ]
    raise UserError(
        f"{source}: looks like {layout} but its class heads do not agree on a class count "
        f"({'; '.join(parts)}); it is another box or class layout"
    )


def load_mapped(
    model: SSD, state: Mapping[str, Tensor], foreign_key: Callable[[str], str], source: str, layout: str
) -> None:
    """Fill every tensor of ``model`` from ``state[foreign_key(our_key)]``, in place.

    Everything is checked before anything is copied.

    Raises:
        UserError: keys missing from ``state``, keys of ``state`` nothing uses, a shape or dtype
            kind that differs, or NaN / inf values; the message names the first few keys.
    """
    ours = model.state_dict()
    wanted = {foreign_key(key): key for key in ours}
    missing = [key for key in wanted if key not in state]
    unused = [key for key in state if key not in wanted]
    if missing or unused:
        parts = [f"missing {_listing(missing)}"] if missing else []
        parts += [f"unexpected {_listing(unused)}"] if unused else []
        raise UserError(f"{source}: not a complete {layout} state dict: {'; '.join(parts)}")
    for theirs, key in wanted.items():
        value, target = state[theirs], ours[key]
        if tuple(value.shape) != tuple(target.shape):
            raise UserError(
                f"{source}: {theirs} has shape {tuple(value.shape)}, but {layout} with "
                f"{model.num_classes + 1} class outputs needs {tuple(target.shape)}"
            )
        if value.is_floating_point() != target.is_floating_point():
            raise UserError(f"{source}: {theirs} holds {value.dtype} values, expected {target.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{source}: {theirs} holds NaN or inf values; the file is damaged")
    converted = {key: state[theirs].to(ours[key].dtype) for theirs, key in wanted.items()}
    model.load_state_dict(converted, strict=True)
