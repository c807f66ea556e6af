"""`ssd data check`, `ssd data synth` and `ssd priors --data` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ssdcli.cli import priors as priors_cmd
from ssdcli.cli.data import data_app

# A local app with the same registration cli/app.py uses, so these tests do not depend on it.
app = typer.Typer()
app.add_typer(data_app, name="data")
app.command("priors")(priors_cmd.priors)
runner = CliRunner()

JSON_KEYS = ["format", "classes", "num_images", "num_boxes", "boxes_per_class", "box_sizes", "problems"]


def run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize(
    ("folder", "code", "images", "boxes"),
    [("raccoon", 0, 200, 217), ("bccd", 0, 364, 4888), ("coco128", 0, 128, 939), ("voc2007_sample", 0, 13, 41)],
)
def test_check_shared_datasets(shared_data: Path, tmp_path: Path, folder: str, code: int, images: int, boxes: int) -> None:
    report = tmp_path / "report.json"
    result = run("data", "check", str(shared_data / folder), "--json", str(report))
    assert result.exit_code == code, result.output
    assert "training can proceed" in result.output and "Classes" in result.output
    payload = json.loads(report.read_text())
    assert list(payload) == JSON_KEYS
    assert (payload["num_images"], payload["num_boxes"]) == (images, boxes)
    assert all(set(p) == {"file", "severity", "message"} for p in payload["problems"])


def test_check_json_box_sizes_are_the_numbers_of_the_size_table(shared_data: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run("data", "check", str(shared_data / "voc2007_sample"), "--json", str(report), "--no-decode")
    sizes = json.loads(report.read_text())["box_sizes"]
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.count("│") >= 4}
    for name in ("width", "height", "area"):
        assert rows[name] == [f"{sizes[name][k]:,.0f}" for k in ("min", "median", "max")]
    assert rows["small (< 32²)"][0] == str(sizes["small"]) and rows["large (≥ 96²)"][0] == str(sizes["large"])
    assert sizes["small"] + sizes["medium"] + sizes["large"] == 41  # every box of the sample
    assert sizes["width"]["min"] <= sizes["width"]["median"] <= sizes["width"]["max"]


def test_check_bccd_lists_its_problems(shared_data: Path) -> None:
    result = run("data", "check", str(shared_data / "bccd"), "--json", "-", "--no-decode")
    payload = json.loads(result.output)
    assert payload["classes"] == ["Platelets", "RBC", "WBC"]
    assert [Path(p["file"]).stem for p in payload["problems"]] == ["BloodImage_00338", "BloodImage_00343"]


def test_check_unreadable_or_missing_dataset_exits_2(shared_data: Path, tmp_path: Path) -> None:
    cartucho = run("data", "check", str(shared_data / "cartucho_map_sample"))
    assert cartucho.exit_code == 2 and "not read" in cartucho.output
    missing = run("data", "check", str(tmp_path / "absent"))
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    empty = run("data", "check", str(tmp_path))
    assert empty.exit_code == 2 and "no images/annotations found" in empty.output


def test_check_exits_1_when_training_cannot_proceed(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("<annotation><object>")  # malformed: an error
    (tmp_path / "a.jpg").write_bytes(b"")
    result = run("data", "check", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 1 and "NOT READY" in result.output
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    assert problems[0]["severity"] == "error" and problems[0]["file"].endswith("a.xml")


def test_check_with_classes_file(shared_data: Path, tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("WBC\nRBC\n")
    result = run("data", "check", str(shared_data / "bccd"), "--classes", str(classes), "--json", "-", "--no-decode")
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert payload["classes"] == ["WBC", "RBC"] and payload["boxes_per_class"] == {"WBC": 372, "RBC": 4155}
    assert sum("'Platelets' is not in the class list" in p["message"] for p in payload["problems"]) == 361


def test_synth_then_check(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    result = run("data", "synth", str(out), "--images", "10", "--seed", "1")
    assert result.exit_code == 0 and "wrote 10 images" in result.output
    assert run("data", "synth", str(out)).exit_code == 2  # not empty without --force
    check = run("data", "check", str(out), "--split", "train", "--json", "-")
    assert check.exit_code == 0 and json.loads(check.output)["num_images"] == 8


def test_priors_data_json(shared_data: Path) -> None:
    result = run("priors", "--data", str(shared_data / "raccoon"), "--format", "json")
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert payload["overall"]["num_boxes"] == 217 and payload["num_priors"] == 8732
    assert [g["name"] for g in payload["by_size"]] == ["small", "medium", "large"]
    table = run("priors", "--data", str(shared_data / "voc2007_sample"))
    assert table.exit_code == 0 and "share < 0.5" in table.output


def test_help_has_examples() -> None:
    for command in ("check", "synth"):
        result = run("data", command, "--help")
        assert result.exit_code == 0 and "Examples" in result.output
