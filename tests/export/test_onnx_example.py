"""examples/onnx_inference.py: onnxruntime, numpy and OpenCV only, on an ssdcli ONNX export."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import torch
from export_testing import CLASSES

from ssdcli.data.transforms import to_model_input

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "onnx_inference.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("onnx_inference", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_runs_on_a_real_image(lite_onnx, shared_data, tmp_path):
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg"
    drawn = tmp_path / "drawn.jpg"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(lite_onnx), str(image), "--output", str(drawn), "--min-score", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(d["label"] in CLASSES and d["score"] > 0.2 for d in lines)
    original = cv2.imread(str(image))
    assert cv2.imread(str(drawn)).shape == original.shape

    # Its OpenCV pre-processing follows the metadata as ssdcli's own does (to 1-2 grey levels of
    # rounding between cv2 and torchvision bilinear resizing: 2 / 255 / 0.225 ~ 0.035).
    example = _load_example()
    import onnxruntime as ort

    meta = example.read_metadata(ort.InferenceSession(str(lite_onnx), providers=["CPUExecutionProvider"]))
    theirs = torch.from_numpy(example.preprocess(original, meta))
    ours = to_model_input([cv2.cvtColor(original, cv2.COLOR_BGR2RGB)], 320, meta["mean"], meta["std"])
    assert theirs.shape == ours.shape == (1, 3, 320, 320)
    assert (theirs - ours).abs().max() < 0.05
