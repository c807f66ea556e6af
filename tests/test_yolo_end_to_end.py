"""`ssd train`, `ssd eval`, `ssd detect --coco-json` + `ssd eval --detections` on a tiny YOLO
dataset (synthetic shapes converted and split by `ssd data`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssdcli.cli.app import app

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_train_eval_detect_on_yolo(tmp_path: Path) -> None:
    invoke("data", "synth", str(tmp_path / "shapes"), "--images", "8", "--seed", "1")
    yolo = tmp_path / "yolo"
    invoke("data", "convert", str(tmp_path / "shapes"), str(yolo), "--to", "yolo")
    invoke("data", "split", str(yolo), "--val", "0.25", "--seed", "0")
    val_images = [line.removeprefix("./") for line in (yolo / "val.txt").read_text().split()]
    assert len(val_images) >= 2

    run = tmp_path / "run"
    invoke("train", "--data", str(yolo), "--split", "train", "--val-data", str(yolo), "--val-split", "val",
           "--epochs", "1", "--arch", "ssdlite320", "--batch-size", "2", "--workers", "0", "--device", "cpu",
           "--limit-batches", "2", "--eval-every", "1", "--output", str(run))
    assert (run / "best.pt").is_file()
    classes = json.loads(runner.invoke(app, ["data", "check", str(yolo), "--json", "-", "--no-decode"]).stdout)["classes"]

    metrics = tmp_path / "metrics.json"
    invoke("eval", "--weights", str(run / "best.pt"), "--data", str(yolo), "--split", "val", "--json", str(metrics))
    scored = json.loads(metrics.read_text())
    assert scored["num_images"] == len(val_images) and set(scored["per_class"]) == set(classes)

    coco_json = tmp_path / "dets.json"
    invoke("detect", *(str(yolo / name) for name in val_images), "--weights", str(run / "best.pt"),
           "--min-score", "0.01", "--coco-json", str(coco_json), "--device", "cpu")
    detections = json.loads(coco_json.read_text())
    assert detections  # an untrained model still scores many boxes above 0.01
    # YOLO data: image_id is the file stem, category_id the 1-based class index (as for VOC)
    assert {d["image_id"] for d in detections} <= {Path(name).stem for name in val_images}
    assert all(1 <= d["category_id"] <= len(classes) for d in detections)
    saved = tmp_path / "saved.json"
    invoke("eval", "--detections", str(coco_json), "--data", str(yolo), "--split", "val", "--json", str(saved))
    assert json.loads(saved.read_text())["num_detections"] == len(detections)
