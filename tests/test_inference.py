"""ssdcli.inference: weights -> Detector (load_detector), the default weights, dataset
detections and the json forms of one image's detections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssdcli.checkpoint import save_checkpoint
from ssdcli.data.reader import load_dataset
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.errors import CheckpointError, UserError
from ssdcli.inference import (
    TorchDetector,
    class_labels,
    detect_dataset,
    detection_entries,
    load_detector,
    predict_dataset,
)
from ssdcli.models import build_model, model_settings
from ssdcli.runs import find_default_weights
from ssdcli.postprocess import Detections, PostprocessSettings

CLASSES = ["circle", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("ssdlite320", num_classes=len(CLASSES), width_mult=0.5).eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory) -> Path:
    settings = model_settings(model)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "arch": settings["arch"], "num_classes": len(CLASSES),
        "options": settings["options"], "class_names": CLASSES, "image_size": settings["image_size"],
        "mean": settings["mean"], "std": settings["std"], "priors": settings["prior_spec"],
    })
    return path


def test_load_detector_runs_the_checkpoints_model_with_the_given_settings(model, weights):
    settings = PostprocessSettings(score_threshold=0.1, max_detections=7)
    detector = load_detector(weights, "cpu", settings)
    assert isinstance(detector, TorchDetector)
    assert detector.class_names == CLASSES and detector.settings == settings
    assert detector.device == torch.device("cpu") and detector.amp is False  # autocast only on CUDA
    assert (detector.image_size, detector.mean, detector.std) == (320, list(model.mean), list(model.std))
    loaded = detector.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    images = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    expected = TorchDetector(model, torch.device("cpu"), settings).predict(images, [(500, 375), (320, 320)])
    got = detector.predict(images, [(500, 375), (320, 320)])
    assert [len(d.scores) for d in got] == [7, 7]  # untrained: scores ~0.2 > 0.1 everywhere
    for e, g in zip(expected, got):
        assert torch.equal(e.boxes_xyxy, g.boxes_xyxy) and torch.equal(e.scores, g.scores)


def test_load_detector_errors_name_the_file_or_flag(weights, tmp_path):
    with pytest.raises(UserError, match=r"gone\.pt: checkpoint not found"):
        load_detector(tmp_path / "gone.pt", "cpu")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pt: not an ssdcli checkpoint"):
        load_detector(tmp_path / "notes.pt", "cpu")
    (tmp_path / "model.ONNX").write_bytes(b"")  # by suffix, any case: onnxruntime's branch
    with pytest.raises(UserError, match=r"model\.ONNX: not an ONNX model onnxruntime can load"):
        load_detector(tmp_path / "model.ONNX", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"--device cuda: no CUDA device is available here"):
            load_detector(weights, "cuda")


def test_newest_best_pt_is_found_else_last_pt(tmp_path):
    assert find_default_weights(tmp_path) is None
    for run_name, file_name, mtime in (("a", "best.pt", 1000), ("b", "best.pt", 2000), ("c", "last.pt", 3000),
                                       ("b", "last.pt", 4000)):
        target = tmp_path / "runs" / run_name / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        os.utime(target, (mtime, mtime))
    # any best.pt wins over a newer last.pt; of the best.pt files the newest
    assert find_default_weights(tmp_path) == tmp_path / "runs" / "b" / "best.pt"
    for best in tmp_path.glob("runs/*/best.pt"):
        best.unlink()
    assert find_default_weights(tmp_path) == tmp_path / "runs" / "b" / "last.pt"


def test_default_weights_are_searched_recursively_newest_best_first(tmp_path):
    def put(relative: str, mtime: int) -> Path:
        target = tmp_path / "runs" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        os.utime(target, (mtime, mtime))
        return target

    # `make demo` nests its run: runs/demo/train/best.pt
    demo = put("demo/train/best.pt", 1000)
    assert find_default_weights(tmp_path) == demo
    put("old/last.pt", 5000)  # a newer last.pt never beats a best.pt
    put("train/best.pt", 900)
    newest = put("a/b/c/best.pt", 2000)
    assert find_default_weights(tmp_path) == newest
    # hidden temp files of a checkpoint being written, and hidden folders, are not candidates
    put("demo/train/.best.pt.123.abcd.tmp", 9000)
    put(".trash/best.pt", 9000)
    (tmp_path / "runs" / "x" / "best.pt").mkdir(parents=True)  # a folder named best.pt is not a file
    assert find_default_weights(tmp_path) == newest
    for path in (tmp_path / "runs").rglob("best.pt"):
        if path.is_file():
            path.unlink()
    assert find_default_weights(tmp_path) == tmp_path / "runs" / "old" / "last.pt"


def test_detect_dataset_with_a_loaded_detector_equals_predict_dataset_with_the_model(model, weights, tmp_path):
    make_synthetic_dataset(tmp_path / "synth", num_images=5, seed=2)
    dataset = load_dataset(tmp_path / "synth", classes=CLASSES)
    expected = predict_dataset(model, dataset, torch.device("cpu"), batch_size=2, workers=0)
    calls = []
    got = detect_dataset(load_detector(weights, "cpu"), dataset, batch_size=2, workers=0,
                         progress=lambda done, total: calls.append((done, total)))
    assert got == expected and len(got) > 0
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert {d["image_id"] for d in got} == {r.image_id for r in dataset.records}


def test_json_entries_and_class_labels_by_hand():
    detections = Detections(
        boxes_xyxy=torch.tensor([[0.0, 1.234567, 10.0, 20.005], [3.0, 4.0, 5.0, 6.0]]),
        scores=torch.tensor([0.9876543, 0.5]),
        labels=torch.tensor([2, 4]),
    )
    # score to 5 decimals, box to 2 (0.01 px); class_id 1-based
    assert detection_entries(detections, CLASSES) == [
        {"class_id": 2, "label": "square", "score": 0.98765, "box": [0.0, 1.23, 10.0, 20.0]},
        {"class_id": 4, "label": "triangle", "score": 0.5, "box": [3.0, 4.0, 5.0, 6.0]},
    ]
    assert detection_entries(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
                             CLASSES) == []
    assert class_labels(["star", " circle", ""], CLASSES).tolist() == [3, 1]
    with pytest.raises(UserError, match=r"^--classes: dog, cat not among the model's classes: circle, square"):
        class_labels(["dog", "square", "cat"], CLASSES)
