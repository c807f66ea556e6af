"""`ssd export`: the parity table and exit 0, exit 1 with nothing kept when parity fails, exit 2
for a bad checkpoint or flag."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ssdcli.cli import export as export_cmd
from ssdcli.export import OnnxDetector

runner = CliRunner()
app = typer.Typer()
app.command("export", help=export_cmd.HELP, epilog=export_cmd.EPILOG)(export_cmd.export)


@app.callback()
def _root() -> None:
    """A local app so the test does not depend on cli/app.py's registration."""


def test_cli_exports_prints_the_parity_table_and_exits_0(lite, tmp_path):
    output = tmp_path / "out" / "lite.onnx"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--output", str(output), "--min-score", "0.05"])
    assert result.exit_code == 0, result.output
    assert output.is_file() and "boxes" in result.stdout and "pass" in result.stdout
    assert OnnxDetector(output).metadata.settings.score_threshold == 0.05


def test_cli_prints_an_output_path_with_rich_markup_as_it_is(lite, tmp_path):
    output = tmp_path / "a[/]b" / "[bold]lite.onnx"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert output.is_file() and f"wrote {output}" in result.stderr.replace("\n", "")


def test_cli_exits_1_and_keeps_nothing_when_parity_fails(lite, tmp_path, monkeypatch):
    from ssdcli.export import pipeline

    real = pipeline._onnx_runner

    def drifting(path):
        run = real(path)
        return lambda images: tuple(o + 1e-3 if o.is_floating_point() else o for o in run(images))

    monkeypatch.setattr(pipeline, "_onnx_runner", drifting)
    output = tmp_path / "raw.onnx"
    result = runner.invoke(app, ["export", "--weights", str(lite), "--output", str(output), "--no-postprocess"])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "1.00e-03" in result.stdout  # the injected difference, printed
    assert not output.exists() and list(tmp_path.iterdir()) == []  # no file, no temp file left


def test_cli_bad_checkpoint_or_flag_exits_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    result = runner.invoke(app, ["export", "--weights", str(bad)])
    assert result.exit_code == 2 and "not an ssdcli checkpoint" in result.stderr
    result = runner.invoke(app, ["export", "--weights", str(bad), "--opset", "11"])
    assert result.exit_code == 2 and "--opset 11" in result.stderr
