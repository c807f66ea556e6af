"""Fixtures of the export tests: one small SSDLite checkpoint and its default ONNX export, built
once per session (an export traces, writes and runs the model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_testing import one_torch_thread, small_checkpoint

from ssdcli.export import ExportOptions, export_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def lite(tmp_path_factory) -> Path:
    with one_torch_thread():
        return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "lite.pt", "ssdlite320", width_mult=0.25)


@pytest.fixture(scope="session")
def lite_onnx(lite, tmp_path_factory) -> Path:
    """ssdlite320 with post-processing, fixed batch 1 (the default export)."""
    output = tmp_path_factory.mktemp("onnx") / "lite.onnx"
    with one_torch_thread():
        report = export_checkpoint(lite, output, ExportOptions())
    assert report.passed, report.checks
    return output
