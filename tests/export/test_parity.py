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


def test_raw_outputs_may_differ_by_a_millionth_of_their_magnitude_or_1e_4():
    from ssdcli.export.parity import compare_raw

    def outputs(logit_scale: float, shift: float) -> list[torch.Tensor]:
        logits = torch.linspace(-logit_scale, logit_scale, 24).reshape(1, 4, 6)
        return [logits + shift, torch.zeros(1, 4, 4), torch.full((4, 4), 0.5)]

    # trained logits near 200: 1.5e-4 is 10 float32 steps there, within 1e-6 x 200 = 2e-4
    large = compare_raw(outputs(200.0, 0.0), outputs(200.0, 1.5e-4))
    assert [c.name for c in large] == ["cls_logits", "box_deltas", "priors"]
    assert large[0].tolerance == pytest.approx(2e-4) and large[0].passed
    assert large[1].tolerance == 1e-4 and large[1].max_diff == 0.0
    # small logits keep the absolute 1e-4
    small = compare_raw(outputs(5.0, 0.0), outputs(5.0, 1.5e-4))
    assert small[0].tolerance == 1e-4 and not small[0].passed


def test_several_runs_keep_the_difference_and_tolerance_of_the_run_nearest_failing():
    from ssdcli.export.parity import OutputCheck, _merge_checks

    big = OutputCheck("cls_logits", "(2, 5)", 1.5e-4, 3e-4)  # logits near 300: passes
    small = OutputCheck("cls_logits", "(1, 5)", 0.5e-4, 1e-4)  # logits near 5
    merged = _merge_checks([[big], [small]])[0]
    assert (merged.max_diff, merged.tolerance, merged.shape) == (1.5e-4, 3e-4, "(2, 5); (1, 5)") and merged.passed
    failing = OutputCheck("cls_logits", "(1, 5)", 1.2e-4, 1e-4)
    assert not _merge_checks([[big], [failing]])[0].passed
    assert not _merge_checks([[failing], [big]])[0].passed
    nan = OutputCheck("cls_logits", "(1, 6)", float("nan"), 1e-4)
    assert not _merge_checks([[big], [nan]])[0].passed
