"""The RNG states a last.pt carries: exact round trips through a checkpoint file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ssdcli.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from ssdcli.errors import CheckpointError
from ssdcli.priors import ssd300_spec
from ssdcli.train.rng import (
    capture_rng_state,
    numpy_rng_from_plain,
    numpy_rng_to_plain,
    python_rng_from_plain,
    python_rng_to_plain,
    restore_rng_state,
)


def _last_pt_payload() -> dict:
    """A last.pt whose ``rng`` the caller fills in (after building it: building draws from torch)."""
    settings = {
        "arch": "ssd300", "num_classes": 2, "options": {}, "prior_spec": ssd300_spec().to_dict(), "image_size": 300,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }
    training = {"optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 0, "iteration": 0, "rng": {},
                "train_state": {}}
    return checkpoint_payload(nn.Linear(2, 2).state_dict(), settings, ["cat", "dog"], postprocess={}, config={},
                              metrics={}, training=training)



def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(3).tolist() + np.random.randint(0, 1000, 2).tolist(),
        torch.rand(4).tolist() + torch.randint(0, 1000, (2,)).tolist(),
    )


def test_rng_capture_restore_repeats_draws_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # Leave a cached Gaussian in both python's and numpy's generator: those fields must survive.
    random.gauss(0, 1)
    np.random.standard_normal(1)
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1

    payload = _last_pt_payload()
    payload["rng"] = capture_rng_state()
    expected = _draws()
    save_checkpoint(tmp_path / "last.pt", payload)
    _draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert _draws() == expected


def test_rng_converters_are_exact_inverses():
    random.seed(5)
    random.gauss(0, 1)
    state = random.getstate()
    assert python_rng_from_plain(python_rng_to_plain(state)) == state

    np.random.seed(6)
    np.random.standard_normal(1)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    back = numpy_rng_from_plain(numpy_rng_to_plain((name, keys, pos, has_gauss, cached)))
    assert back[0] == name and back[1].dtype == np.uint32 and np.array_equal(back[1], keys)
    assert back[2:] == (pos, has_gauss, cached)


def test_restore_rng_rejects_malformed_state():
    good = capture_rng_state()
    with pytest.raises(CheckpointError, match="malformed RNG state"):
        restore_rng_state({**good, "torch": [1, 2, 3]})
    with pytest.raises(CheckpointError, match="malformed RNG state"):
        restore_rng_state({"numpy": good["numpy"], "torch": good["torch"]})
