import csv
import io
import json

import cv2
import pytest
import torch
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.priors import generate_priors, ssd300_spec, ssd512_spec

runner = CliRunner()


def test_table_lists_layers_and_total():
    result = runner.invoke(app, ["priors"])
    assert result.exit_code == 0, result.output
    assert "8732" in result.stdout and "38x38" in result.stdout and "5776" in result.stdout


@pytest.mark.parametrize("arch, spec, count", [("ssd300", ssd300_spec, 8732), ("ssd512", ssd512_spec, 24564)])
def test_csv_is_header_and_every_box(arch, spec, count):
    result = runner.invoke(app, ["priors", "--arch", arch, "--format", "csv"])
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["cx", "cy", "w", "h"]
    assert len(rows) == count + 1
    values = torch.tensor([[float(v) for v in row] for row in rows[1:]])
    assert torch.allclose(values, generate_priors(spec()), atol=1e-6)


def test_json_with_show_and_output_file(tmp_path):
    target = tmp_path / "p.json"
    result = runner.invoke(app, ["priors", "--format", "json", "--show", "--output", str(target)])
    assert result.exit_code == 0
    data = json.loads(target.read_text())
    assert data["total"] == 8732 and len(data["layers"]) == 6
    assert len(data["priors_cxcywh_norm"]) == 8732
    assert data["layers"][1]["boxes_per_location"] == 6


def test_show_as_text_lists_every_box():
    result = runner.invoke(app, ["priors", "--show"])
    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == 8732 + 1


def test_plot_writes_a_png(tmp_path):
    target = tmp_path / "priors.png"
    result = runner.invoke(app, ["priors", "--plot", str(target)])
    assert result.exit_code == 0
    image = cv2.imread(str(target))
    assert image is not None and image.shape[0] > 300 and image.std() > 0


def test_bad_arch_is_a_user_error():
    result = runner.invoke(app, ["priors", "--arch", "ssd9000"])
    assert result.exit_code == 2


def test_unwritable_plot_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["priors", "--plot", str(tmp_path / "x.unknownext")])
    assert result.exit_code == 2
    assert "x.unknownext" in result.stderr


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).stdout.startswith("ssd ")
    result = runner.invoke(app, ["priors", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout


def test_prior_scales_change_the_sizes_and_refuse_impossible_ranges():
    result = runner.invoke(app, ["priors", "--arch", "ssdlite320", "--prior-scales", "0.1", "0.95", "--format", "json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert [round(layer["min_size"], 1) for layer in layers] == [32.0, 86.4, 140.8, 195.2, 249.6, 304.0]
    bad = runner.invoke(app, ["priors", "--prior-scales", "0.9", "0.1"])
    assert bad.exit_code == 2 and "0 < MIN < MAX <= 1" in bad.output
