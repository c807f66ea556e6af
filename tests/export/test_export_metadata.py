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
    assert "RGB, /255, then (x-mean)/std (mean and std in that channel order), resized to 320x320 without " \
        "keeping aspect (bilinear, no antialias, on the uint8 image" in props["input_format"]
    assert json.loads(props["postprocess_settings"])["nms_iou"] == 0.45
    assert json.loads(props["postprocess_settings"])["rule"] == "caffe"
    assert (props["channel_order"], props["resize"], props["category_ids"], props["ignored_labels"]) == (
        "rgb", "uint8", "null", "[]")
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


def test_metadata_of_an_imported_model_and_of_an_older_export():
    """An imported model's preprocessing and labels travel in the metadata; an export written
    before these keys existed reads as RGB / uint8 with the clip-first rule it was made with."""
    from ssdcli.postprocess import PostprocessSettings

    meta = ExportMetadata(
        arch="ssd300", class_names=["a", "N/A", "b"], image_size=300, mean=(0.5,) * 3, std=(0.5,) * 3,
        postprocess=True, settings=PostprocessSettings(rule="torchvision"), variances=(0.1, 0.2),
        channel_order="bgr", resize="float", category_ids=[1, 12, 2], ignored_labels=(2,),
    )
    back = ExportMetadata.from_dict(meta.to_strings())
    assert back == meta and back.preprocessing.channel_order == "bgr" and "BGR" in meta.to_dict()["input_format"]
    old = {k: v for k, v in meta.to_strings().items() if k not in ("channel_order", "resize", "category_ids", "ignored_labels")}
    old["postprocess_settings"] = json.dumps({k: v for k, v in meta.settings.to_dict().items() if k != "rule"})
    older = ExportMetadata.from_dict(old)
    assert (older.channel_order, older.resize, older.category_ids, older.ignored_labels) == ("rgb", "uint8", None, ())
    assert older.settings.rule == "torchvision"
