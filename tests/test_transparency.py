"""Transparent pixels are composited on white, the same way for training and for detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssdcli.data.images import read_image_rgb
from ssdcli.data.loader import DetectionTrainDataset
from ssdcli.data.reader import load_dataset
from ssdcli.data.transforms import EvalTransform
from ssdcli.image_files import ImageFiles

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def rgba_png(path: Path) -> Path:
    """64x48: left half opaque red, right half fully transparent over stored black, and a
    half-transparent blue column (alpha 128) at x = 30..33."""
    pixels = np.zeros((48, 64, 4), np.uint8)
    pixels[:, :32] = (255, 0, 0, 255)
    pixels[:, 30:34] = (0, 0, 255, 128)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_rgba_la_and_palette_transparency_become_white(tmp_path):
    pixels = read_image_rgb(rgba_png(tmp_path / "a.png"))
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert (pixels[:, :30] == (255, 0, 0)).all()
    assert (pixels[:, 34:] == 255).all()  # transparent: white, not the stored black
    # alpha 128/255: red = green = round(255 * 127/255) = 127, blue = 255 * (128 + 127) / 255 = 255
    assert (pixels[:, 30:34] == (127, 127, 255)).all()

    grey = np.zeros((4, 4, 2), np.uint8)
    grey[:2] = (10, 255)  # opaque dark grey rows, transparent black rows below
    Image.fromarray(grey, "LA").save(tmp_path / "la.png")
    la = read_image_rgb(tmp_path / "la.png")
    assert (la[:2] == 10).all() and (la[2:] == 255).all()

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    assert read_image_rgb(tmp_path / "p.png").tolist() == [[[255, 255, 255], [0, 200, 0]], [[0, 200, 0], [255, 255, 255]]]

    opaque = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(opaque).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image_rgb(tmp_path / "rgb.png"), opaque)  # no alpha: unchanged


def _unnormalise(tensor: torch.Tensor) -> torch.Tensor:
    return tensor * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]  # (3, S, S) in [0, 1]


def test_training_and_detection_see_the_same_white_background(tmp_path):
    rgba_png(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>64</width><height>48</height><depth>4</depth></size>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>"
    )
    dataset = load_dataset(tmp_path)
    train_image, _ = DetectionTrainDataset(dataset.records, EvalTransform(32, MEAN, STD))[0]  # (3, 32, 32)
    detect_image, size, _, error, _, original = ImageFiles([tmp_path / "a.png"], 32, MEAN, STD, keep_original=True)[0]
    assert error is None and size == (64, 48)
    assert torch.equal(train_image, detect_image)  # one reader, one pre-processing
    assert torch.allclose(_unnormalise(train_image)[:, :, 20:], torch.ones(3, 32, 12), atol=1e-5)  # white
    assert torch.allclose(_unnormalise(train_image)[:, :, :12], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 32, 12), atol=1e-5)
    assert (original[:, 34:] == 255).all()  # what ssd detect draws on


def test_the_onnx_example_reads_transparency_the_same_way(tmp_path):
    import importlib.util

    import pytest

    pytest.importorskip("onnxruntime")
    path = Path(__file__).resolve().parents[1] / "examples" / "onnx_inference.py"
    spec = importlib.util.spec_from_file_location("onnx_inference_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    png = rgba_png(tmp_path / "a.png")
    assert np.array_equal(example.read_image(str(png)), read_image_rgb(png)[:, :, ::-1])  # BGR
    assert example.read_image(str(tmp_path / "missing.png")) is None
