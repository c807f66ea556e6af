"""`ssd eval --detections`: tables, --json, --plot-dir, --save-detections and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ssdcli.cli.eval import EPILOG, HELP, eval_command

runner = CliRunner()


def make_app() -> typer.Typer:
    """The `eval` command in an app of its own, as cli/app.py registers it."""
    app = typer.Typer(rich_markup_mode="rich")

    @app.callback()
    def _root() -> None:
        """Test app."""

    app.command("eval", help=HELP, epilog=EPILOG)(eval_command)
    return app


APP = make_app()


def write_voc_folder(root: Path) -> Path:
    """Annotations/ + JPEGImages/ with two 100x80 images: a has an apple (1-based inclusive
    corners 1,1,40,40) and a difficult pear; b has an apple. Classes (not PASCAL names, so sorted): apple, pear."""
    objects = {
        "a": [("apple", 1, 1, 40, 40, 0), ("pear", 51, 11, 90, 70, 1)],
        "b": [("apple", 11, 11, 60, 60, 0)],
    }
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, boxes in objects.items():
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for n, x1, y1, x2, y2, d in boxes
        )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>100</width><height>80</height>"
            f"<depth>3</depth></size>{xml}</annotation>"
        )
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.full((80, 100, 3), 128, np.uint8))
    return root


def detections() -> list[dict]:
    # continuous 0-based: the apple in a is (0, 0, 40, 40) -> bbox [0, 0, 40, 40]
    return [
        {"image_id": "a", "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},  # TP
        {"image_id": "b", "category_id": 1, "bbox": [60, 50, 20, 20], "score": 0.8},  # FP
        {"image_id": "b", "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.7},  # TP
        {"image_id": "a", "category_id": 2, "bbox": [50, 10, 40, 60], "score": 0.6},  # difficult pear
    ]


@pytest.fixture()
def voc(tmp_path) -> tuple[Path, Path]:
    data = write_voc_folder(tmp_path / "voc")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(detections()))
    return data, dets


def test_table_and_json(voc, tmp_path):
    data, dets = voc
    out_json = tmp_path / "out" / "metrics.json"
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(data), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    # apple: TP, FP, TP of 2 gts: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    #   VOC12 = 0.5 * 1 + 0.5 * 2/3 = 83.33 %; VOC07 = (6 * 1 + 5 * 2/3) / 11 = 84.85 %
    # pear: only a difficult box -> no AP, not in the mean
    assert "apple" in result.stdout and "83.33" in result.stdout and "84.85" in result.stdout
    assert "VOC07 mAP" in result.stdout and "COCO AP50" in result.stdout
    payload = json.loads(out_json.read_text())
    # every box is COCO "medium" (32^2 <= area < 96^2): AP small / large are undefined, so absent
    assert set(payload) == {"voc07_map", "voc12_map", "coco_ap", "coco_ap50", "coco_ap75", "coco_apm",
                            "per_class", "num_images", "num_detections"}
    assert payload["voc12_map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert payload["voc07_map"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert payload["per_class"]["pear"] == {}
    assert (payload["num_images"], payload["num_detections"]) == (2, 4)


def test_single_metric_plots_and_saved_detections(voc, tmp_path):
    data, dets = voc
    out_json, plots, saved = tmp_path / "m.json", tmp_path / "plots", tmp_path / "saved.json"
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(data), "--metric", "voc12",
                                 "--json", str(out_json), "--plot-dir", str(plots), "--save-detections", str(saved)])
    assert result.exit_code == 0, result.output
    assert set(json.loads(out_json.read_text())) == {"voc12_map", "per_class", "num_images", "num_detections"}
    assert sorted(p.name for p in plots.iterdir()) == ["pr_01_apple.png", "pr_02_pear.png"]
    assert cv2.imread(str(plots / "pr_01_apple.png")).shape == (440, 560, 3)
    assert json.loads(saved.read_text()) == detections()
    assert "VOC07" not in result.stdout and "COCO" not in result.stdout


def test_coco_json_data(shared_data, tmp_path):
    json_path = shared_data / "coco128" / "annotations" / "instances_val2017.json"
    data = json.loads(json_path.read_text())
    # every non-crowd box as found -> COCO AP 1 on every class present
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in data["annotations"] if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    result = runner.invoke(APP, ["eval", "--detections", str(tmp_path / "dets.json"), "--data", str(json_path),
                                 "--metric", "coco", "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "m.json").read_text())
    assert payload["coco_ap"] == pytest.approx(1.0) and payload["num_detections"] == len(dets)
    assert payload["per_class"]["person"] == {"coco_ap": pytest.approx(1.0)}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ("[{", "not a json file"),
        ('[{"image_id": "a", "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1}]', "detection 0: category_id 7"),
        ('[{"image_id": "zz", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', "image_id 'zz'"),
    ],
)
def test_bad_detections_file_exits_2_with_one_line(voc, tmp_path, content, expected):
    data, _ = voc
    dets = tmp_path / "bad.json"
    if content is not None:
        dets.write_text(content)
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(data)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(dets) in lines[0] and expected in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_missing_data_and_bad_metric(voc, tmp_path):
    _, dets = voc
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.stderr
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(tmp_path), "--metric", "map"])
    assert result.exit_code == 2


def test_help_has_examples():
    result = runner.invoke(APP, ["eval", "--help"])
    assert result.exit_code == 0
    assert "--detections" in result.stdout and "ssd eval --detections dets.json" in result.stdout


def test_classes_file_sets_the_category_ids(voc, tmp_path):
    data, _ = voc
    (tmp_path / "classes.txt").write_text("pear\napple\n")  # apple is now class 2
    swapped = [{**d, "category_id": 3 - d["category_id"]} for d in detections()]
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    out_json = tmp_path / "m.json"
    result = runner.invoke(APP, ["eval", "--detections", str(tmp_path / "swapped.json"), "--data", str(data),
                                 "--classes", str(tmp_path / "classes.txt"), "--metric", "voc12", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert json.loads(out_json.read_text())["per_class"]["apple"]["voc12_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_plot_dir_needs_a_voc_metric(voc, tmp_path):
    data, dets = voc
    result = runner.invoke(APP, ["eval", "--detections", str(dets), "--data", str(data), "--metric", "coco",
                                 "--plot-dir", str(tmp_path / "plots")])
    assert result.exit_code == 2 and "--plot-dir" in result.stderr


def test_weights_are_loaded_by_load_detector_checkpoint_and_onnx(tmp_path):
    """--weights goes through inference.load_detector: a checkpoint is run with the evaluation
    post-processing and scored as --detections would score its output; a .onnx file is
    onnxruntime's (an empty one is refused in one line)."""
    import torch

    from ssdcli.checkpoint import save_checkpoint
    from ssdcli.data.reader import load_dataset
    from ssdcli.data.synth import make_synthetic_dataset
    from ssdcli.inference import predict_dataset
    from ssdcli.models import build_model, model_settings

    classes = ["circle", "square", "star", "triangle"]
    torch.manual_seed(0)
    model = build_model("ssdlite320", num_classes=len(classes), width_mult=0.5).eval()
    settings = model_settings(model)
    weights = tmp_path / "best.pt"
    save_checkpoint(weights, {
        "model": model.state_dict(), "arch": settings["arch"], "num_classes": len(classes),
        "options": settings["options"], "class_names": classes, "image_size": settings["image_size"],
        "mean": settings["mean"], "std": settings["std"], "priors": settings["prior_spec"],
    })
    data = tmp_path / "synth"
    make_synthetic_dataset(data, num_images=5, seed=4)
    expected = predict_dataset(model, load_dataset(data, split="val", classes=classes), torch.device("cpu"), workers=0)
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")  # the model's list, as --weights reads with

    metrics = {}
    for kind, flags in (("weights", ["--weights", str(weights), "--backend", "torch", "--device", "cpu", "--workers", "0"]),
                        ("detections", ["--detections", str(tmp_path / "expected.json"),
                                        "--classes", str(tmp_path / "classes.txt")])):
        target = tmp_path / f"{kind}.json"
        result = runner.invoke(APP, ["eval", *flags, "--data", str(data), "--split", "val", "--json", str(target)])
        assert result.exit_code == 0, result.output
        metrics[kind] = json.loads(target.read_text())
    assert metrics["weights"] == metrics["detections"] and metrics["weights"]["num_detections"] == len(expected) > 0

    (tmp_path / "model.onnx").write_bytes(b"")
    result = runner.invoke(APP, ["eval", "--weights", str(tmp_path / "model.onnx"), "--data", str(data)])
    assert result.exit_code == 2 and "not an ONNX model onnxruntime can load" in result.stderr
    assert len(result.stderr.splitlines()) == 1
