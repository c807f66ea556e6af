"""Checks that a loaded checkpoint can make a working detector, each failure one line.

:func:`ssdcli.checkpoint.load_checkpoint` checks the file's structure (keys, types); these check
what a well-formed file can still get wrong: weights that are NaN or inf (a diverged run: every
score NaN, zero detections, and an export whose parity check "passes" on NaN == NaN), input
normalisation that divides by zero, a class list that disagrees with the class count, and
weights that do not fit the network the settings describe (:func:`state_dict_mismatch`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ssdcli.errors import UserError
from ssdcli.postprocess import PostprocessSettings
from ssdcli.preprocessing import CHANNEL_ORDERS, RESIZE_RULES
from ssdcli.wording import plural


def first_non_finite(state: Mapping[str, Tensor]) -> str | None:
    """Name of the first floating tensor of ``state`` (a state dict) holding NaN or inf, else ``None``."""
    for name, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def normalisation_problems(mean: Sequence[float], std: Sequence[float]) -> list[str]:
    """What is wrong with an input normalisation ``(x / 255 - mean) / std`` (empty when usable)."""
    problems = []
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            problems.append(f"{key!r} is {list(values)}, expected 3 finite numbers (R, G, B)")
    if len(std) == 3 and any(v <= 0 for v in std):
        problems.append(f"'std' is {list(std)}: inputs are divided by it, so every value must be positive")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def new_field_problems(checkpoint: Mapping[str, Any]) -> list[str]:
    """What is wrong with the keys format version 2 added (empty when they are usable): the
    channel order, resize rule, category ids, ignored labels, import record and the
    post-processing settings with their rule. Absent keys are not checked (they mean the
    defaults: ``ssdcli.checkpoint.VERSION_1_DEFAULTS``)."""
    problems = []
    for key, allowed in (("channel_order", CHANNEL_ORDERS), ("resize", RESIZE_RULES)):
        if key in checkpoint and checkpoint[key] not in allowed:
            problems.append(f"{key!r} is {checkpoint[key]!r}, expected one of {', '.join(allowed)}")
    count = checkpoint.get("num_classes")
    ids = checkpoint.get("category_ids")
    if ids is not None and not (isinstance(ids, list) and len(ids) == count and all(_is_int(i) for i in ids)):
        problems.append(f"'category_ids' is {_short(ids)}, expected None or {count} integers (one per class)")
    ignored = checkpoint.get("ignored_labels", [])
    if not (isinstance(ignored, list) and all(_is_int(i) and 1 <= i <= (count or 0) for i in ignored)):
        problems.append(f"'ignored_labels' is {_short(ignored)}, expected a list of labels in 1..{count}")
    record = checkpoint.get("imported_from")
    if record is not None and not (
        isinstance(record, dict) and set(record) == {"source", "format"} and all(isinstance(v, str) for v in record.values())
    ):
        problems.append(f"'imported_from' is {_short(record)}, expected None or {{'source': ..., 'format': ...}}")
    settings = checkpoint.get("postprocess", {})
    try:
        if not isinstance(settings, dict):
            raise TypeError("not a dict")
        PostprocessSettings(**settings)
    except (TypeError, UserError) as exc:
        problems.append(f"'postprocess' is {_short(settings)}: {str(exc).splitlines()[0]}")
    return problems


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def usability_problems(checkpoint: Mapping[str, Any]) -> list[str]:
    """What makes a well-formed checkpoint dict unusable for inference (empty when it is usable).

    Expects the keys and types :func:`ssdcli.checkpoint.load_checkpoint` has already checked.
    """
    problems = normalisation_problems(checkpoint["mean"], checkpoint["std"])
    names, count = checkpoint["class_names"], checkpoint["num_classes"]
    if len(names) != count:
        problems.append(f"'class_names' has {plural(len(names), 'name')} but 'num_classes' is {count}")
    if checkpoint["image_size"] <= 0:
        problems.append(f"'image_size' is {checkpoint['image_size']}, expected a positive size")
    bad = first_non_finite(checkpoint["model"])
    if bad is not None:
        problems.append(
            f"the weight {bad!r} holds NaN or inf values (the training run diverged); use an earlier checkpoint"
        )
    return problems


def state_dict_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """One sentence on how the state dict ``given`` fails to fit ``expected`` (a model's own
    ``state_dict()``), or ``None`` when every key is present with its shape.

    ``load_state_dict``'s own message lists every key over many lines; this counts the missing,
    unexpected and mis-shaped keys and names the first of each.
    """
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    misshaped = [key for key in expected if key in given and given[key].shape != expected[key].shape]
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if misshaped:
        key = misshaped[0]
        parts.append(
            f"{len(misshaped)} of another shape (first {key!r}: {tuple(given[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} expected)"
        )
    return "weight names or shapes do not match: " + ", ".join(parts)
