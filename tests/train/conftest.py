"""What the training tests share: a small synthetic dataset and a tiny, fast run config."""

from __future__ import annotations

import csv

import pytest

from ssdcli.config import TrainConfig
from ssdcli.data.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """12 synthetic images of 4 classes (circle, square, star, triangle), train and val splits."""
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_dataset(root, num_images=12, seed=3)
    return root


def _tiny_config(data, output, **changes) -> TrainConfig:
    values = dict(
        data=str(data), split="train", epochs=1, arch="ssdlite320", batch_size=2, workers=0, device="cpu",
        backbone_weights="none", eval_every=0, warmup_iters=2, limit_batches=2, output=str(output), seed=1,
        fit_priors=False,  # the preset's boxes: --priors auto has tests of its own (test_default_boxes.py)
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(data, output, **changes)``: SSDLite320 on the CPU, batch 2, 2 batches an epoch, the
    preset's default boxes."""
    return _tiny_config


def _read_metrics(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def read_metrics():
    """``read_metrics(path)``: the rows of a ``metrics.csv`` as dicts of strings."""
    return _read_metrics


def _train_args(data, output, *extra):
    return ["train", "--data", str(data), "--split", "train", "--arch", "ssdlite320", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--eval-every", "0", "--backbone-weights", "none",
            "--warmup-iters", "2", "--output", str(output), *extra]


@pytest.fixture
def train_args():
    """``train_args(data, output, *extra)``: `ssd train` arguments of the tiny run, for subprocesses."""
    return _train_args
