"""The global random generators of a training run, as plain values a checkpoint can hold.

``last.pt`` stores :func:`capture_rng_state` and ``--resume`` calls :func:`restore_rng_state`, so
the draws after a resume repeat those of the uninterrupted run. The python and numpy states are
tuples that ``weights_only`` loading refuses; the converters turn them into dicts of tensors and
numbers and back, exactly.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssdcli.errors import CheckpointError


def python_rng_to_plain(state: tuple) -> dict[str, Any]:
    """``random.getstate()`` -> ``{"version", "internal": int64 Tensor[625], "gauss_next"}``.

    The Mersenne Twister words are < 2**32 and so fit int64 exactly; the tensor is far smaller
    and faster to pickle than a 625-int list."""
    version, internal, gauss_next = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def python_rng_from_plain(plain: Mapping[str, Any]) -> tuple:
    """Inverse of :func:`python_rng_to_plain`: a tuple ``random.setstate`` accepts."""
    internal = plain["internal"]
    words = internal.tolist() if isinstance(internal, Tensor) else list(internal)
    gauss_next = plain["gauss_next"]
    return (int(plain["version"]), tuple(int(w) for w in words), None if gauss_next is None else float(gauss_next))


def numpy_rng_to_plain(state: tuple) -> dict[str, Any]:
    """``np.random.get_state()`` (legacy tuple: name, uint32[624] keys, pos, has_gauss,
    cached_gaussian) -> a dict with the keys as an int64 ``Tensor[624]``."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return {
        "bit_generator": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def numpy_rng_from_plain(plain: Mapping[str, Any]) -> tuple:
    """Inverse of :func:`numpy_rng_to_plain`: a tuple ``np.random.set_state`` accepts."""
    keys = plain["keys"]
    keys = keys.numpy() if isinstance(keys, Tensor) else np.asarray(keys)
    return (
        str(plain["bit_generator"]),
        keys.astype(np.uint32),
        int(plain["pos"]),
        int(plain["has_gauss"]),
        float(plain["cached_gaussian"]),
    )


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG a training run draws from, as plain values for a checkpoint.

    Returns:
        ``{"python": ..., "numpy": ..., "torch": uint8 Tensor (CPU generator),
        "cuda": [uint8 Tensor per device]}``; ``cuda`` is an empty list unless CUDA has been
        initialised (a CPU run on a GPU machine has not drawn from it, and reading it would
        initialise CUDA for nothing).
    """
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": python_rng_to_plain(random.getstate()),
        "numpy": numpy_rng_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the RNG states of :func:`capture_rng_state`; later draws repeat exactly.

    CUDA states are restored for the devices both the saved run and this machine have (a resumed
    run on fewer GPUs keeps its other generators as they are).

    Raises:
        CheckpointError: ``state`` is malformed (it comes from a file).
    """
    try:
        python_state = python_rng_from_plain(state["python"])
        numpy_state = numpy_rng_from_plain(state["numpy"])
        torch_state = state["torch"]
        if not (isinstance(torch_state, Tensor) and torch_state.dtype == torch.uint8):
            raise TypeError(f"torch RNG state is a {type(torch_state).__name__}, expected a uint8 tensor")
        cuda_states = list(state.get("cuda", []))
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state.cpu())
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"malformed RNG state in checkpoint: {type(exc).__name__}: {exc}") from exc
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
