"""`ssd eval --analysis DIR` through the CLI: saved detections on the shared datasets, a tiny
model, empty and degenerate inputs, and the folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from test_cli_eval import APP, runner, write_voc_folder

FIGURES = {"false_positives.png", "fp_types.png", "fp_trend_classes_1.png", "sensitivity.png",
           "sensitivity_summary.png", "confusion_matrix.png", "tide.png"}


def analyse_cli(*args: str):
    return runner.invoke(APP, ["eval", *args])


def check_folder(folder: Path, classes: list[str]) -> dict:
    """Every figure is a readable PNG, the CSV has the classes + background, the json parses."""
    names = {p.name for p in folder.iterdir()}
    assert FIGURES <= names, names
    for name in FIGURES:
        image = cv2.imread(str(folder / name))
        assert image is not None and image.shape[0] > 100 and image.std() > 0, name
    header = (folder / "confusion_matrix.csv").read_text().splitlines()[0].split(",")
    assert header[1:] == [*classes, "background"]
    def no_nan(constant: str):
        raise AssertionError(f"analysis.json holds {constant}, which is not json")

    return json.loads((folder / "analysis.json").read_text(), parse_constant=no_nan)


@pytest.mark.slow
def test_cartucho_sample_with_its_saved_detections(shared_data, tmp_path):
    from test_evaluation import cartucho_to_voc

    data, detections, names = cartucho_to_voc(shared_data / "cartucho_map_sample", tmp_path / "voc")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([d for d in detections if isinstance(d["category_id"], int)]))
    folder = tmp_path / "analysis"
    result = analyse_cli("--detections", str(dets), "--data", str(data), "--metric", "voc12", "--analysis", str(folder),
                         "--worst", "3")
    assert result.exit_code == 0, result.output
    assert "Top-ranked false positives" in result.stdout and "TIDE" in result.stdout
    payload = check_folder(folder, names)
    assert payload["num_images"] == 85 and payload["num_detections"] == 450
    everything = payload["false_positives"]["groups"][-1]
    assert everything["name"] == "all classes" and sum(everything["types"].values()) == 450
    assert 0 < payload["tide"]["ap50"] < 1 and len(payload["worst_images"]) == 3
    assert sorted(p.name[:3] for p in (folder / "worst").iterdir()) == ["01_", "02_", "03_"]
    # 30 classes: two pages of class trends
    assert (folder / "fp_trend_classes_2.png").is_file()


def perturbed(data, seed: int = 0) -> list[dict]:
    """Ground truth turned into imperfect detections: jittered boxes, some with another class,
    some dropped, plus a few boxes on nothing."""
    rng = np.random.default_rng(seed)
    ids = data.category_ids or list(range(1, data.num_classes + 1))
    detections = []
    for record in data.records:
        for box, label in zip(record.boxes_xyxy_px.astype(float), record.labels):
            if rng.random() < 0.15:
                continue  # missed
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
            x1, y1, x2, y2 = box + jitter
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            label = int(rng.integers(1, data.num_classes + 1)) if rng.random() < 0.1 else int(label)
            detections.append({"image_id": record.image_id, "category_id": ids[label - 1],
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(rng.uniform(0.2, 1))})
        x, y = rng.uniform(0, record.width / 2), rng.uniform(0, record.height / 2)
        detections.append({"image_id": record.image_id, "category_id": ids[int(rng.integers(0, len(ids)))],
                           "bbox": [x, y, record.width / 4, record.height / 4], "score": float(rng.uniform(0, 0.5))})
    return detections


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bccd", "coco128"])
def test_shared_datasets_with_perturbed_ground_truth(shared_data, tmp_path, name):
    from ssdcli.data.reader import load_dataset

    path = shared_data / "bccd" / "BCCD" if name == "bccd" else shared_data / "coco128" / "annotations" / "instances_val2017.json"
    data = load_dataset(path)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(perturbed(data)))
    folder = tmp_path / "analysis"
    similar = tmp_path / "similar.txt"
    similar.write_text("RBC, WBC\n" if name == "bccd" else "vehicles: car, truck, bus\n")
    result = analyse_cli("--detections", str(dets), "--data", str(path), "--metric", "voc07", "--analysis", str(folder),
                         "--similar", str(similar), "--conf-threshold", "0.5", "--worst", "2")
    assert result.exit_code == 0, result.output
    payload = check_folder(folder, data.classes)
    assert payload["settings"]["conf_threshold"] == 0.5
    groups = [g["name"] for g in payload["false_positives"]["groups"]]
    assert groups == ["similar set 1" if name == "bccd" else "vehicles", "all classes"]
    counts = np.array(payload["confusion_matrix"]["counts"])
    assert np.trace(counts[:-1, :-1]) > counts[:-1, :-1].sum() - np.trace(counts[:-1, :-1])  # mostly right
    assert payload["tide"]["dap"]["Miss"] > 0 and payload["tide"]["counts"]["Loc"] > 0


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained SSDLite320 at half width (scores ~1/5 everywhere: plenty of boxes)."""
    from ssdcli.checkpoint import save_checkpoint
    from ssdcli.models import build_model, model_settings

    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=2, width_mult=0.5)
    settings = model_settings(model)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "arch": settings["arch"], "num_classes": 2, "options": settings["options"],
        "class_names": ["apple", "pear"], "image_size": settings["image_size"], "mean": settings["mean"],
        "std": settings["std"], "priors": settings["prior_spec"],
    })
    return path


@pytest.mark.slow
def test_tiny_model(tiny_weights, tmp_path):
    data = write_voc_folder(tmp_path / "voc")
    folder = tmp_path / "analysis"
    result = analyse_cli("--weights", str(tiny_weights), "--data", str(data), "--device", "cpu", "--workers", "0",
                         "--metric", "voc07", "--analysis", str(folder), "--conf-threshold", "0.1")
    assert result.exit_code == 0, result.output
    payload = check_folder(folder, ["apple", "pear"])
    assert payload["num_detections"] > 0
    assert {p.suffix for p in (folder / "worst").iterdir()} == {".jpg"}


@pytest.mark.slow
def test_no_detections_still_draws_every_figure(tmp_path):
    data = write_voc_folder(tmp_path / "voc")
    (tmp_path / "none.json").write_text("[]")
    folder = tmp_path / "analysis"
    result = analyse_cli("--detections", str(tmp_path / "none.json"), "--data", str(data), "--metric", "voc12",
                         "--analysis", str(folder))
    assert result.exit_code == 0, result.output
    payload = check_folder(folder, ["apple", "pear"])
    assert payload["tide"]["counts"]["Miss"] == 2  # two apples; the pear is difficult
    assert [w["missed"] for w in payload["worst_images"]] == [1, 1]


def test_analysis_folder_rules_and_option_errors(tmp_path):
    data = write_voc_folder(tmp_path / "voc")
    (tmp_path / "none.json").write_text("[]")
    base = ["--detections", str(tmp_path / "none.json"), "--data", str(data), "--metric", "voc12"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("mine")
    result = analyse_cli(*base, "--analysis", str(busy))
    assert result.exit_code == 2 and "not empty" in result.stderr and (busy / "thesis.tex").read_text() == "mine"
    result = analyse_cli(*base, "--similar", str(tmp_path / "x.txt"))
    assert result.exit_code == 2 and "--analysis" in result.stderr
    result = analyse_cli(*base, "--analysis", str(tmp_path / "a"), "--conf-threshold", "1.5")
    assert result.exit_code == 2 and "--conf-threshold" in result.stderr
    (tmp_path / "similar.txt").write_text("apple, banana\n")
    result = analyse_cli(*base, "--analysis", str(tmp_path / "b"), "--similar", str(tmp_path / "similar.txt"))
    assert result.exit_code == 2 and "'banana' is not a class" in result.stderr and "Traceback" not in result.output
    (tmp_path / "file").write_text("")
    result = analyse_cli(*base, "--analysis", str(tmp_path / "file"))
    assert result.exit_code == 2 and "is a file" in result.stderr


@pytest.mark.slow
def test_an_earlier_analysis_folder_is_replaced(tmp_path):
    data = write_voc_folder(tmp_path / "voc")
    (tmp_path / "none.json").write_text("[]")
    base = ["--detections", str(tmp_path / "none.json"), "--data", str(data), "--metric", "voc12"]
    assert analyse_cli(*base, "--analysis", str(tmp_path / "c")).exit_code == 0
    (tmp_path / "c" / "fp_trend_classes_9.png").write_bytes(b"stale page of an earlier run")
    result = analyse_cli(*base, "--analysis", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "c" / "fp_trend_classes_9.png").exists()


@pytest.mark.slow
def test_markup_and_dollars_in_class_names(tmp_path):
    """Class names are user text: shown as written in the summary and the figures."""
    from ssdcli.data.records import DetectionDataset
    from ssdcli.evaluation.analysis_report import AnalysisSettings, run_analysis

    from test_analysis import det, record

    names = ["[/]", "$x$", "a$b"]
    data = DetectionDataset(format="voc", root=tmp_path, classes=names,
                            records=[record("i", [[0, 0, 40, 40], [50, 50, 90, 90]], [1, 2])])
    result = run_analysis(data, [det("i", 3, [0, 0, 40, 40], 0.9)], tmp_path / "out", AnalysisSettings(worst=0))
    assert result.confusion[0].tolist() == [0, 0, 1, 0]
    from rich.console import Console

    from ssdcli.cli.eval_analysis import summary_tables

    console = Console(record=True, width=200)
    for table in summary_tables(result):
        console.print(table)
    assert "[/] detected as a$b" in console.export_text()
