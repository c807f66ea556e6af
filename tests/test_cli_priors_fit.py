"""`ssd priors --fit DATA` and `ssd priors --spec FILE` on a tiny VOC folder of known boxes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ssdcli.cli.app import app
from ssdcli.data.synth import voc_annotation_xml
from ssdcli.prior_file import load_prior_spec, spec_file_payload
from ssdcli.priors import ssd300_spec

runner = CliRunner()


def write_voc(root: Path, objects_per_image: list[list[tuple[int, int, int, int]]], name: str = "tall[/]") -> Path:
    """A VOC folder of 640 x 320 grey images. Boxes are given at ssdlite320's input (320 x 320):
    x is doubled for the image (SSD squeezes it back), so a 24 x 72 box is 48 x 72 here."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    image = np.full((320, 640, 3), 127, np.uint8)
    for index, boxes in enumerate(objects_per_image):
        stem = f"{index:04d}"
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), image)
        objects = [(name, (2 * x1, y1, 2 * x2, y2)) for x1, y1, x2, y2 in boxes]
        (root / "Annotations" / f"{stem}.xml").write_text(voc_annotation_xml(f"{stem}.jpg", 640, 320, objects))
    return root


@pytest.fixture(scope="module")
def tall_data(tmp_path_factory) -> Path:
    """48 boxes of 24 x 72 input pixels centred on cells of ssdlite320's layer 0 (step 16)."""
    images = []
    for i in range(8):
        boxes = []
        for j in range(6):
            cx, cy = 8 + 16 * (2 + 2 * j), 8 + 16 * (3 + i)  # cell centres, 8 + 16 k px
            boxes.append((cx - 12, cy - 36, cx + 12, cy + 36))
        images.append(boxes)
    return write_voc(tmp_path_factory.mktemp("tall") / "data", images)


@pytest.fixture(scope="module")
def fitted(tall_data, tmp_path_factory) -> tuple[Path, str]:
    target = tmp_path_factory.mktemp("fit") / "priors.json"
    result = runner.invoke(app, ["priors", "--arch", "ssdlite320", "--fit", str(tall_data), "--output", str(target)])
    assert result.exit_code == 0, result.output
    return target, result.stdout


def test_fit_prints_the_three_specs_side_by_side_and_writes_the_spec(fitted):
    target, stdout = fitted
    assert "preset" in stdout and "linear 0.1-0.95" in stdout and "fitted" in stdout
    all_row = next(line for line in stdout.splitlines() if line.startswith("│ all"))
    cells = [cell.strip() for cell in all_row.split("│")[1:-1]]  # group, boxes, preset, linear, fitted
    # the preset covers none of the 24 x 72 boxes (its best: the 37 x 111 ratio-3 box on the
    # same centre, area 64^2: IoU 1728 / 4096 = 0.422),
    # the fit all of them, nearly exactly (centres on the grid, sizes on a 10 % grid)
    assert cells[:3] == ["all", "48", "0.0 % / 0.422"]
    assert cells[4].startswith("100.0 % / ") and float(cells[4].split("/ ")[1]) > 0.95
    assert "tall[/]" in stdout  # the class name, escaped for rich, shown as it is
    spec = load_prior_spec(target, "ssdlite320")
    assert 3.0 in spec.layers[0].aspect_ratios
    data = json.loads(target.read_text())
    assert data["arch"] == "ssdlite320" and data["budget"] == "same" and data["fit"]["seed"] == 0
    assert data["fit"]["specs"]["fitted"]["covered"] == 1.0 and data["fit"]["specs"]["preset"]["covered"] == 0.0


def test_same_seed_same_file(tall_data, fitted, tmp_path):
    again = tmp_path / "again.json"
    result = runner.invoke(app, ["priors", "--arch", "ssdlite320", "--fit", str(tall_data), "--output", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == fitted[0].read_bytes()


def test_spec_shows_like_a_preset(fitted, tall_data, tmp_path):
    target, _ = fitted
    spec = load_prior_spec(target, "ssdlite320")
    table = runner.invoke(app, ["priors", "--spec", str(target)])
    assert table.exit_code == 0, table.output
    assert "ssdlite320-fit" in table.stdout and str(spec.num_priors) in table.stdout
    rows = list(csv.reader(io.StringIO(runner.invoke(app, ["priors", "--spec", str(target), "--format", "csv"]).stdout)))
    assert len(rows) == spec.num_priors + 1
    plot = tmp_path / "fit.png"
    drawn = runner.invoke(app, ["priors", "--spec", str(target), "--arch", "ssdlite320", "--plot", str(plot)])
    assert drawn.exit_code == 0, drawn.output
    image = cv2.imread(str(plot))
    assert image is not None and image.std() > 0
    coverage = runner.invoke(app, ["priors", "--spec", str(target), "--data", str(tall_data), "--format", "json"])
    assert coverage.exit_code == 0, coverage.output
    assert json.loads(coverage.stdout)["overall"]["share_below_threshold"] == 0.0


def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr


def test_user_errors_are_one_line(fitted, tall_data, tmp_path):
    target, _ = fitted
    before = target.read_bytes()
    one_error_line(runner.invoke(app, ["priors", "--arch", "ssdlite320", "--fit", str(tall_data), "--output", str(target)]),
                   "exists")
    assert target.read_bytes() == before
    one_error_line(runner.invoke(app, ["priors", "--spec", str(target), "--arch", "ssd300"]), "a spec for ssdlite320, not ssd300")
    one_error_line(runner.invoke(app, ["priors", "--spec", str(target), "--prior-scales", "0.1", "0.9"]), "--prior-scales")
    one_error_line(runner.invoke(app, ["priors", "--fit", str(tall_data), "--spec", str(target)]), "--fit")
    for budget in ("x", "1"):
        one_error_line(runner.invoke(app, ["priors", "--fit", str(tall_data), "--budget", budget,
                                           "--output", str(tmp_path / "b.json")]), f"--budget {budget}")
    one_error_line(runner.invoke(app, ["priors", "--spec", str(tmp_path / "none.json")]), "no such prior spec file")


def test_a_spec_with_more_boxes_than_the_head_is_refused(tmp_path):
    spec = ssd300_spec()
    layers = (spec.layers[0].__class__(38, 8.0, 30.0, 60.0, (2.0, 3.0)),) + spec.layers[1:]  # 6 > 4 boxes
    bigger = spec.__class__(spec.name, spec.image_size, layers)
    target = tmp_path / "big.json"
    target.write_text(json.dumps(spec_file_payload(bigger, "ssd300", None)))
    one_error_line(runner.invoke(app, ["priors", "--spec", str(target)]), "layer 0 has 6 boxes per location", "--budget 6")


def test_an_empty_dataset_is_refused(tmp_path):
    empty = write_voc(tmp_path / "empty", [[]])
    one_error_line(runner.invoke(app, ["priors", "--fit", str(empty), "--output", str(tmp_path / "p.json")]),
                   "no ground-truth boxes")
    assert not (tmp_path / "p.json").exists()


def test_fit_as_json_with_a_budget(tall_data, tmp_path):
    target = tmp_path / "p8.json"
    result = runner.invoke(app, ["priors", "--arch", "ssd300", "--fit", str(tall_data), "--budget", "8", "--format", "json",
                                 "--output", str(target), "--prior-scales", "0.05", "0.9"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["specs"]) == {"preset", "linear 0.05-0.9", "fitted"}
    assert max(report["specs"]["fitted"]["boxes_per_location"]) <= 8
    assert json.loads(target.read_text())["budget"] == 8
    assert load_prior_spec(target, "ssd300").num_priors == report["specs"]["fitted"]["num_priors"]


def test_coverage_table_shows_markup_like_class_names(tall_data):
    result = runner.invoke(app, ["priors", "--arch", "ssdlite320", "--data", str(tall_data)])
    assert result.exit_code == 0, result.output
    assert "tall[/]" in result.stdout
