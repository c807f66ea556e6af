"""What an exported file says about itself: the metadata written, read back and matching the
checkpoint; the detections of the default export."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from export_testing import CLASSES, as_flat, assert_same_detections, network_of

from ssdcli.checkpoint import load_checkpoint
from ssdcli.export import OnnxDetector
from ssdcli.export.metadata import ExportMetadata, metadata_for
from ssdcli.export.parity import sample_images
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import priors_for_model
from ssdcli.postprocess import postprocess_flat


def test_ssdlite_onnx_detections_match_and_metadata_round_trips(lite, lite_onnx):
    onnx.checker.check_model(str(lite_onnx))
    checkpoint = load_checkpoint(lite)
    detector = OnnxDetector(lite_onnx)
    assert detector.metadata == metadata_for(checkpoint, True, PostprocessSettings())
    assert (detector.class_names, detector.image_size) == (CLASSES, 320)
    assert detector.mean == pytest.approx([0.485, 0.456, 0.406]) and detector.fixed_batch == 1

    props = {p.key: p.value for p in onnx.load(str(lite_onnx)).metadata_props}
    assert json.loads(props["class_names"]) == CLASSES and props["image_size"] == "320"
    assert props["ssdcli_export"] == "detections" and "xyxy normalised" in props["coordinates"]
    assert "RGB, /255, then (x-mean)/std, resized to 320x320 without keeping aspect" in props["input_format"]
    assert json.loads(props["postprocess_settings"])["nms_iou"] == 0.45
    assert ExportMetadata.from_dict(props) == detector.metadata

    network = network_of(lite)
    images = sample_images(320, network.mean, network.std)  # a fixed-batch model runs them one by one
    with torch.no_grad():
        expected = postprocess_flat(*network(images), priors_for_model(network), variances=network.prior_spec.variances)
    got = as_flat(detector.run(images))
    assert set(got.batch_index.tolist()) == {0, 1}
    assert_same_detections(expected, got)


def test_metadata_without_variances_is_malformed(lite):
    values = metadata_for(load_checkpoint(lite), True, PostprocessSettings()).to_strings()
    assert json.loads(values["variances"]) == [0.1, 0.2]  # the preset's, Caffe's prior_variance
    del values["variances"]
    with pytest.raises(ValueError, match="malformed ssdcli export metadata"):
        ExportMetadata.from_dict(values)
