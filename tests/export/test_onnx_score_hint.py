"""The zero-detection hint with an exported model: a raw export sees every score, a detections
export only those above its export threshold (the graph's outputs are not changed for it)."""

from __future__ import annotations

import math

import torch
from export_testing import network_of

from ssdcli.export import ExportOptions, OnnxDetector, export_checkpoint
from ssdcli.export.parity import sample_images
from ssdcli.inference import Timings
from ssdcli.postprocess import PostprocessSettings


def _expected_best(lite) -> tuple[torch.Tensor, torch.Tensor]:
    network = network_of(lite)
    images = sample_images(network.image_size, network.mean, network.std)
    with torch.no_grad():
        cls_logits, _ = network(images)
    return images, torch.softmax(cls_logits, dim=-1)[..., 1:].amax(dim=(0, 1))  # (C,) by hand


def test_a_detections_export_reports_the_best_scores_it_returns(lite, lite_onnx):
    images, expected = _expected_best(lite)
    sizes = [(320, 320)] * images.shape[0]
    exported = OnnxDetector(lite_onnx).metadata.settings.score_threshold
    timings = Timings()
    detections = OnnxDetector(lite_onnx, PostprocessSettings(score_threshold=0.99)).predict(images, sizes, timings)
    assert all(d.scores.numel() == 0 for d in detections)  # cut at 0.99
    assert timings.hidden_below == exported
    # a class whose best probability is above the export threshold is seen exactly; others are NaN
    seen = expected > exported
    assert seen.any()
    assert torch.allclose(timings.best_scores[seen], expected[seen], atol=1e-4)
    assert torch.isnan(timings.best_scores[~seen]).all()


def test_a_raw_export_reports_every_class_best_score(lite, tmp_path):
    path = tmp_path / "raw.onnx"
    assert export_checkpoint(lite, path, ExportOptions(postprocess=False, dynamic_batch=True)).passed
    images, expected = _expected_best(lite)
    timings = Timings()
    OnnxDetector(path, PostprocessSettings(score_threshold=0.99)).predict(images, [(320, 320)] * len(images), timings)
    assert timings.hidden_below == 0 and not math.isnan(float(timings.best_scores.sum()))
    assert torch.allclose(timings.best_scores, expected, atol=1e-4)
