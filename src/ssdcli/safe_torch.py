"""What a checkpoint may hold and how it is read: plain values only (tensors, numbers, strings,
lists, dicts), loaded with ``torch.load(weights_only=True)`` and never with a full pickle load
(:mod:`ssdcli.checkpoint` describes the threat). Shared by checkpoints and imported state dicts."""

from __future__ import annotations

import collections
import pickle
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssdcli.errors import CheckpointError

_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)
# Dict subclasses the weights_only unpickler rebuilds (torch/_weights_only_unpickler.py
# _get_allowed_globals): module state dicts are OrderedDicts (with ``_metadata``), MultiStepLR
# keeps its milestones in a Counter.
_PLAIN_DICTS = (dict, collections.OrderedDict, collections.Counter)
_PLAIN_SEQUENCES = (list, tuple)
_PLAIN_TENSORS = (Tensor, nn.Parameter)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = 0x80  # first byte of a protocol >= 2 pickle: torch's legacy format, or raw pickle



def to_plain(value: Any) -> Any:
    """A copy of ``value`` that :func:`ssdcli.checkpoint.save_checkpoint` accepts: numpy arrays become tensors,
    numpy scalars Python numbers, tuples lists and mappings dicts, recursively. Anything else is
    returned unchanged (and rejected by :func:`ssdcli.checkpoint.save_checkpoint` if it is not plain)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # np.array copies: the tensor owns its memory
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every leaf under ``value`` with its key path (``optimizer.state.0.momentum_buffer``,
    ``rng.cuda[1]``); raises ``TypeError`` at the first value weights_only loading would refuse."""
    if type(value) in _PLAIN_DICTS:
        for key, item in value.items():
            if type(key) not in (str, int, bool, float, type(None)):
                raise TypeError(f"checkpoint key {path}: dict key {key!r} is a {type(key).__name__}, not str/int")
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif type(value) in _PLAIN_SEQUENCES:
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    elif type(value) in _PLAIN_SCALARS or type(value) in _PLAIN_TENSORS:
        yield path, value
    else:
        raise TypeError(
            f"checkpoint key {path or '<root>'}: a {type(value).__module__}.{type(value).__qualname__} "
            "cannot be stored; checkpoints hold only tensors, numbers, strings, bools, None, lists and "
            "dicts (convert it first, e.g. with ssdcli.checkpoint.to_plain, str() or .tolist())"
        )


def check_plain(payload: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the key path of the first value that is not plain."""
    for _ in _walk(payload, ""):
        pass


def first_non_finite(value: Any, path: str) -> str | None:
    """Key path of the first floating tensor holding NaN or inf under ``value``, or ``None``."""
    for leaf_path, leaf in _walk(value, path):
        if isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            if not bool(torch.isfinite(leaf.detach()).all()):
                return leaf_path
    return None


def safe_torch_load(
    path: Path,
    map_location: str | torch.device,
    kind: str = "an ssdcli checkpoint",
    advice: str = "Use a checkpoint written by `ssd train`.",
) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`
    whose message says the file is not ``kind`` (and, for a pickle, ends with ``advice``)."""
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    not_torch = (
        f"{path}: not {kind}: the file is not a PyTorch checkpoint "
        "(it may be truncated, still being written, or another kind of file); nothing in it was loaded"
    )
    if not head:
        raise CheckpointError(f"{path}: not {kind}: the file is empty")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise CheckpointError(not_torch)
    try:
        # torch warns about unusual pickle protocols before refusing them; the refusal is the news.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "nsupported" in line), "").rstrip(".")
        if not detail:
            raise CheckpointError(f"{not_torch} ({first_line(exc)})") from exc
        raise CheckpointError(
            f"{path}: refused: not {kind}, and unsafe: only an unrestricted pickle "
            f"load, which can run code, would read it ({detail}). A checkpoint is untrusted input, "
            f"so it is only loaded with weights_only=True and nothing in it was executed. {advice}"
        ) from exc
    # Any other failure while the restricted unpickler or the zip reader parse untrusted bytes
    # means "corrupt": a truncated zip raises RuntimeError or OSError (EINVAL), a cut-off pickle
    # EOFError or struct.error, a bad legacy header KeyError, and crafted bytes may raise anything
    # else. No user code can run under weights_only, so nothing but the parse can have failed.
    except Exception as exc:
        raise CheckpointError(f"{not_torch} ({type(exc).__name__}: {first_line(exc)})") from exc


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to a paragraph)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
