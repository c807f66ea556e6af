"""`ssd detect` through Typer: flags, messages, tables; real images, folders, globs and a video (the
library pipeline itself is tested on synthetic data in test_detect.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from ssdcli.checkpoint import save_checkpoint
from ssdcli.cli.detect import EPILOG, HELP, detect
from ssdcli.data.reader import load_dataset
from ssdcli.data.synth import make_synthetic_dataset
from ssdcli.inference import predict_dataset
from ssdcli.models import build_model, model_settings
from ssdcli.postprocess import PostprocessSettings

runner = CliRunner()
CLASSES = ["circle", "square", "star", "triangle"]
VOC_IMAGES = ("000001.jpg", "000004.jpg", "000005.jpg")
GREY_RACCOONS = ("raccoon-150.jpg", "raccoon-152.jpg")  # single-channel (L) JPEGs, see SOURCES.md


def make_app() -> typer.Typer:
    """The `detect` command in an app of its own, as cli/app.py registers it."""
    app = typer.Typer(rich_markup_mode="rich")

    @app.callback()
    def _root() -> None:
        """Test app."""

    app.command("detect", help=HELP, epilog=EPILOG)(detect)
    return app


APP = make_app()


def run(*args: str):
    return runner.invoke(APP, ["detect", *args])


@pytest.fixture(scope="module")
def model():
    """An untrained SSDLite320 at half width (fast on a CPU); its scores are ~1/5 everywhere, so a
    low --min-score yields plenty of boxes."""
    torch.manual_seed(0)
    return build_model("ssdlite320", num_classes=len(CLASSES), width_mult=0.5)


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


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (160, 120), fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for k in range(frames):
        frame = np.full((size[1], size[0], 3), 30 * k, np.uint8)
        frame[30:90, 20 + 15 * k : 80 + 15 * k] = (0, 200, 255)
        writer.write(frame)
    writer.release()


def boxes_inside(entry: dict) -> bool:
    return all(
        0 <= x1 <= x2 <= entry["width"] and 0 <= y1 <= y2 <= entry["height"]
        for x1, y1, x2, y2 in (d["box"] for d in entry["detections"])
    )


def test_detect_gives_eval_inference_detections_on_real_images(shared_data, model, weights, tmp_path):
    voc = shared_data / "voc2007_sample" / "VOC2007"
    # eval's inference on 5 of the images, with the settings ssd detect is given below
    settings = PostprocessSettings(score_threshold=0.05, nms_iou=0.45, top_k_candidates=400, max_detections=20)
    dataset = dataclasses.replace(load_dataset(voc), records=load_dataset(voc).records[:5])
    expected = predict_dataset(model, dataset, torch.device("cpu"), settings, batch_size=4, workers=0)
    assert len(expected) > 50  # an untrained model: many low-score boxes to compare

    files = [str(record.image_path) for record in dataset.records]
    out_json, coco_json = tmp_path / "dets.json", tmp_path / "coco.json"
    result = run(*files, "--weights", str(weights), "--backend", "torch", "--min-score", "0.05", "--top-k", "20",
                 "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--json", str(out_json), "--coco-json", str(coco_json))
    assert result.exit_code == 0, result.output
    assert "5 images" in result.stdout and "forward" in result.stdout and "post-process" in result.stdout

    key = lambda d: (d["image_id"], d["category_id"], -d["score"], d["bbox"])
    got = sorted(json.loads(coco_json.read_text()), key=key)
    assert got == sorted(expected, key=key)

    entries = json.loads(out_json.read_text())
    assert [e["file"] for e in entries] == files
    for entry in entries:
        assert (entry["width"], entry["height"]) == Image.open(entry["file"]).size
        assert boxes_inside(entry) and len(entry["detections"]) <= 20
        assert all(d["label"] == CLASSES[d["class_id"] - 1] and d["score"] > 0.05 for d in entry["detections"])
        # the --json boxes are the COCO ones in xyxy: x2 - x1 = w, same order (score-descending)
        coco = [d for d in json.loads(coco_json.read_text()) if d["image_id"] == Path(entry["file"]).stem]
        assert [d["box"][2] - d["box"][0] for d in entry["detections"]] == pytest.approx(
            [d["bbox"][2] for d in coco], abs=0.02)
        assert [d["score"] for d in entry["detections"]] == pytest.approx([d["score"] for d in coco], abs=1e-5)


def test_glob_greyscale_images_and_a_video_are_rendered(shared_data, weights, tmp_path):
    raccoons = shared_data / "raccoon" / "images"
    photos = tmp_path / "in"
    (photos / "grey").mkdir(parents=True)
    for name in GREY_RACCOONS:
        shutil.copy(raccoons / name, photos / "grey" / name)
    write_video(photos / "clip.mp4")
    rendered, out_json = tmp_path / "rendered", tmp_path / "dets.json"
    result = run(str(photos / "**" / "raccoon-15*.jpg"), str(photos / "clip.mp4"), "--weights", str(weights),
                 "--min-score", "0.01", "--top-k", "10", "--workers", "1", "--batch-size", "2",
                 "--output", str(rendered), "--json", str(out_json))
    assert result.exit_code == 0, result.output
    assert "2 images, 5 video frames" in result.stdout

    for name in GREY_RACCOONS:  # the path below the glob's fixed part is kept
        original = cv2.imread(str(photos / "grey" / name))
        drawn = cv2.imread(str(rendered / "grey" / name))
        assert drawn is not None and drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original.astype(int)).sum() > 0
    capture = cv2.VideoCapture(str(rendered / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (160, 120)
    ok, frame = capture.read()
    capture.release()
    source = cv2.VideoCapture(str(photos / "clip.mp4"))
    _, source_frame = source.read()
    source.release()
    assert ok and np.abs(frame.astype(int) - source_frame.astype(int)).mean() > 1  # boxes were drawn

    entries = json.loads(out_json.read_text())
    frames = [e for e in entries if "frame" in e]
    assert [e["frame"] for e in frames] == [0, 1, 2, 3, 4]
    assert all(e["file"] == str(photos / "clip.mp4") and (e["width"], e["height"]) == (160, 120) for e in frames)
    assert all(boxes_inside(e) and e["detections"] for e in entries)


def test_classes_filter_unknown_class_and_one_missing_source_among_others(shared_data, weights, tmp_path):
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000004.jpg"
    out_json = tmp_path / "d.json"
    result = run(str(tmp_path / "gone.jpg"), str(image), "--weights", str(weights), "--min-score", "0.01",
                 "--classes", "star, circle", "--workers", "0", "--json", str(out_json))
    assert result.exit_code == 0, result.output
    assert "gone.jpg: no such file or folder" in result.stderr and "detections: 1 image, 0 video frames" in result.stdout
    detections = json.loads(out_json.read_text())[0]["detections"]
    assert detections and {d["label"] for d in detections} <= {"star", "circle"}
    result = run(str(image), "--weights", str(weights), "--classes", "circle,dog")
    assert result.exit_code == 2
    assert "dog" in result.stderr and "circle, square, star, triangle" in result.stderr


def test_a_corrupt_image_and_an_unsupported_file_in_a_folder(shared_data, weights, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in VOC_IMAGES[:2]:
        shutil.copy(shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / name, folder / name)
    good = (folder / VOC_IMAGES[0]).read_bytes()
    (folder / "broken.jpg").write_bytes(good[:100])  # cut inside its header (cut later, it decodes as in OpenCV)
    (folder / "notes.txt").write_text("skipped silently")
    out_json = tmp_path / "d.json"
    result = run(str(folder), "--weights", str(weights), "--workers", "0", "--json", str(out_json))
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stderr and "notes.txt" not in result.stderr
    assert sorted(Path(e["file"]).name for e in json.loads(out_json.read_text())) == sorted(VOC_IMAGES[:2])
    assert "2 images" in result.stdout and "1 unreadable" in result.stdout

    # named explicitly, an unsupported file is a warning; when nothing else is left, exit 2
    result = run(str(folder / "notes.txt"), str(folder / VOC_IMAGES[0]), "--weights", str(weights), "--workers", "0")
    assert result.exit_code == 0 and "notes.txt: not an image or video file" in result.stderr
    result = run(str(folder / "broken.jpg"), "--weights", str(weights), "--workers", "0")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "error: the only image or video could not be read (see the warning above)"


def test_missing_sources(weights, tmp_path):
    result = run(str(tmp_path / "nope.jpg"), "--weights", str(weights))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.jpg'}: no such file or folder"
    result = run(str(tmp_path / "*.png"), "--weights", str(weights))
    assert result.exit_code == 2 and "matches no image or video files" in result.stderr
    assert "Traceback" not in result.output
    result = run()
    assert result.exit_code == 2 and "SOURCE" in result.stderr


def test_output_never_overwrites_inputs(shared_data, weights, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg", folder)
    before = (folder / "000001.jpg").read_bytes()
    result = run(str(folder), "--weights", str(weights), "--output", str(folder))
    assert result.exit_code == 2 and "would overwrite the input" in result.stderr
    assert (folder / "000001.jpg").read_bytes() == before


def test_without_weights_the_run_checkpoint_is_used_and_named(shared_data, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg"
    result = run(str(image))
    assert result.exit_code == 2 and "no best.pt or last.pt under runs/" in result.stderr
    assert "--weights" in result.stderr
    # nested as `make demo` writes it: runs/demo/train/best.pt
    (tmp_path / "runs" / "demo" / "train").mkdir(parents=True)
    shutil.copy(weights, tmp_path / "runs" / "demo" / "train" / "last.pt")
    result = run(str(image), "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "using runs/demo/train/last.pt (no best.pt under runs/; the newest last.pt" in result.stderr
    shutil.copy(weights, tmp_path / "runs" / "demo" / "train" / "best.pt")
    result = run(str(image), "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "using runs/demo/train/best.pt (the newest best.pt under runs/" in result.stderr


def test_webcam_show_and_onnx_errors_are_one_clear_line(shared_data, weights, tmp_path, monkeypatch):
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg"
    result = run("--webcam", "97", "--weights", str(weights), "--workers", "0")
    assert result.exit_code == 2 and "--webcam 97: cannot open camera 97" in result.stderr
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        result = run(str(image), "--weights", str(weights), "--show")
        assert result.exit_code == 2 and "--show needs a display" in result.stderr
    (tmp_path / "model.onnx").write_bytes(b"")
    result = run(str(image), "--weights", str(tmp_path / "model.onnx"))
    assert result.exit_code == 2 and "not an ONNX model onnxruntime can load" in result.stderr


@pytest.fixture(scope="module")
def synth_images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic_dataset(root, num_images=3, seed=7)
    return sorted((root / "JPEGImages").glob("*.jpg"))


def test_synthetic_images_summary_tables_and_written_files(synth_images, weights, tmp_path):
    out_json, coco_json, rendered = tmp_path / "d.json", tmp_path / "c.json", tmp_path / "rendered"
    result = run(*map(str, synth_images), "--weights", str(weights), "--min-score", "0.01", "--top-k", "5",
                 "--workers", "0", "--json", str(out_json), "--coco-json", str(coco_json), "--output", str(rendered))
    assert result.exit_code == 0, result.output
    entries, coco = json.loads(out_json.read_text()), json.loads(coco_json.read_text())
    assert len(entries) == 3 and all(len(e["detections"]) == 5 for e in entries)  # ~0.2 scores: always 5
    assert "detections: 3 images, 0 video frames" in result.stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines()]
    expected_rows = []  # one row per class found, in label order: name, detections, images with it
    for label, name in enumerate(CLASSES, start=1):
        count = sum(d["category_id"] == label for d in coco)
        images = sum(any(d["label"] == name for d in e["detections"]) for e in entries)
        if count:
            expected_rows.append([name, str(count), str(images)])
    assert [row for row in rows if row and row[0] in CLASSES] == expected_rows and expected_rows
    assert ["all", "15", ""] in rows
    assert f"wrote {out_json} (3 entries)" in result.stderr
    assert f"wrote {coco_json} ({len(coco)} entries)" in result.stderr and len(coco) == 15
    assert f"rendered images and videos are in {rendered}" in result.stderr
    assert sorted(p.name for p in rendered.iterdir()) == [p.name for p in synth_images]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-score", "1.5"], "--min-score 1.5: must be in [0, 1)"),
        (["--nms-iou", "0"], "--nms-iou 0.0: must be in (0, 1]"),
        (["--top-k", "0"], "--top-k 0: must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1 and --workers >= 0"),
        (["--workers", "-1"], "--batch-size must be >= 1 and --workers >= 0"),
        (["--classes", "circle,dog"], "--classes: dog not among the model's classes: circle, square, star, triangle"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(synth_images, weights, flags, message):
    result = run(str(synth_images[0]), "--weights", str(weights), "--workers", "0", *flags)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"


def test_paths_with_rich_markup_are_printed_as_they_are(synth_images, weights, tmp_path):
    odd = tmp_path / "odd[/]name [bold]"  # folders "odd[" and "]name [bold]"
    odd.mkdir(parents=True)
    shutil.copy(synth_images[0], odd / "a.jpg")
    gone = tmp_path / "gone[/].jpg"
    out_json = tmp_path / "x[/]" / "d.json"
    result = run(str(odd), str(gone), "--weights", str(weights), "--workers", "0", "--json", str(out_json))
    assert result.exit_code == 0, result.output
    # "gone[/].jpg" holds "[", so it is taken for a glob pattern that matches nothing
    assert f"warning: {gone}: the pattern matches no image or video files" in result.stderr
    assert f"wrote {out_json} (1 entry)" in result.stderr
    assert json.loads(out_json.read_text())[0]["file"] == str(odd / "a.jpg")
    result = run(str(gone), "--weights", str(weights))
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {gone}: the pattern matches no image or video files"


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX symlinks")
def test_symlink_loops_in_a_folder_or_glob_are_warnings_not_a_hang(synth_images, weights, tmp_path):
    root = tmp_path / "looped"
    (root / "sub").mkdir(parents=True)
    shutil.copy(synth_images[0], root / "a.jpg")
    shutil.copy(synth_images[1], root / "sub" / "b.jpg")
    (root / "sub" / "here").symlink_to(".")  # two folder loops: 2**40 paths for os.walk(followlinks=True)
    (root / "sub" / "up").symlink_to("..")
    (root / "x.jpg").symlink_to("y.jpg")  # a file loop: Path.resolve raised RuntimeError
    (root / "y.jpg").symlink_to("x.jpg")
    for source in (str(root), f"{root}/**/*.jpg"):
        result = run(source, "--weights", str(weights), "--workers", "0", "--json", str(tmp_path / "d.json"))
        assert result.exit_code == 0, result.output
        assert f"warning: {root}/sub/here: a symlink loop (it leads back to {root}/sub); not searched" in result.stderr
        assert f"warning: {root}/x.jpg: a symlink loop; skipped" in result.stderr
        assert "detections: 2 images" in result.stdout
        assert sorted(e["file"] for e in json.loads((tmp_path / "d.json").read_text())) == [
            str(root / "a.jpg"), str(root / "sub" / "b.jpg")]
    result = run(str(root / "x.jpg"), "--weights", str(weights))
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {root}/x.jpg: a symlink loop"


def test_help_shows_examples_and_the_json_format():
    result = run("--help")
    assert result.exit_code == 0
    assert "ssd detect photos/ --output rendered/ --json dets.json" in result.stdout
    assert '"detections"' in result.stdout and "--coco-json" in result.stdout


def test_nothing_above_min_score_gives_one_warning_with_the_best_score(shared_data, weights):
    image = shared_data / "voc2007_sample" / "VOC2007" / "JPEGImages" / "000001.jpg"
    result = run(str(image), "--weights", str(weights), "--workers", "0", "--min-score", "0.9")
    assert result.exit_code == 0, result.output
    # the untrained model scores ~1/5 everywhere: 0.9 leaves nothing, the hint says what would show it
    lines = [line for line in result.stderr.splitlines() if "no detection scored above 0.9" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: no detection scored above 0.9 on 1 image; the best score was 0.")
    assert "try --min-score 0." in lines[0]
