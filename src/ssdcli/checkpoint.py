"""Checkpoints: plain dicts written atomically and read back with ``torch.load(weights_only=True)``.

A checkpoint is untrusted input (SPEC "Checkpoints"): a full ``pickle`` load of a downloaded
``last.pt`` can run arbitrary code, so this module only ever loads with ``weights_only=True``,
which rebuilds tensors, numbers, strings, lists, tuples and dicts and refuses any other class or
callable *before* calling it. There is no fallback to ``weights_only=False``.

Layout (``format_version`` 2), as :func:`checkpoint_payload` builds it::

    format            "ssdcli-checkpoint"
    format_version    2
    model             state dict: name -> Tensor, on the CPU
    arch, num_classes, options       the network (ssdcli.models.model_settings)
    class_names       list of str: label i (1-based) is class_names[i - 1]
    category_ids      list of int (COCO category id of label i at i - 1) or None      [2]
    ignored_labels    list of int: labels never reported (torchvision's 10 "N/A" COCO ids)  [2]
    image_size        side of the square input, in pixels
    channel_order     "rgb" | "bgr": the order of the network's input channels         [2]
    mean, std         per input channel, in that order: input = (pixel / 255 - mean) / std
    resize            "uint8" | "float" | "cv2": how an image is resized to the input  [2]
                      (ssdcli.preprocessing.RESIZE_RULES)
    priors            PriorSpec.to_dict(): the default boxes
    postprocess       the detection rule (PostprocessSettings.to_dict(); its "rule",
                      "caffe" | "torchvision", is new in version 2)
    imported_from     {"source", "format"} of `ssd import`, or None                    [2]
    config            the run's TrainConfig.to_dict()
    metrics           the epoch's metrics row, plus "epochs_done"
    # last.pt only; the first six all or none (TRAINING_KEYS):
    optimizer, scaler                torch state dicts
    scheduler         {"kind", "iteration", "lr_scale", "plan"}: the schedule is a function of
                      these (plan: ssdcli.train.schedule.SchedulePlan.to_dict(); absent in older files)
    epoch, iteration  ints: epochs finished, batches trained (steps skipped included)
    rng               ssdcli.train.rng.capture_rng_state()
    train_state       {"batch_in_epoch", "lr_scale", "best_metric", "best_epoch",
                      "stale_validations", "epoch_sums", "micro_batch"}: the loop's position
                      and the images per training pass (the last four absent in older files;
                      ssdcli.train.state.TrainState)

Keys marked [2] are new in version 2 and optional at load. A version-1 file loads with
:data:`VERSION_1_DEFAULTS`
(what version 1 meant: RGB, this project's uint8 resize, no COCO ids, nothing ignored, not
imported) and the post-processing rule it was evaluated with, ``torchvision`` (every decoded box
clipped to the image before NMS: ssdcli did that until format 2), so its detections do not change.

Only ``format`` to ``priors`` (:data:`MODEL_KEYS`) are required to load a checkpoint.

Writing is atomic (temp file in the same folder, flush + fsync, ``os.replace``, fsync of the
folder), so a crash or SIGKILL at any moment leaves the previous file or the new one, never a
partial one.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssdcli.checkpoint_checks import new_field_problems, usability_problems
from ssdcli.errors import CheckpointError
from ssdcli.files import atomic_write
from ssdcli.priors import PriorSpec
from ssdcli.safe_torch import check_plain, first_non_finite, safe_torch_load
from ssdcli.safe_torch import to_plain as to_plain  # part of this module's API: payloads are made plain with it

FORMAT = "ssdcli-checkpoint"
FORMAT_VERSION = 2

VERSION_1_DEFAULTS: dict[str, Any] = {
    "category_ids": None,
    "ignored_labels": [],
    "channel_order": "rgb",
    "resize": "uint8",
    "imported_from": None,
}
"""What a version-1 checkpoint means for the keys version 2 added."""

VERSION_1_RULE = "torchvision"
"""Version 1 clipped every decoded box to the image before NMS (the ``torchvision`` rule of
:data:`ssdcli.postprocess.RULES`); its files keep it."""

MODEL_KEYS: tuple[str, ...] = (
    "format", "format_version", "model", "arch", "num_classes", "class_names", "image_size", "mean", "std", "priors",
)
"""Keys every checkpoint holds: enough to rebuild the network and use it."""

TRAINING_KEYS: tuple[str, ...] = ("optimizer", "scheduler", "scaler", "epoch", "iteration", "rng")
"""Keys ``last.pt`` adds so ``--resume`` continues exactly; present all together or not at all."""

RESUME_KEYS: tuple[str, ...] = (*TRAINING_KEYS, "train_state")
"""What :func:`checkpoint_payload` takes as ``training``: :data:`TRAINING_KEYS` and the loop's
position."""

class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (a :class:`CheckpointError` the CLI reports as a user
    error, and a ``FileNotFoundError`` for callers that test for that)."""


def _field_problems(payload: Mapping[str, Any]) -> list[str]:
    """What is missing or malformed in a checkpoint dict (empty when it is well formed)."""
    problems = []
    missing = [key for key in MODEL_KEYS if key not in payload]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    present_training = [key for key in TRAINING_KEYS if key in payload]
    if present_training and len(present_training) != len(TRAINING_KEYS):
        absent = [key for key in TRAINING_KEYS if key not in payload]
        problems.append(f"training state incomplete: has {', '.join(present_training)} but not {', '.join(absent)}")
    model = payload.get("model")
    if "model" in payload and not (
        isinstance(model, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in model.items())
    ):
        problems.append("'model' is not a state dict (names -> tensors)")
    expected_types: dict[str, tuple[type, ...]] = {
        "arch": (str,),
        "num_classes": (int,),
        "image_size": (int,),
        "priors": (dict,),
        "config": (dict,),
        "metrics": (dict,),
        "epoch": (int,),
        "iteration": (int,),
        "rng": (dict,),
    }
    for key, types in expected_types.items():
        if key in payload and (not isinstance(payload[key], types) or isinstance(payload[key], bool)):
            problems.append(f"{key!r} is a {type(payload[key]).__name__}, expected {types[0].__name__}")
    names = payload.get("class_names")
    if "class_names" in payload and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        problems.append("'class_names' is not a list of strings")
    for key in ("mean", "std"):
        values = payload.get(key)
        if key in payload and not (
            isinstance(values, (list, tuple))
            and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            problems.append(f"{key!r} is not a list of numbers")
    if isinstance(payload.get("priors"), dict):
        try:
            PriorSpec.from_dict(payload["priors"])
        except ValueError as exc:
            problems.append(f"'priors' {exc}")
    return problems


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


def checkpoint_payload(
    weights: Mapping[str, Tensor],
    settings: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    postprocess: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    channel_order: str = "rgb",
    resize: str = "uint8",
    category_ids: Sequence[int] | None = None,
    ignored_labels: Sequence[int] = (),
    imported_from: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the module docstring, the one place its keys are written.

    Args:
        weights: the network's state dict; stored detached, on the CPU.
        settings: :func:`ssdcli.models.model_settings` of the network (``arch``, ``num_classes``,
            ``options``, ``prior_spec``, ``image_size``, ``mean``, ``std``).
        class_names: the dataset's classes in label order (label 1 first).
        postprocess: the detection rule, ``PostprocessSettings.to_dict()``.
        config: the run's settings, ``TrainConfig.to_dict()``.
        metrics: plain numbers describing the weights (the epoch's metrics row).
        training: for ``last.pt``, the :data:`RESUME_KEYS`; ``None`` for a weights-only
            ``best.pt``.
        channel_order, resize: how images become the input (``settings`` has mean and std);
            the defaults are this project's own.
        category_ids, ignored_labels, imported_from: the labels' COCO ids, the labels never
            reported, and ``{"source", "format"}`` of an imported model (ImportedModel.checkpoint_fields).

    Raises:
        KeyError: ``settings`` lacks a key. ValueError: ``training`` is not the :data:`RESUME_KEYS`.
    """
    payload = {
        "model": collections.OrderedDict((name, tensor.detach().cpu()) for name, tensor in weights.items()),
        "arch": settings["arch"],
        "num_classes": settings["num_classes"],
        "options": dict(settings["options"]),
        "class_names": list(class_names),
        "category_ids": None if category_ids is None else [int(i) for i in category_ids],
        "ignored_labels": [int(label) for label in ignored_labels],
        "image_size": settings["image_size"],
        "channel_order": channel_order,
        "mean": list(settings["mean"]),
        "std": list(settings["std"]),
        "resize": resize,
        "priors": settings["prior_spec"],
        "postprocess": dict(postprocess),
        "imported_from": None if imported_from is None else dict(imported_from),
        "config": dict(config),
        "metrics": dict(metrics),
    }
    if training is not None:
        missing = [key for key in RESUME_KEYS if key not in training]
        unknown = sorted(set(training) - set(RESUME_KEYS))
        if missing or unknown:
            raise ValueError(f"training state: missing {missing}, unknown {unknown}; expected {list(RESUME_KEYS)}")
        payload.update({key: training[key] for key in RESUME_KEYS})
    return payload


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, in a form ``torch.load(weights_only=True)`` reads.

    ``format`` / ``format_version`` are filled in when absent. The write is atomic
    (:func:`ssdcli.files.atomic_write`): any failure, KeyboardInterrupt included, leaves an
    existing ``path`` untouched, and only SIGKILL or a power cut can leave a stale
    ``.<name>.*.tmp`` behind, never a partial ``path``.

    Args:
        path: target file (``last.pt``, ``best.pt``); its folder must exist.
        payload: the checkpoint dict (module docstring). Tuples and ``OrderedDict`` / ``Counter``
            (as in torch's own state dicts) are accepted: the weights_only loader rebuilds them.

    Raises:
        TypeError: a value that is not plain, naming its key path (e.g. ``metrics.ap``).
        ValueError: missing or malformed keys, or a NaN / inf in the model weights or optimizer
            state (a non-finite checkpoint is never written).
        OSError: the file cannot be written (folder missing, disk full, ...).
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    check_plain(payload)
    if payload["format"] != FORMAT or payload["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format must be {FORMAT!r} version {FORMAT_VERSION}, "
            f"got {payload['format']!r} version {payload['format_version']!r}"
        )
    problems = _field_problems(payload) + new_field_problems(payload)
    if problems:
        raise ValueError(f"checkpoint for {os.fspath(path)} is malformed: {'; '.join(problems)}")
    for key in ("model", "optimizer"):
        if key in payload:
            bad = first_non_finite(payload[key], key)
            if bad is not None:
                raise ValueError(f"refusing to write {os.fspath(path)}: {bad} holds NaN or inf values")
    atomic_write(path, lambda file: torch.save(payload, file))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, for_resume: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, never executing anything in it.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go (``torch.load``'s argument).
        for_resume: also require the training state (optimizer, scheduler, scaler, epoch,
            iteration, rng) that ``last.pt`` holds and ``best.pt`` does not.

    Returns:
        The checkpoint dict (module docstring).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is not a file, not a PyTorch file (text, truncated, corrupt),
            holds pickled classes or code (refused unexecuted), is a plain dict that is not an
            ssdcli checkpoint (e.g. a bare state dict), is from a newer format version, lacks
            keys, or cannot be used (NaN / inf weights, a zero ``std``, a class list that
            disagrees with ``num_classes``: :mod:`ssdcli.checkpoint_checks`). The message names
            the file and says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: checkpoint not found; check the path (e.g. runs/train/last.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file; give the checkpoint file itself (e.g. {path / 'last.pt'})")
    obj = safe_torch_load(path, map_location)
    _check_loaded(path, obj, for_resume)
    return obj


def _looks_like_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _check_loaded(path: Path, obj: Any, for_resume: bool) -> None:
    """Raise :class:`CheckpointError` unless ``obj`` is a well-formed ssdcli checkpoint dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: not an ssdcli checkpoint: it holds a {type(obj).__name__}, not a checkpoint dict"
        )
    if "format" not in obj:
        if _looks_like_state_dict(obj):
            example = next(iter(obj))
            raise CheckpointError(
                f"{path}: looks like a bare state dict ({len(obj)} tensors, e.g. {example!r}), not an "
                "ssdcli checkpoint; use a last.pt / best.pt written by `ssd train`, or pass backbone "
                "weights with `ssd train --backbone-weights FILE`"
            )
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"{path}: not an ssdcli checkpoint (no 'format' key; it has {keys or 'no keys'}); "
            "use a last.pt / best.pt written by `ssd train`"
        )
    if obj["format"] != FORMAT:
        raise CheckpointError(f"{path}: not an ssdcli checkpoint (format {obj['format']!r}, expected {FORMAT!r})")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: malformed ssdcli checkpoint: 'format_version' is {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer ssdcli (checkpoint format {version}; this version reads up to "
            f"{FORMAT_VERSION}); upgrade ssdcli to load it"
        )
    _fill_defaults(obj, version)
    problems = _field_problems(obj)
    if for_resume:
        missing = [key for key in TRAINING_KEYS if key not in obj]
        if len(missing) == len(TRAINING_KEYS):
            raise CheckpointError(
                f"{path}: holds model weights only, no training state to resume from "
                "(best.pt never does); resume from the run's last.pt"
            )
    if problems:
        raise CheckpointError(f"{path}: malformed ssdcli checkpoint: {'; '.join(problems)}")
    unusable = new_field_problems(obj) + usability_problems(obj)
    if unusable:
        raise CheckpointError(f"{path}: unusable ssdcli checkpoint: {'; '.join(unusable)}")


def _fill_defaults(obj: dict[str, Any], version: int) -> None:
    """Give a checkpoint dict, in place, the keys version 2 added that it lacks (module
    docstring): a version-1 file lacks them all; a version-2 file written by hand may lack some
    (only :data:`MODEL_KEYS` are required). A post-processing dict without a rule gets version 1's
    rule in a version-1 file, the default (``caffe``) in a later one."""
    for key, value in VERSION_1_DEFAULTS.items():
        obj.setdefault(key, list(value) if isinstance(value, list) else value)
    if version < 2 and isinstance(obj.get("postprocess"), dict):
        obj["postprocess"] = {"rule": VERSION_1_RULE, **obj["postprocess"]}
