"""ONNX / TorchScript writers and loaders: the exporter switch read from torch.onnx.export's
signature, the TorchScript round trip."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from export_testing import network_of

from ssdcli.checkpoint import load_checkpoint
from ssdcli.errors import UserError
from ssdcli.export import ExportOptions, export_checkpoint, load_torchscript
from ssdcli.export.formats import onnx_export_kwargs
from ssdcli.export.graphs import DetectionGraph, RawGraph
from ssdcli.export.metadata import metadata_for
from ssdcli.postprocess import PostprocessSettings
from ssdcli.models import priors_for_model


def test_the_dynamo_switch_is_passed_only_where_the_signature_has_it():
    def with_dynamo(model, args, f, *, opset_version=None, dynamo=True):  # torch >= 2.5
        pass

    def without_dynamo(model, args, f, export_params=True, opset_version=None):  # torch 2.4
        pass

    def keywords_only_in_kwargs(model, args, f, **kwargs):  # no named `dynamo`: not assumed
        pass

    assert onnx_export_kwargs(with_dynamo) == {"dynamo": False}
    assert onnx_export_kwargs(without_dynamo) == {}
    assert onnx_export_kwargs(keywords_only_in_kwargs) == {}


def test_the_installed_torch_onnx_export_gets_the_switch_it_has():
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    assert onnx_export_kwargs() == ({"dynamo": False} if has_dynamo else {})


@pytest.mark.parametrize("postprocess_on", [True, False])
def test_torchscript_round_trip(lite, tmp_path, postprocess_on):
    path = tmp_path / "model.pt"
    report = export_checkpoint(lite, path, ExportOptions(format="torchscript", postprocess=postprocess_on))
    assert report.passed and report.batch_sizes == [2, 1]
    module, metadata = load_torchscript(path)
    assert metadata == metadata_for(load_checkpoint(lite), postprocess_on, PostprocessSettings())
    network = network_of(lite)
    images = torch.randn(3, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    graph = (DetectionGraph if postprocess_on else RawGraph)(
        network, priors_for_model(network), *([PostprocessSettings()] if postprocess_on else [])
    )
    with torch.no_grad():
        expected, got = graph(images), module(images)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_a_file_that_is_not_an_ssdcli_torchscript_export_is_a_user_error(tmp_path):
    text = tmp_path / "model.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a TorchScript file"):
        load_torchscript(text)
    plain = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), str(plain))
    with pytest.raises(UserError, match="without ssdcli metadata"):
        load_torchscript(plain)
