"""The traced graphs: the detection graph records NMS even when the trace's threshold leaves
nothing, and a traced graph computes what the eager one does."""

from __future__ import annotations

import torch
from export_testing import as_flat, assert_same_detections, network_of

from ssdcli.export.graphs import DetectionGraph, RawGraph, trace_graph
from ssdcli.export.parity import sample_images
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import priors_for_model
from ssdcli.postprocess import postprocess_flat


def test_trace_records_nms_even_when_the_threshold_leaves_nothing(lite):
    network = network_of(lite)
    priors = priors_for_model(network)
    images = sample_images(320, network.mean, network.std)
    graph = DetectionGraph(network, priors, PostprocessSettings(score_threshold=0.99))
    traced = trace_graph(graph, images)
    boxes, scores, labels, batch_index = traced(images)
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == batch_index.shape == (0,)
    # The same traced graph with a lower threshold finds what eager PyTorch finds: NMS was traced.
    traced.score_threshold.fill_(0.2)
    with torch.no_grad():
        expected = postprocess_flat(
            *network(images), priors, score_threshold=0.2, variances=network.prior_spec.variances
        )
    assert_same_detections(expected, as_flat(traced(images)))


def test_raw_graph_returns_the_network_outputs_and_its_priors(lite):
    network = network_of(lite)
    priors = priors_for_model(network)
    images = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    traced = trace_graph(RawGraph(network, priors), images[:1])
    with torch.no_grad():
        cls_logits, box_deltas = network(images)
        got = traced(images)  # traced at batch 1, run at batch 2
    assert torch.equal(got[0], cls_logits) and torch.equal(got[1], box_deltas)
    assert torch.equal(got[2], priors) and got[2].shape == (3234, 4)
