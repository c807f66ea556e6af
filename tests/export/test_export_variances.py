"""A checkpoint's own box-coding variances reach every consumer: eager post-processing, the
exported ONNX / TorchScript graphs, the raw export's decoding in onnxruntime, and the metadata.

The checkpoint's prior spec has variances (0.2, 0.1), Caffe's swapped, so a consumer that falls
back to the default (0.1, 0.2) decodes visibly different boxes. The expected box is decoded here
by hand from the network's raw outputs (SSD paper eq. 2), not through ssdcli.codec: the best
scored (prior, class) of an image is always its first detection (nothing outscores it in NMS).
"""

from __future__ import annotations

import dataclasses
import json
import math

import onnx
import pytest
import torch
from export_testing import network_of, one_torch_thread, small_checkpoint

from ssdcli.checkpoint import load_checkpoint
from ssdcli.export import ExportOptions, OnnxDetector, export_checkpoint, load_torchscript
from ssdcli.export.parity import sample_images
from ssdcli.inference import TorchDetector
from ssdcli.models import priors_for_model
from ssdcli.priors import preset_spec

VARIANCES = (0.2, 0.1)  # centre, size: not the default (0.1, 0.2)


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    spec = dataclasses.replace(preset_spec("ssdlite320"), variances=VARIANCES)
    with one_torch_thread():
        return small_checkpoint(tmp_path_factory.mktemp("var") / "swapped.pt", "ssdlite320", spec, width_mult=0.25)


def _best_box_by_hand(network, image, variances) -> tuple[list[float], float]:
    """The xyxy normalised box (clipped to [0, 1]) and score of the best (prior, class) of one
    image [1, 3, S, S], decoded with ``variances`` by the formula itself."""
    with torch.no_grad():
        cls_logits, box_deltas = network(image)
    scores = torch.softmax(cls_logits[0].double(), dim=-1)[:, 1:]  # (P, C)
    prior = int(scores.max(dim=1).values.argmax())
    pcx, pcy, pw, ph = priors_for_model(network)[prior].double().tolist()
    dcx, dcy, dw, dh = box_deltas[0, prior].double().tolist()
    v_centre, v_size = variances
    cx, cy = pcx + dcx * v_centre * pw, pcy + dcy * v_centre * ph  # SSD paper eq. 2, inverted
    w, h = pw * math.exp(dw * v_size), ph * math.exp(dh * v_size)
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    return [min(max(v, 0.0), 1.0) for v in box], float(scores.max())


@pytest.fixture(scope="module")
def expected(swapped):
    """Image, its best box decoded with the checkpoint's variances, and that box's score."""
    network = network_of(swapped)
    assert network.prior_spec.variances == VARIANCES  # the checkpoint carries them
    image = sample_images(320, network.mean, network.std)[1:]  # the synthetic shapes image
    box, score = _best_box_by_hand(network, image, VARIANCES)
    default_box, _ = _best_box_by_hand(network, image, (0.1, 0.2))
    # The test can fail: the default variances move this box by far more than any tolerance below.
    assert max(abs(a - b) for a, b in zip(box, default_box)) > 0.01
    return image, box, score


def test_eager_postprocessing_decodes_with_the_checkpoint_variances(swapped, expected):
    image, box, score = expected
    detector = TorchDetector(network_of(swapped), torch.device("cpu"))
    best = detector.predict(image, [(320, 240)])[0]
    assert best.scores[0].item() == pytest.approx(score, abs=1e-6)
    assert (best.boxes_xyxy[0] / torch.tensor([320, 240, 320, 240])).tolist() == pytest.approx(box, abs=1e-5)


@pytest.mark.parametrize("postprocess_on", [True, False])
def test_onnx_export_decodes_with_and_records_the_checkpoint_variances(swapped, expected, tmp_path, postprocess_on):
    image, box, score = expected
    path = tmp_path / "swapped.onnx"
    assert export_checkpoint(swapped, path, ExportOptions(postprocess=postprocess_on)).passed

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["variances"]) == list(VARIANCES)
    assert json.loads(props["prior_spec"])["variances"] == list(VARIANCES)
    detector = OnnxDetector(path)
    assert detector.metadata.variances == VARIANCES
    if postprocess_on:  # decoded inside the graph
        boxes, scores, _, _ = detector.run(image)
        assert scores[0].item() == pytest.approx(score, abs=1e-5)
        assert boxes[0].tolist() == pytest.approx(box, abs=1e-5)
    # predict(): in the graph, or (raw export) onnxruntime's outputs decoded with the file's variances
    best = detector.predict(image, [(320, 240)])[0]
    assert (best.boxes_xyxy[0] / torch.tensor([320, 240, 320, 240])).tolist() == pytest.approx(box, abs=1e-5)


def test_torchscript_export_decodes_with_and_records_the_checkpoint_variances(swapped, expected, tmp_path):
    image, box, score = expected
    path = tmp_path / "swapped.pt"
    assert export_checkpoint(swapped, path, ExportOptions(format="torchscript")).passed
    module, metadata = load_torchscript(path)
    assert metadata.variances == VARIANCES and metadata.prior_spec == load_checkpoint(swapped)["priors"]
    with torch.no_grad():
        boxes, scores, _, _ = module(image)
    assert scores[0].item() == pytest.approx(score, abs=1e-5)
    assert boxes[0].tolist() == pytest.approx(box, abs=1e-5)
