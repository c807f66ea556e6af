"""--priors auto: the preset kept when it covers the data, boxes fitted when it misses objects,
decided once when a run starts, never again on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdcli.checkpoint import load_checkpoint
from ssdcli.config import AUTO_FIT_UNCOVERED, TrainConfig
from ssdcli.coverage import best_prior_iou
from ssdcli.data.records import DetectionDataset, ImageRecord
from ssdcli.errors import UserError
from ssdcli.priors import PriorSpec, generate_priors, preset_spec
from ssdcli.train import fit
from ssdcli.train.default_boxes import auto_prior_spec

S = 320  # ssdlite320's input; the images below are that size, so boxes are not squeezed


def _dataset(boxes_px: list[np.ndarray]) -> DetectionDataset:
    records = [
        ImageRecord(Path(f"img{i}.jpg"), f"img{i}", S, S, boxes.astype(np.float32), np.ones(len(boxes), np.int64),
                    np.zeros(len(boxes), bool), np.zeros(len(boxes), bool))
        for i, boxes in enumerate(boxes_px)
    ]
    return DetectionDataset("voc", Path("."), ["thing"], records)


def _boxes(width: float, height: float, centres: np.ndarray) -> np.ndarray:
    half = np.array([width / 2, height / 2])
    return np.concatenate((centres - half, centres + half), axis=1)


def _config(**changes) -> TrainConfig:
    return TrainConfig(data="d", epochs=1, arch="ssdlite320", **changes)


def _covered(boxes_px: np.ndarray, spec: PriorSpec) -> float:
    best = best_prior_iou(torch.from_numpy(boxes_px / S).float(), generate_priors(spec).float())
    return float((best >= 0.5).float().mean())


def test_the_preset_is_kept_when_it_covers_the_data():
    # squares of the preset's layer-1 min size (112 px) on layer 1's grid centres (step 32): IoU 1
    centres = 16 + 32 * np.array([[2, 3], [5, 5], [7, 1], [4, 8]], dtype=np.float64)
    data = _dataset([_boxes(112, 112, centres)] * 3)
    spec, note = auto_prior_spec(_config(), data)
    assert spec is None
    assert note == "default boxes: the ssdlite320 preset (it covers 100.0% of the 12 training boxes at IoU >= 0.5)"


def test_tall_thin_objects_the_preset_misses_get_fitted_boxes():
    # 20 x 60 px (w / h = 1/3) on layer 0's grid (step 16): the preset's smallest box is 64 px
    rng = np.random.default_rng(0)
    boxes = [_boxes(20, 60, 8 + 16 * rng.integers(3, 17, (4, 2)).astype(np.float64)) for _ in range(10)]
    data = _dataset(boxes)
    preset = preset_spec("ssdlite320")
    assert _covered(np.concatenate(boxes), preset) == 0.0
    spec, note = auto_prior_spec(_config(seed=0), data)
    fitted = PriorSpec.from_dict(spec)
    assert fitted.name == "ssdlite320-fit"  # within the head's budget: never more boxes per location
    assert all(n <= most for n, most in zip(fitted.boxes_per_location, preset.boxes_per_location))
    assert _covered(np.concatenate(boxes), fitted) == 1.0
    assert note == ("default boxes: fitted to the training data, covering 100.0% of the 40 training boxes at IoU >= 0.5 "
                    "(the ssdlite320 preset: 0.0%); kept in config.json and the checkpoints; --priors preset keeps the preset")
    assert auto_prior_spec(_config(seed=0), data)[0] == spec  # deterministic for a seed


def test_data_without_boxes_keeps_the_preset():
    data = _dataset([np.zeros((0, 4))] * 2)
    assert auto_prior_spec(_config(), data) == (
        None, "default boxes: the ssdlite320 preset (the training data has no boxes to fit them to)")


def test_auto_is_ssdlite320s_default_and_never_refits_given_boxes():
    assert AUTO_FIT_UNCOVERED == 0.02
    assert _config().fit_priors is True
    assert TrainConfig(data="d", epochs=1, arch="ssd300").fit_priors is False  # the paper's boxes
    assert _config(prior_scales=(0.1, 0.95)).fit_priors is False
    assert _config(prior_spec=preset_spec("ssdlite320").to_dict()).fit_priors is False
    assert _config(fit_priors=False).fit_priors is False
    with pytest.raises(UserError, match="--priors auto fits the default boxes and --prior-scales"):
        _config(fit_priors=True, prior_scales=(0.1, 0.95))
    # config.json of a run made before --priors auto: it trained the preset, and a resume must too
    old = _config().to_dict()
    del old["fit_priors"]
    assert TrainConfig.from_dict(old).fit_priors is False


def test_an_auto_run_keeps_its_fitted_boxes_and_a_resume_does_not_refit(synth, tmp_path, tiny_config, monkeypatch):
    result = fit(tiny_config(synth, tmp_path / "run", fit_priors=True, limit_batches=1))
    config = json.loads((result.output / "config.json").read_text())
    assert config["fit_priors"] is True and config["prior_spec"]["name"] == "ssdlite320-fit"
    saved = load_checkpoint(result.output / "last.pt", for_resume=True)
    assert saved["priors"] == config["prior_spec"]  # eval / detect / export get the same boxes

    def refit(*args, **kwargs):
        raise AssertionError("a resumed run fitted its default boxes again")

    monkeypatch.setattr("ssdcli.train.setup.auto_prior_spec", refit)
    resumed = fit(None, resume=result.output / "last.pt", overrides={"epochs": 2})  # extended by an epoch
    assert load_checkpoint(resumed.last, for_resume=True)["priors"] == config["prior_spec"]
    assert json.loads((resumed.output / "config.json").read_text())["prior_spec"] == config["prior_spec"]

