"""The parity check: exports match PyTorch at fixed and dynamic batch, and the PyTorch side of the
check computes its convolutions directly, as the exported graph does."""

from __future__ import annotations

import onnx
import pytest
import torch
from export_testing import as_flat, assert_same_detections, network_of, small_checkpoint

from ssdcli.export import ExportOptions, OnnxDetector, export_checkpoint
from ssdcli.export.parity import sample_images
from ssdcli.models import priors_for_model
from ssdcli.postprocess import postprocess_flat


@pytest.mark.slow
def test_ssd300_onnx_with_postprocess_matches_pytorch_at_batch_1(tmp_path):
    checkpoint = small_checkpoint(tmp_path / "ssd300.pt", "ssd300")
    report = export_checkpoint(checkpoint, tmp_path / "ssd300.onnx", ExportOptions(postprocess=True))
    assert report.passed and report.batch_sizes == [1, 1]
    onnx.checker.check_model(str(tmp_path / "ssd300.onnx"))

    network = network_of(checkpoint)
    detector = OnnxDetector(tmp_path / "ssd300.onnx")
    images = sample_images(300, network.mean, network.std)[1:]  # the synthetic shapes image
    with torch.no_grad():
        expected = postprocess_flat(*network(images), priors_for_model(network), variances=network.prior_spec.variances)
    assert_same_detections(expected, as_flat(detector.run(images)))


def test_parity_reference_computes_convolutions_directly(lite, tmp_path, monkeypatch):
    """The exported graph has direct convolutions; so must the PyTorch side of the check, or a
    trained SSD300's Winograd differences (~1e-5 of the largest logit) would eat the tolerance."""
    from ssdcli.export import pipeline
    from ssdcli.models import winograd

    seen = []
    original = pipeline.check_parity

    def spy(*args, **kwargs):
        seen.append(winograd._DIRECT.get())
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "check_parity", spy)
    report = export_checkpoint(lite, tmp_path / "lite.onnx", ExportOptions(postprocess=False))
    assert report.passed and seen == [True]
    assert not winograd._DIRECT.get()
