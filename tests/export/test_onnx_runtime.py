"""The onnxruntime detector behind `ssd detect --weights model.onnx`: raw and detections exports,
settings it can and cannot apply, bad files, and the detect pipeline against the checkpoint."""

from __future__ import annotations

import json
import warnings

import onnx
import pytest
import torch
from export_testing import CLASSES, network_of
from torch import nn
from typer.testing import CliRunner

from ssdcli.errors import UserError
from ssdcli.export import ExportOptions, OnnxDetector, export_checkpoint
from ssdcli.export.formats import onnx_export_kwargs
from ssdcli.export.parity import sample_images
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import priors_for_model
from ssdcli.postprocess import postprocess

runner = CliRunner()


def test_raw_onnx_with_dynamic_batch_matches_pytorch_for_1_and_3_images(lite, tmp_path):
    path = tmp_path / "raw.onnx"
    assert export_checkpoint(lite, path, ExportOptions(postprocess=False, dynamic_batch=True)).passed
    onnx.checker.check_model(str(path))
    detector = OnnxDetector(path)
    assert detector.fixed_batch is None and not detector.metadata.postprocess
    network = network_of(lite)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 320, 320, generator=torch.Generator().manual_seed(batch))
        cls_logits, box_deltas, priors = detector.run(images)
        with torch.no_grad():
            expected_logits, expected_deltas = network(images)
        assert cls_logits.shape == (batch, 3234, 4) and box_deltas.shape == (batch, 3234, 4)
        assert (cls_logits - expected_logits).abs().max() < 1e-4
        assert (box_deltas - expected_deltas).abs().max() < 1e-4
        assert torch.equal(priors, priors_for_model(network))  # (3234, 4) cxcywh, a constant output

        # predict() runs the very post-processing of eval/detect on the onnxruntime outputs
        sizes = [(500, 375)] * batch
        got = detector.predict(images, sizes)
        want = postprocess(
            expected_logits, expected_deltas, priors_for_model(network), image_sizes=sizes,
            variances=network.prior_spec.variances,
        )
        for g, w in zip(got, want):
            assert torch.equal(g.labels, w.labels)
            assert torch.allclose(g.boxes_xyxy, w.boxes_xyxy, atol=1e-3 * 500)


def test_detections_export_predict_applies_a_higher_threshold_and_refuses_other_nms(lite_onnx):
    images = sample_images(320, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    sizes = [(320, 320), (640, 480)]
    full = OnnxDetector(lite_onnx).predict(images, sizes)
    cut = OnnxDetector(lite_onnx, PostprocessSettings(score_threshold=0.26, max_detections=5)).predict(images, sizes)
    for f, c in zip(full, cut):
        keep = min(int((f.scores > 0.26).sum()), 5)
        assert torch.equal(c.scores, f.scores[:keep]) and torch.equal(c.boxes_xyxy, f.boxes_xyxy[:keep])
    # boxes in pixels: x scales by the width, y by the height
    assert full[1].boxes_xyxy[:, 0::2].max() <= 640 and full[1].boxes_xyxy[:, 1::2].max() <= 480
    with pytest.raises(UserError, match="nms-iou 0.5"):
        OnnxDetector(lite_onnx, PostprocessSettings(nms_iou=0.5))
    with pytest.raises(UserError, match="lower --min-score"):
        OnnxDetector(lite_onnx, PostprocessSettings(score_threshold=0.001))


def test_sessions_stop_spinning_when_a_run_returns(lite_onnx):
    """torch pre- and post-processes between two runs; idle onnxruntime workers spinning on the
    cores made an SSDLite batch of one about twice as slow (README "CPU speed notes")."""
    options = OnnxDetector(lite_onnx).session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_not_an_onnx_file_or_not_an_ssdcli_export_is_a_user_error(tmp_path):
    text = tmp_path / "model.onnx"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an ONNX model"):
        OnnxDetector(text)
    with pytest.raises(UserError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        torch.onnx.export(
            nn.Linear(2, 2), (torch.zeros(1, 2),), str(plain), input_names=["images"], **onnx_export_kwargs()
        )
    with pytest.raises(UserError, match="without ssdcli metadata"):
        OnnxDetector(plain)
    with pytest.raises(UserError, match="opset 16"):
        ExportOptions(opset=16)


@pytest.mark.parametrize("postprocess_on", [False, True])
def test_detect_pipeline_through_onnx_equals_the_checkpoint_on_real_images(
    lite, lite_onnx, shared_data, tmp_path, postprocess_on
):
    """What `ssd detect --weights model.onnx` runs (image_loader + predict_batches with an
    OnnxDetector) gives the checkpoint's detections (TorchDetector) on real VOC images."""
    from ssdcli.inference import TorchDetector, image_loader, predict_batches

    if postprocess_on:
        path = lite_onnx
    else:
        path = tmp_path / "raw.onnx"
        assert export_checkpoint(lite, path, ExportOptions(postprocess=False, dynamic_batch=True)).passed
    paths = sorted((shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:4]
    settings = PostprocessSettings(score_threshold=0.2)
    torch_detector = TorchDetector(network_of(lite), torch.device("cpu"), settings, class_names=CLASSES)
    onnx_detector = OnnxDetector(path, settings)

    def run(detector):
        loader = image_loader(paths, detector, batch_size=2, workers=0)
        return [(size, d) for b in predict_batches(detector, loader) for size, d in zip(b.sizes, b.detections)]

    expected, got = run(torch_detector), run(onnx_detector)
    assert len(got) == len(expected) == 4 and sum(len(d.scores) for _, d in expected) > 0
    for (size, e), (_, g) in zip(expected, got):
        # Equal scores (one prior, two classes at exactly the same probability) may come in either
        # order: compare in a canonical order, score (to 1e-5) then label.
        e, g = _canonical(e), _canonical(g)
        assert torch.equal(g.labels, e.labels)
        assert torch.allclose(g.boxes_xyxy, e.boxes_xyxy, atol=1e-3 * max(size))  # 1e-3 normalised
        assert torch.allclose(g.scores, e.scores, atol=1e-4)


def _canonical(detections):
    """Detections sorted by score rounded to 1e-5 (descending), then label."""
    key = torch.round(detections.scores * 1e5).long() * 1000 - detections.labels  # (K,)
    order = torch.argsort(key, descending=True, stable=True)
    return type(detections)(detections.boxes_xyxy[order], detections.scores[order], detections.labels[order])


def test_ssd_detect_cli_with_the_onnx_file_gives_the_checkpoints_detections(lite, lite_onnx, shared_data, tmp_path):
    """`ssd detect --weights model.onnx` through the real app (cli/app.py) equals `--weights CKPT`."""
    from ssdcli.cli.app import app as ssd_app

    images = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages"
    sources = [str(images / name) for name in ("000001.jpg", "000004.jpg")]
    outputs = {}
    for kind, weights in (("ckpt", lite), ("onnx", lite_onnx)):
        target = tmp_path / f"{kind}.json"
        result = runner.invoke(ssd_app, ["detect", *sources, "--weights", str(weights), "--min-score", "0.2",
                                         "--workers", "0", "--json", str(target)])
        assert result.exit_code == 0, result.output
        outputs[kind] = json.loads(target.read_text())
    assert sum(len(entry["detections"]) for entry in outputs["ckpt"]) > 0
    for expected, got in zip(outputs["ckpt"], outputs["onnx"], strict=True):
        assert [d["label"] for d in got["detections"]] == [d["label"] for d in expected["detections"]]
        for e, g in zip(expected["detections"], got["detections"]):
            assert g["box"] == pytest.approx(e["box"], abs=1e-3 * max(expected["width"], expected["height"]))
            assert g["score"] == pytest.approx(e["score"], abs=1e-4)
