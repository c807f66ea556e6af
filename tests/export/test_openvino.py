"""`ssd export --format openvino` and OpenVinoDetector: the IR holds the ONNX file's metadata and
computes what PyTorch does at fp32; bf16 / int8 are judged by their mAP change; what cannot run
is refused in one line."""

from __future__ import annotations

import sys

import pytest
import typer
from typer.testing import CliRunner

from ssdcli.cli import export as export_cmd
from ssdcli.errors import UserError
from ssdcli.export import OnnxDetector

pytest.importorskip("openvino")

from ssdcli.export.accuracy import AccuracyCheck  # noqa: E402
from ssdcli.export.openvino import OpenVinoDetector  # noqa: E402

runner = CliRunner()
app = typer.Typer()
app.command("export", help=export_cmd.HELP, epilog=export_cmd.EPILOG)(export_cmd.export)


@app.callback()
def _root() -> None:
    """A local app so the test does not depend on cli/app.py's registration."""


@pytest.fixture(scope="module")
def lite_ir(lite, tmp_path_factory):
    """The lite checkpoint as an fp32 IR with post-processing (the default export)."""
    output = tmp_path_factory.mktemp("ir") / "a[/]b" / "lite.xml"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "openvino", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output, result


@pytest.mark.slow
def test_export_writes_an_ir_with_the_onnx_metadata_checked_at_fp32(lite_ir, lite_onnx):
    output, result = lite_ir
    assert output.is_file() and output.with_suffix(".bin").is_file()
    assert sorted(p.name for p in output.parent.iterdir()) == ["lite.bin", "lite.xml"]  # no temp file left
    assert "openvino boxes" in result.stdout and "onnx boxes" in result.stdout and "FAIL" not in result.stdout
    assert f"wrote {output} (ssdlite320, fp32" in result.stderr.replace("\n", "")  # markup in the path kept
    detector = OpenVinoDetector(output)
    assert detector.metadata == OnnxDetector(lite_onnx).metadata  # same keys and values as the ONNX file
    assert detector.precision == "fp32" and detector.backend == "openvino"


@pytest.mark.slow
def test_the_ir_runs_in_detect_like_the_onnx_file(lite_ir, lite_onnx):
    from ssdcli.export.parity import sample_images
    from ssdcli.inference import load_detector

    output, _ = lite_ir
    ir, onnx = load_detector(output, "cpu"), load_detector(lite_onnx, "cpu")
    images = sample_images(ir.image_size, ir.mean, ir.std)
    sizes = [(640, 480), (300, 500)]
    for a, b in zip(ir.predict(images, sizes), onnx.predict(images[:1], sizes[:1]) + onnx.predict(images[1:], sizes[1:])):
        assert sorted(a.labels.tolist()) == sorted(b.labels.tolist()) and a.scores.numel() > 0
        assert (a.scores - b.scores).abs().max() < 1e-4
        # Two detections whose scores differ by ~1e-8 may be listed in either order by the two
        # runtimes (float rounding of their kernels): each detection of one is one of the other's.
        for box, score, label in zip(a.boxes_xyxy, a.scores, a.labels):
            close = (b.labels == label) & ((b.boxes_xyxy - box).abs().amax(1) < 1e-2) & ((b.scores - score).abs() < 1e-4)
            assert close.any(), (box, score, label)


@pytest.mark.slow
def test_precision_rules_of_an_ir(lite_ir):
    output, _ = lite_ir
    with pytest.raises(UserError, match="has decoding and NMS inside, which OpenVINO cannot run at bf16"):
        OpenVinoDetector(output, precision="bf16")  # OpenVINO 2026.4 crashes on an empty NMS at bf16
    with pytest.raises(UserError, match="int8 needs a quantized one: `ssd export --format openvino --precision int8"):
        OpenVinoDetector(output, precision="int8")


def test_an_xml_that_is_not_ours_or_missing_is_one_line(tmp_path):
    with pytest.raises(UserError, match="OpenVINO model not found"):
        OpenVinoDetector(tmp_path / "none.xml")
    (tmp_path / "bad.xml").write_text("<net/>")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(UserError, match="not an OpenVINO model OpenVINO can read"):
        OpenVinoDetector(tmp_path / "bad.xml")


def test_flags_that_do_not_fit_the_format_are_refused(lite, tmp_path):
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "onnx", "--precision", "int8"])
    assert result.exit_code == 2 and "are for --format openvino" in result.stderr
    openvino = ["export", "--weights", str(lite), "--format", "openvino"]
    result = runner.invoke(app, [*openvino, "--precision", "int8"])
    assert result.exit_code == 2 and "bf16 and int8 OpenVINO models hold raw outputs" in result.stderr
    assert "add --no-postprocess" in result.stderr
    result = runner.invoke(app, [*openvino, "--precision", "int8", "--no-postprocess"])
    assert result.exit_code == 2 and "--precision int8 needs --calibration-data DIR" in result.stderr
    result = runner.invoke(app, [*openvino, "--precision", "bf16", "--no-postprocess"])
    assert result.exit_code == 2 and "give --val-data DIR" in result.stderr
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "openvino", "--output", str(tmp_path / "m.bin")])
    assert result.exit_code == 2 and "an OpenVINO model is an .xml file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_openvino_in_export_is_one_line(lite, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "openvino", "--output", str(tmp_path / "m.xml")])
    assert result.exit_code == 2 and "pip install 'ssdcli[openvino]'" in result.stderr
    assert not (tmp_path / "m.xml").exists()


@pytest.mark.slow
def test_a_map_drop_above_the_limit_exits_1_and_keeps_nothing(lite, tmp_path, monkeypatch):
    from ssdcli.data.synth import make_synthetic_dataset
    from ssdcli.export import ir

    data = tmp_path / "synth"
    make_synthetic_dataset(data, num_images=4, seed=2)
    # an accuracy check that loses 1.5 points, whatever the model does
    monkeypatch.setattr(ir, "accuracy_check", lambda onnx, xml, precision, data, max_drop: AccuracyCheck(
        precision, data, 4, 0.600, 0.585, max_drop))
    output = tmp_path / "out" / "m.xml"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "openvino", "--precision", "bf16",
                                 "--no-postprocess", "--val-data", str(data), "--output", str(output)])
    assert result.exit_code == 1, result.output
    assert "60.00" in result.stdout and "58.50" in result.stdout and "-1.50" in result.stdout and "FAIL" in result.stdout
    assert "loses more VOC07 mAP than --max-map-drop allows" in result.stderr
    assert not output.exists() and list(output.parent.iterdir()) == []
    result = runner.invoke(app, ["export", "--weights", str(lite), "--format", "openvino", "--precision", "bf16",
                                 "--no-postprocess", "--val-data", str(data), "--output", str(output),
                                 "--max-map-drop", "2"])
    assert result.exit_code == 0 and output.is_file() and OpenVinoDetector(output).precision == "bf16"
    assert "openvino cls_logits" in result.stdout  # bf16 is first checked at fp32 against PyTorch
